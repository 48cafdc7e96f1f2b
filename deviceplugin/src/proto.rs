//! Generated gRPC bindings of the kubelet APIs this crate speaks (see `proto/`).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer of one call. A ListAndWatch message (one device) is under 64
/// bytes, an Allocate answer a few hundred; tonic's default (8 KiB per call, one long-lived
/// ListAndWatch call per resource) would cost two pages of memory per resource, 1 KiB still
/// 2 MB over 2,000 resources. Buffers grow for larger messages.
const CALL_BUFFER: usize = 128;
/// Streamed bytes after which an encoder yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The protobuf codec of every generated client and server: prost with small buffers.
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(CALL_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(CALL_BUFFER, YIELD_THRESHOLD))
    }
}

/// Device plugin API v1beta1: `Registration` (served by the kubelet) and `DevicePlugin`
/// (served by every plugin endpoint).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// Pod-resources API v1 (the `List` call), served by the kubelet.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod podresources {
    tonic::include_proto!("v1");
}

/// API version string sent in `RegisterRequest.version`.
pub const DEVICE_PLUGIN_API_VERSION: &str = "v1beta1";
/// `Device.health` of a device the kubelet may allocate.
pub const HEALTHY: &str = "Healthy";
/// `Device.health` of a device the kubelet must not allocate.
pub const UNHEALTHY: &str = "Unhealthy";
/// File name of the kubelet's registration socket inside the device-plugins directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
