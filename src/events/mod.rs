//! Kubernetes Events (`events.k8s.io/v1`, served from 1.19 on): what a node's operator sees in
//! `kubectl get events` and `kubectl describe pod` (and, for the API source, `kubectl describe
//! configmap`) when this node rejects a config, applies one, or sees a device's health change.
//!
//! The `spookd-events` thread gets [`Notice`]s from the state thread through a bounded queue that
//! never blocks it (a full queue drops the notice and counts it). Each notice becomes an Event
//! regarding spookd's own Pod (from the downward API) and, for the API source, another regarding
//! the ConfigMap. The same notice again (the same regarding object, reason and note: the same
//! error in another config version) is counted as Kubernetes counts repeats: the first Event's
//! `series` is patched with the new count and time, nothing new is created. Best effort: an API
//! call that fails is logged once until one works again, counted ([`Msg::EventFailed`]), and the
//! notice is dropped.

mod api;
mod recorder;

use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::NodeName;
use crate::kube::client::Connection;
use crate::state::msg::{Msg, Notice};
use crate::worker::Worker;

pub use api::{EventApi, HttpEventApi};
pub use recorder::Recorder;

/// The controller name on every Event.
pub const REPORTING_CONTROLLER: &str = "spookd.dev/device-plugin";
/// Notices waiting at most.
const QUEUE: usize = 256;
/// An object an Event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Empty when unknown.
    pub uid: String,
}

/// Where Events go, and about what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventOptions {
    pub conn: Connection,
    /// spookd's own Pod (name, namespace and UID from the downward API).
    pub pod: ObjectRef,
    /// The API source's ConfigMap (namespace, name): Events regarding it too.
    pub configmap: Option<(String, String)>,
}

/// Handle of the `spookd-events` thread; dropping it stops the thread.
pub struct Events {
    tx: Sender<Notice>,
    state: Sender<Msg>,
    _worker: Worker,
}

impl Events {
    pub fn spawn(
        opts: EventOptions,
        node: &NodeName,
        state: Sender<Msg>,
    ) -> std::io::Result<Events> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let mut recorder = Recorder::new(&opts, node, Instant::now());
        let mut api = HttpEventApi::new(opts.conn);
        let to_state = state.clone();
        let worker = Worker::spawn("spookd-events", move || {
            run(&mut recorder, &mut api, &rx, &to_state)
        })?
        // It may be in an API call at a stop: the process is exiting anyway.
        .stop_wait(Duration::from_millis(100));
        Ok(Events {
            tx,
            state,
            _worker: worker,
        })
    }

    /// Queues `notice`; a full queue drops it (and counts it as failed): never blocks.
    pub fn send(&self, notice: Notice) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(notice) {
            let _ = self.state.send(Msg::EventFailed);
        }
    }
}

fn run(
    recorder: &mut Recorder,
    api: &mut dyn EventApi,
    rx: &Receiver<Notice>,
    state: &Sender<Msg>,
) {
    for notice in rx {
        for _ in 0..recorder.record(api, &notice, SystemTime::now(), Instant::now()) {
            let _ = state.send(Msg::EventFailed);
        }
    }
}
