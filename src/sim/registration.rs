//! The kubelet's Registration service: a plugin's Register call checked as the kubelet checks it,
//! then the plugin dialled back and its ListAndWatch stream followed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{FutureExt, StreamExt};
use grpcio::{
    CallOption, ChannelBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode, UnarySink,
};

use spookd::config::ResourceName;
use spookd::kubelet::proto::{self, DevicePluginClient, Empty, RegisterRequest};

use super::{Event, Inner, Plugin, Shared, CALL_TIMEOUT};

#[derive(Clone)]
pub(super) struct RegistrationService {
    pub(super) dir: PathBuf,
    pub(super) env: Arc<Environment>,
    pub(super) shared: Arc<Shared>,
    pub(super) generation: u64,
}

impl proto::Registration for RegistrationService {
    fn register(&mut self, ctx: RpcContext<'_>, req: RegisterRequest, sink: UnarySink<Empty>) {
        let resource = req.resource_name.clone();
        let refusal = if req.version != proto::VERSION {
            Some(format!("unsupported version {:?}", req.version))
        } else if ResourceName::try_from(resource.clone()).is_err() {
            Some(format!("invalid resource name {resource:?}"))
        } else if req.endpoint.contains('/') {
            Some(format!(
                "endpoint {:?} must be a file name in the directory",
                req.endpoint
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            let mut inner = self.shared.lock();
            self.shared.event(
                &mut inner,
                Event::Refused {
                    resource,
                    reason: reason.clone(),
                },
            );
            let status = RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, reason);
            ctx.spawn(sink.fail(status).map(|_| ()));
            return;
        }
        self.shared
            .lock()
            .register_calls
            .push((resource, Instant::now()));
        ctx.spawn(sink.success(Empty::new()).map(|_| ()));
        // Dial from a thread of our own, as the kubelet does from a goroutine: the handler must
        // not block the completion queue.
        let service = self.clone();
        let _ = std::thread::Builder::new()
            .name("sim-dial".into())
            .spawn(move || service.connect(req));
    }
}

impl RegistrationService {
    fn connect(self, req: RegisterRequest) {
        let resource = req.resource_name.clone();
        let endpoint = req.endpoint.clone();
        let path = self.dir.join(&endpoint);
        let channel = ChannelBuilder::new(self.env.clone())
            .use_local_subchannel_pool(true)
            .connect(&format!("unix:{}", path.display()));
        let client = Arc::new(DevicePluginClient::new(channel));
        let opt = || CallOption::default().timeout(CALL_TIMEOUT);
        let options = client.get_device_plugin_options(opt()).ok();
        let Ok(mut stream) = client.list_and_watch(CallOption::default()) else {
            return;
        };
        let (hang_up, mut hung_up) = futures_channel::oneshot::channel::<()>();
        {
            let mut inner = self.shared.lock();
            if inner.generation != self.generation {
                return; // restarted meanwhile
            }
            inner
                .registrations
                .push((resource.clone(), endpoint.clone()));
            inner.plugins.insert(
                resource.clone(),
                Plugin {
                    endpoint: endpoint.clone(),
                    options,
                    devices: None,
                    updates: 0,
                    stream_open: true,
                    client: client.clone(),
                    hang_up: Arc::new(Mutex::new(Some(hang_up))),
                },
            );
            let event = Event::Registered {
                resource: resource.clone(),
                endpoint: endpoint.clone(),
            };
            self.shared.event(&mut inner, event);
        }
        let shared = self.shared.clone();
        let generation = self.generation;
        client.spawn(async move {
            // Only this endpoint's entry is updated: a newer registration replaces it.
            let current = |inner: &Inner| {
                inner.generation == generation
                    && inner
                        .plugins
                        .get(&resource)
                        .is_some_and(|p| p.endpoint == endpoint)
            };
            loop {
                let next = futures_util::future::select(stream.next(), &mut hung_up).await;
                let futures_util::future::Either::Left((Some(Ok(msg)), _)) = next else {
                    break;
                };
                let devices: Vec<(String, String)> = msg
                    .devices
                    .iter()
                    .map(|d| (d.ID.clone(), d.health.clone()))
                    .collect();
                let mut inner = shared.lock();
                if !current(&inner) {
                    return;
                }
                if let Some(p) = inner.plugins.get_mut(&resource) {
                    p.devices = Some(devices.clone());
                    p.updates += 1;
                }
                shared.event(
                    &mut inner,
                    Event::Devices {
                        resource: resource.clone(),
                        devices,
                    },
                );
            }
            let mut inner = shared.lock();
            if current(&inner) {
                if let Some(p) = inner.plugins.get_mut(&resource) {
                    p.stream_open = false;
                }
            }
            shared.event(&mut inner, Event::StreamEnded { resource, endpoint });
        });
    }
}
