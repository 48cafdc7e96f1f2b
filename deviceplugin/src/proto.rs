//! Generated gRPC bindings of the kubelet APIs this crate speaks (see `proto/`).

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
