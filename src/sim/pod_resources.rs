//! The kubelet's podresources API (v1 `List`): the pods and devices a test sets.

use std::sync::Arc;

use futures_util::FutureExt;
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};

use spookd::kubelet::proto::podresources::{
    self, ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse,
    PodResources,
};

use super::Shared;

/// The podresources List the stand-in serves.
#[derive(Clone)]
pub(super) struct PodResourcesService {
    pub(super) shared: Arc<Shared>,
}

impl podresources::PodResourcesLister for PodResourcesService {
    fn list(
        &mut self,
        ctx: RpcContext<'_>,
        _req: ListPodResourcesRequest,
        sink: UnarySink<ListPodResourcesResponse>,
    ) {
        let inner = self.shared.lock();
        if inner.pod_resources_down {
            let status = RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, "down".into());
            ctx.spawn(sink.fail(status).map(|_| ()));
            return;
        }
        let mut response = ListPodResourcesResponse::new();
        for (name, devices) in &inner.pods {
            let mut pod = PodResources::new();
            pod.name = name.clone();
            pod.namespace = "default".into();
            let mut container = ContainerResources::new();
            container.name = "main".into();
            for (resource, ids) in devices {
                let mut d = ContainerDevices::new();
                d.resource_name = resource.clone();
                d.device_ids = ids.clone();
                container.devices.push(d);
            }
            pod.containers.push(container);
            response.pod_resources.push(pod);
        }
        drop(inner);
        ctx.spawn(sink.success(response).map(|_| ()));
    }
}
