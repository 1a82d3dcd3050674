//! The kubelet's DRA plugin API (v1 and v1beta1: the same messages under two service paths) and
//! its plugin registration API, with gRPC glue written once, as for the device-plugin API.

use grpcio::{
    CallOption, Channel, Client, Method, MethodType, RpcContext, Service, ServiceBuilder, UnarySink,
};

pub use crate::kubelet::proto::dra::*;
use crate::kubelet::proto::method;
pub use crate::kubelet::proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};

/// `PluginInfo.type` of a DRA driver.
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The versions spookd serves, as `PluginInfo.supported_versions` names them.
pub const V1: &str = "v1.DRAPlugin";
pub const V1BETA1: &str = "v1beta1.DRAPlugin";
/// The device-health service on the same socket (KEP-4680): the kubelet opens its stream only
/// where the registration lists it.
pub const HEALTH_V1ALPHA1: &str = "v1alpha1.DRAResourceHealth";

pub use crate::kubelet::proto::drahealth::{
    DeviceHealth, DeviceIdentifier, HealthStatus, NodeWatchResourcesRequest,
    NodeWatchResourcesResponse,
};

pub const WATCH_RESOURCES: Method<NodeWatchResourcesRequest, NodeWatchResourcesResponse> = method(
    MethodType::ServerStreaming,
    "/v1alpha1.DRAResourceHealth/NodeWatchResources",
);

/// The plugin side of the device-health service.
pub trait DraHealth {
    fn watch_resources(
        &mut self,
        ctx: RpcContext<'_>,
        req: NodeWatchResourcesRequest,
        sink: grpcio::ServerStreamingSink<NodeWatchResourcesResponse>,
    );
}

pub fn create_dra_health<S: DraHealth + Send + Clone + 'static>(mut s: S) -> Service {
    ServiceBuilder::new()
        .add_server_streaming_handler(&WATCH_RESOURCES, move |ctx, req, sink| {
            s.watch_resources(ctx, req, sink)
        })
        .build()
}

/// Watches a DRA plugin's device health, as the kubelet does (for the stand-in and tests).
#[derive(Clone)]
pub struct DraHealthClient {
    client: Client,
}

impl DraHealthClient {
    pub fn new(channel: Channel) -> Self {
        DraHealthClient {
            client: Client::new(channel),
        }
    }

    pub fn watch(
        &self,
        opt: CallOption,
    ) -> grpcio::Result<grpcio::ClientSStreamReceiver<NodeWatchResourcesResponse>> {
        self.client
            .server_streaming(&WATCH_RESOURCES, &NodeWatchResourcesRequest::new(), opt)
    }

    /// Runs `f` (a stream's reader) on the client's gRPC environment.
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.client.spawn(f)
    }
}

/// Which service path a call came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V1beta1,
}

type Prepare = Method<NodePrepareResourcesRequest, NodePrepareResourcesResponse>;
type Unprepare = Method<NodeUnprepareResourcesRequest, NodeUnprepareResourcesResponse>;

pub const PREPARE_V1: Prepare = method(
    MethodType::Unary,
    "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
);
pub const UNPREPARE_V1: Unprepare = method(
    MethodType::Unary,
    "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
);
pub const PREPARE_V1BETA1: Prepare = method(
    MethodType::Unary,
    "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources",
);
pub const UNPREPARE_V1BETA1: Unprepare = method(
    MethodType::Unary,
    "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources",
);
pub const GET_INFO: Method<InfoRequest, PluginInfo> = method(
    MethodType::Unary,
    "/pluginregistration.Registration/GetInfo",
);
pub const NOTIFY_REGISTRATION_STATUS: Method<RegistrationStatus, RegistrationStatusResponse> =
    method(
        MethodType::Unary,
        "/pluginregistration.Registration/NotifyRegistrationStatus",
    );

