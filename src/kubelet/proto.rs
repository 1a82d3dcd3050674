//! The kubelet device-plugin API v1beta1: messages generated from `proto/api.proto` by build.rs,
//! gRPC glue for both services written here once (grpcio-compiler would pull in protobuf 2).

// Generated code is not held to our lints.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    missing_docs,
    unused_qualifications
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
}
pub use generated::api::*;

/// The DRA plugin API's messages (served by [`crate::dra`]; v1 and v1beta1 share them).
pub mod dra {
    pub use super::generated::dra::*;
}

/// The DRA device-health API's messages (served by [`crate::dra`]).
pub mod drahealth {
    pub use super::generated::drahealth::*;
}

/// The kubelet's plugin registration messages (for [`crate::dra`]).
pub mod pluginregistration {
    pub use super::generated::pluginregistration::*;
}

/// The kubelet's podresources API v1 (only `List`).
pub mod podresources {
    pub use super::generated::podresources::*;
    use grpcio::{CallOption, Channel, Client, Method, MethodType, Service, ServiceBuilder};

    pub const LIST: Method<ListPodResourcesRequest, ListPodResourcesResponse> =
        super::method(MethodType::Unary, "/v1.PodResourcesLister/List");

    /// The kubelet side (for the simulator and tests).
    pub trait PodResourcesLister {
        fn list(
            &mut self,
            ctx: grpcio::RpcContext<'_>,
            req: ListPodResourcesRequest,
            sink: grpcio::UnarySink<ListPodResourcesResponse>,
        );
    }

    pub fn create_pod_resources_lister<S: PodResourcesLister + Send + Clone + 'static>(
        mut s: S,
    ) -> Service {
        ServiceBuilder::new()
            .add_unary_handler(&LIST, move |ctx, req, sink| s.list(ctx, req, sink))
            .build()
    }

    /// Calls the kubelet's podresources service.
    pub struct PodResourcesListerClient {
        client: Client,
    }

    impl PodResourcesListerClient {
        pub fn new(channel: Channel) -> Self {
            PodResourcesListerClient {
                client: Client::new(channel),
            }
        }

        pub fn list(&self, opt: CallOption) -> grpcio::Result<ListPodResourcesResponse> {
            self.client
                .unary_call(&LIST, &ListPodResourcesRequest::new(), opt)
        }
    }
}

use grpcio::{
    CallOption, Channel, Client, ClientSStreamReceiver, Marshaller, Method, MethodType, RpcContext,
    ServerStreamingSink, Service, ServiceBuilder, UnarySink,
};

/// The API version spookd speaks, sent in `RegisterRequest.version`.
pub const VERSION: &str = "v1beta1";

/// The kubelet's registration socket, in the device-plugins directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";

/// Health strings of `Device.health`.
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

/// A gRPC method with protobuf marshalling.
pub const fn method<Req: protobuf::Message, Resp: protobuf::Message>(
    ty: MethodType,
    name: &'static str,
) -> Method<Req, Resp> {
    Method {
        ty,
        name,
        req_mar: Marshaller {
            ser: grpcio::pb_ser,
            de: grpcio::pb_de,
        },
        resp_mar: Marshaller {
            ser: grpcio::pb_ser,
            de: grpcio::pb_de,
        },
    }
}

pub const REGISTER: Method<RegisterRequest, Empty> =
    method(MethodType::Unary, "/v1beta1.Registration/Register");
pub const GET_DEVICE_PLUGIN_OPTIONS: Method<Empty, DevicePluginOptions> = method(
    MethodType::Unary,
    "/v1beta1.DevicePlugin/GetDevicePluginOptions",
);
pub const LIST_AND_WATCH: Method<Empty, ListAndWatchResponse> = method(
    MethodType::ServerStreaming,
    "/v1beta1.DevicePlugin/ListAndWatch",
);
pub const GET_PREFERRED_ALLOCATION: Method<
    PreferredAllocationRequest,
    PreferredAllocationResponse,
> = method(
    MethodType::Unary,
    "/v1beta1.DevicePlugin/GetPreferredAllocation",
);
pub const ALLOCATE: Method<AllocateRequest, AllocateResponse> =
    method(MethodType::Unary, "/v1beta1.DevicePlugin/Allocate");
pub const PRE_START_CONTAINER: Method<PreStartContainerRequest, PreStartContainerResponse> =
    method(MethodType::Unary, "/v1beta1.DevicePlugin/PreStartContainer");

