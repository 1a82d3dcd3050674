//! The node's own device plugins (`spookd-dra-node`): where a device plugin advertises a name on
//! a node (allocatable above 0) the scheduler serves pods asking for it in `resources.limits`
//! from the device plugin there, not from DRA (KEP-5004's `filterExtendedResources`), so pods
//! land on that node and never get the DRA device. Each node reads its own Node at start and
//! every [`EVERY`] and tells the state thread what device plugins advertise there; the state
//! thread warns about the names it also serves by DRA ([`crate::state::msg::DraEvent::NodeAdvertises`]).

use std::collections::BTreeSet;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, warn};

use crate::config::NodeName;
use crate::kube::client::{ApiError, Client, Connection};
use crate::kube::node::{self, is_positive, NodeView};
use crate::state::msg::{DraEvent, Msg};
use crate::worker::Worker;

/// How often the Node is read: a device plugin deployed later is noticed within this.
pub const EVERY: Duration = Duration::from_secs(60);

/// Reading the node's own Node.
pub trait NodeRead {
    fn read(&mut self) -> Result<NodeView, ApiError>;
}

pub struct HttpNode {
    client: Client,
    url: String,
}

impl HttpNode {
    pub fn new(conn: Connection, node: &NodeName) -> Self {
        let url = node::url(&conn, node);
        HttpNode {
            client: Client::new(conn),
            url,
        }
    }
}

impl NodeRead for HttpNode {
    fn read(&mut self) -> Result<NodeView, ApiError> {
        node::read(&self.client, &self.url, "")
    }
}

/// The extended resources a device plugin advertises on the node: allocatable above 0, the
/// scheduler's rule. Not capacity: the kubelet keeps a plugin that went away in capacity, with
/// allocatable 0, for its grace period, which would warn for minutes after a node moved to DRA.
/// (A plugin whose devices are all Unhealthy is not seen until one is Healthy again.)
pub fn advertised(node: &NodeView) -> BTreeSet<String> {
    (node.allocatable.iter())
        .filter(|(name, quantity)| name.contains('/') && is_positive(quantity))
        .map(|(name, _)| name.clone())
        .collect()
}

/// One read: what to tell the state thread, if the read worked. `warned` keeps a refusal (403: the
/// ClusterRole lacks `get` on nodes, an older manifest) from being logged every minute.
fn check(api: &mut dyn NodeRead, warned: &mut bool) -> Option<BTreeSet<String>> {
    match api.read() {
        Ok(node) => {
            *warned = false;
            Some(advertised(&node))
        }
        Err(e) if !*warned => {
            warn!(
                "cannot read this node to see whether a device plugin serves the same names: \
                 {e}{}; not checked",
                if e.status() == Some(403) {
                    " (the ClusterRole needs get on nodes)"
                } else {
                    ""
                }
            );
            *warned = true;
            None
        }
        Err(e) => {
            debug!("cannot read this node: {e}");
            None
        }
    }
}

/// Handle of the thread; dropping it stops the thread.
pub struct NodeWatcher {
    _stop: Sender<()>,
    _worker: Worker,
}

impl NodeWatcher {
    pub fn spawn(
        mut api: impl NodeRead + Send + 'static,
        state: Sender<Msg>,
    ) -> std::io::Result<NodeWatcher> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let worker = Worker::spawn("spookd-dra-node", move || {
            run(&mut api, &state, &stopped, EVERY)
        })?
        // It may sit in an API call: the process is exiting anyway.
        .stop_wait(Duration::from_millis(50));
        Ok(NodeWatcher {
            _stop: stop,
            _worker: worker,
        })
    }
}

fn run(api: &mut dyn NodeRead, state: &Sender<Msg>, stopped: &Receiver<()>, every: Duration) {
    let mut warned = false;
    loop {
        if let Some(names) = check(api, &mut warned) {
            if state
                .send(Msg::Dra(DraEvent::NodeAdvertises(names)))
                .is_err()
            {
                return;
            }
        }
        match stopped.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Fake(Vec<Result<NodeView, ApiError>>);
    impl NodeRead for Fake {
        fn read(&mut self) -> Result<NodeView, ApiError> {
            self.0.remove(0)
        }
    }

    fn view(allocatable: &[(&str, &str)]) -> NodeView {
        NodeView {
            allocatable: (allocatable.iter())
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            ..NodeView::default()
        }
    }

    /// Extended resources allocatable above 0 count; cpu and memory, a name a plugin left at 0
    /// (however written), and one only in capacity, do not.
    /// A failed read tells nothing (the last answer stands) and is logged once until a read works.
    #[test]
    fn reads_what_device_plugins_advertise() {
        let forbidden = ApiError::Status {
            url: "n".into(),
            code: 403,
            retry_after: None,
            body: String::new(),
        };
        let mut api = Fake(vec![
            Ok(NodeView {
                // A plugin gone (or all Unhealthy): in capacity, allocatable 0.
                capacity: view(&[("skao.int/gone", "1")]).allocatable,
                ..view(&[
                    ("cpu", "2"),
                    ("memory", "1Gi"),
                    ("skao.int/oscilloscope", "2"),
                    ("skao.int/gone", "0"),
                    ("skao.int/zero-written-oddly", "0.0"),
                ])
            }),
            Err(forbidden),
            Ok(view(&[])),
        ]);
        let mut warned = false;
        assert_eq!(
            check(&mut api, &mut warned),
            Some(BTreeSet::from(["skao.int/oscilloscope".to_owned()]))
        );
        assert_eq!((check(&mut api, &mut warned), warned), (None, true));
        assert_eq!(
            (check(&mut api, &mut warned), warned),
            (Some(BTreeSet::new()), false)
        );
    }
}