/// The plugin side of the DRA service.
pub trait DraPlugin {
    fn prepare(
        &mut self,
        ctx: RpcContext<'_>,
        version: Version,
        req: NodePrepareResourcesRequest,
        sink: UnarySink<NodePrepareResourcesResponse>,
    );
    fn unprepare(
        &mut self,
        ctx: RpcContext<'_>,
        version: Version,
        req: NodeUnprepareResourcesRequest,
        sink: UnarySink<NodeUnprepareResourcesResponse>,
    );
}

/// Both versions' services, answered by one handler.
pub fn create_dra_plugin<S: DraPlugin + Send + Clone + 'static>(s: S) -> Service {
    let (mut a, mut b, mut c, mut d) = (s.clone(), s.clone(), s.clone(), s);
    ServiceBuilder::new()
        .add_unary_handler(&PREPARE_V1, move |ctx, req, sink| {
            a.prepare(ctx, Version::V1, req, sink)
        })
        .add_unary_handler(&UNPREPARE_V1, move |ctx, req, sink| {
            b.unprepare(ctx, Version::V1, req, sink)
        })
        .add_unary_handler(&PREPARE_V1BETA1, move |ctx, req, sink| {
            c.prepare(ctx, Version::V1beta1, req, sink)
        })
        .add_unary_handler(&UNPREPARE_V1BETA1, move |ctx, req, sink| {
            d.unprepare(ctx, Version::V1beta1, req, sink)
        })
        .build()
}

/// The plugin side of registration: the kubelet's plugin watcher calls it.
pub trait Registration {
    fn get_info(&mut self, ctx: RpcContext<'_>, req: InfoRequest, sink: UnarySink<PluginInfo>);
    fn notify_registration_status(
        &mut self,
        ctx: RpcContext<'_>,
        req: RegistrationStatus,
        sink: UnarySink<RegistrationStatusResponse>,
    );
}

pub fn create_registration<S: Registration + Send + Clone + 'static>(s: S) -> Service {
    let (mut a, mut b) = (s.clone(), s);
    ServiceBuilder::new()
        .add_unary_handler(&GET_INFO, move |ctx, req, sink| a.get_info(ctx, req, sink))
        .add_unary_handler(&NOTIFY_REGISTRATION_STATUS, move |ctx, req, sink| {
            b.notify_registration_status(ctx, req, sink)
        })
        .build()
}

/// Calls a DRA plugin, as the kubelet does (for the kubelet stand-in and tests).
pub struct DraPluginClient {
    client: Client,
}

impl DraPluginClient {
    pub fn new(channel: Channel) -> Self {
        DraPluginClient {
            client: Client::new(channel),
        }
    }

    pub fn prepare(
        &self,
        version: Version,
        req: &NodePrepareResourcesRequest,
        opt: CallOption,
    ) -> grpcio::Result<NodePrepareResourcesResponse> {
        let m = match version {
            Version::V1 => &PREPARE_V1,
            Version::V1beta1 => &PREPARE_V1BETA1,
        };
        self.client.unary_call(m, req, opt)
    }

    pub fn unprepare(
        &self,
        version: Version,
        req: &NodeUnprepareResourcesRequest,
        opt: CallOption,
    ) -> grpcio::Result<NodeUnprepareResourcesResponse> {
        let m = match version {
            Version::V1 => &UNPREPARE_V1,
            Version::V1beta1 => &UNPREPARE_V1BETA1,
        };
        self.client.unary_call(m, req, opt)
    }
}

/// Calls a plugin's Registration service, as the kubelet's plugin watcher does.
pub struct RegistrationClient {
    client: Client,
}

impl RegistrationClient {
    pub fn new(channel: Channel) -> Self {
        RegistrationClient {
            client: Client::new(channel),
        }
    }

    pub fn get_info(&self, opt: CallOption) -> grpcio::Result<PluginInfo> {
        self.client.unary_call(&GET_INFO, &InfoRequest::new(), opt)
    }

    pub fn notify(
        &self,
        status: &RegistrationStatus,
        opt: CallOption,
    ) -> grpcio::Result<RegistrationStatusResponse> {
        self.client
            .unary_call(&NOTIFY_REGISTRATION_STATUS, status, opt)
    }
}