/// The plugin side: one instance serves one resource.
pub trait DevicePlugin {
    fn get_device_plugin_options(
        &mut self,
        ctx: RpcContext<'_>,
        req: Empty,
        sink: UnarySink<DevicePluginOptions>,
    );
    fn list_and_watch(
        &mut self,
        ctx: RpcContext<'_>,
        req: Empty,
        sink: ServerStreamingSink<ListAndWatchResponse>,
    );
    fn get_preferred_allocation(
        &mut self,
        ctx: RpcContext<'_>,
        req: PreferredAllocationRequest,
        sink: UnarySink<PreferredAllocationResponse>,
    );
    fn allocate(
        &mut self,
        ctx: RpcContext<'_>,
        req: AllocateRequest,
        sink: UnarySink<AllocateResponse>,
    );
    fn pre_start_container(
        &mut self,
        ctx: RpcContext<'_>,
        req: PreStartContainerRequest,
        sink: UnarySink<PreStartContainerResponse>,
    );
}

pub fn create_device_plugin<S: DevicePlugin + Send + Clone + 'static>(s: S) -> Service {
    let (mut a, mut b, mut c, mut d, mut e) = (s.clone(), s.clone(), s.clone(), s.clone(), s);
    ServiceBuilder::new()
        .add_unary_handler(&GET_DEVICE_PLUGIN_OPTIONS, move |ctx, req, sink| {
            a.get_device_plugin_options(ctx, req, sink)
        })
        .add_server_streaming_handler(&LIST_AND_WATCH, move |ctx, req, sink| {
            b.list_and_watch(ctx, req, sink)
        })
        .add_unary_handler(&GET_PREFERRED_ALLOCATION, move |ctx, req, sink| {
            c.get_preferred_allocation(ctx, req, sink)
        })
        .add_unary_handler(&ALLOCATE, move |ctx, req, sink| d.allocate(ctx, req, sink))
        .add_unary_handler(&PRE_START_CONTAINER, move |ctx, req, sink| {
            e.pre_start_container(ctx, req, sink)
        })
        .build()
}

/// The kubelet side of registration (served by the kubelet; here for the simulator and tests).
pub trait Registration {
    fn register(&mut self, ctx: RpcContext<'_>, req: RegisterRequest, sink: UnarySink<Empty>);
}

pub fn create_registration<S: Registration + Send + Clone + 'static>(mut s: S) -> Service {
    ServiceBuilder::new()
        .add_unary_handler(&REGISTER, move |ctx, req, sink| s.register(ctx, req, sink))
        .build()
}

/// Calls the kubelet's Registration service.
pub struct RegistrationClient {
    client: Client,
}

impl RegistrationClient {
    pub fn new(channel: Channel) -> Self {
        RegistrationClient {
            client: Client::new(channel),
        }
    }

    pub fn register(&self, req: &RegisterRequest, opt: CallOption) -> grpcio::Result<Empty> {
        self.client.unary_call(&REGISTER, req, opt)
    }
}

/// Calls a plugin, as the kubelet does.
pub struct DevicePluginClient {
    client: Client,
}

impl DevicePluginClient {
    pub fn new(channel: Channel) -> Self {
        DevicePluginClient {
            client: Client::new(channel),
        }
    }

    pub fn get_device_plugin_options(
        &self,
        opt: CallOption,
    ) -> grpcio::Result<DevicePluginOptions> {
        self.client
            .unary_call(&GET_DEVICE_PLUGIN_OPTIONS, &Empty::new(), opt)
    }

    pub fn list_and_watch(
        &self,
        opt: CallOption,
    ) -> grpcio::Result<ClientSStreamReceiver<ListAndWatchResponse>> {
        self.client
            .server_streaming(&LIST_AND_WATCH, &Empty::new(), opt)
    }

    pub fn get_preferred_allocation(
        &self,
        req: &PreferredAllocationRequest,
        opt: CallOption,
    ) -> grpcio::Result<PreferredAllocationResponse> {
        self.client.unary_call(&GET_PREFERRED_ALLOCATION, req, opt)
    }

    pub fn allocate(
        &self,
        req: &AllocateRequest,
        opt: CallOption,
    ) -> grpcio::Result<AllocateResponse> {
        self.client.unary_call(&ALLOCATE, req, opt)
    }

    /// Starts an Allocate without waiting for its answer.
    pub fn allocate_async(
        &self,
        req: &AllocateRequest,
        opt: CallOption,
    ) -> grpcio::Result<grpcio::ClientUnaryReceiver<AllocateResponse>> {
        self.client.unary_call_async(&ALLOCATE, req, opt)
    }

    pub fn pre_start_container(
        &self,
        req: &PreStartContainerRequest,
        opt: CallOption,
    ) -> grpcio::Result<PreStartContainerResponse> {
        self.client.unary_call(&PRE_START_CONTAINER, req, opt)
    }

    /// Runs `f` on the channel's completion-queue thread (for consuming streams without a runtime).
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.client.spawn(f)
    }
}
