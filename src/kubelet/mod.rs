//! Talking to the kubelet: the device-plugin gRPC service and its servers ([`plugin`]), the
//! registrar ([`registrar`]), the watcher of the device-plugins dir ([`watcher`]), the
//! podresources client ([`podresources`]), and the protos they speak ([`proto`]).

pub mod plugin;
pub mod podresources;
pub mod proto;
pub mod registrar;
pub mod watcher;
