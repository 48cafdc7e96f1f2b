//! gRPC over unix-domain sockets: binding a plugin socket and dialling the kubelet's.

use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// A socket could not be bound or dialled.
#[derive(Debug, thiserror::Error)]
pub enum UdsError {
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on unix socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot dial unix socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// Listens on `path`, replacing a stale socket file left by an earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, UdsError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(UdsError::RemoveStale {
                path: path.to_owned(),
                source,
            });
        }
    }
    UnixListener::bind(path).map_err(|source| UdsError::Bind {
        path: path.to_owned(),
        source,
    })
}

fn endpoint() -> Endpoint {
    // The URI is required by tonic but never resolved: the connector below dials the socket.
    Endpoint::from_static("http://localhost")
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<TokioIo<UnixStream>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    })
}

/// Dials the gRPC server on `path` and waits for the connection.
pub async fn connect(path: &Path) -> Result<Channel, UdsError> {
    endpoint()
        .connect_with_connector(connector(path.to_owned()))
        .await
        .map_err(|source| UdsError::Connect {
            path: path.to_owned(),
            source,
        })
}

/// A channel to `path` that connects on first use and reconnects after failures (the kubelet
/// restarts under us).
pub fn connect_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.to_owned()))
}
