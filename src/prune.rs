//! `--prune-stale-resources`: removes resources spookd no longer serves from its node's status.
//!
//! The kubelet keeps a resource whose plugin went away in the node's capacity and allocatable at 0
//! forever (kubernetes#52510). The `spookd-prune` thread removes such a name, from spookd's own node
//! only, when all of these hold:
//!
//! 1. spookd advertised it on this node: every name it serves is first recorded in the Node's
//!    annotation [`ANNOTATION`] (owned by spookd), so the memory survives restarts of spookd;
//! 2. spookd no longer serves it, for `--prune-after` (a restarted spookd counts from its start);
//! 3. the kubelet then shows it at 0 (capacity, and allocatable if present), re-read just before
//!    the patch. A name still counted (the kubelet's grace period is not over, or another plugin
//!    registered it) is checked again `--prune-after` later.
//!
//! The removal is one JSON patch on the `status` subresource whose `test` ops guard every `remove`
//! (a concurrent change makes the whole patch fail, and it is re-checked later); `/` in a name is
//! escaped as `~1`. `--prune-after` later the name is checked once more: the kubelet writes a
//! resource back at 0 until its own grace period for that plugin has run out (after a kubelet
//! restart, say), and then it is removed again; once it stays away it leaves the annotation. Errors are retried with backoff (403 says
//! which permissions are missing); serving never waits on any of this: the state thread only
//! sends the set of names it serves.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};

use crate::backoff::Backoff;
use crate::clock::later;
use crate::config::{NodeName, ResourceName};
use crate::kube::client::{ApiError, Client, Connection};
use crate::kube::node::{self, is_zero, NodeView};
use crate::worker::Worker;

/// The Node annotation listing, comma-separated and sorted, the names spookd advertised there.
pub const ANNOTATION: &str = "spookd/advertised-resources";

/// What `--prune-stale-resources` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneOptions {
    pub conn: Connection,
    /// How long after spookd stopped serving a name it re-checks it and removes it.
    pub after: Duration,
}

/// The calls the pruner makes on its Node; the real one is [`HttpNodeApi`].
pub trait NodeApi {
    fn get(&mut self) -> Result<NodeView, ApiError>;
    /// Sets the [`ANNOTATION`] to `names` (removes it when empty).
    fn annotate(&mut self, names: &BTreeSet<ResourceName>) -> Result<(), ApiError>;
    /// Removes `resource` from the status' capacity (and allocatable when `allocatable` is given),
    /// each only if it still holds the value read.
    fn remove(
        &mut self,
        resource: &ResourceName,
        capacity: &str,
        allocatable: Option<&str>,
    ) -> Result<(), ApiError>;
}

/// The pruning decisions, without a thread or a server: tested with a fake [`NodeApi`].
#[derive(Debug)]
pub struct Prune {
    after: Duration,
    /// What the state thread serves; `None` until its first config (nothing is stale before).
    served: Option<BTreeSet<ResourceName>>,
    /// The annotation as last read or written; `None` until read.
    advertised: Option<BTreeSet<ResourceName>>,
    /// Names advertised and not served, and when to check them.
    due: BTreeMap<ResourceName, Instant>,
    /// After a failure, nothing is tried before this.
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Prune {
    pub fn new(after: Duration) -> Self {
        Prune {
            after,
            served: None,
            advertised: None,
            due: BTreeMap::new(),
            retry_at: None,
            backoff: Backoff::default(),
        }
    }

    /// The names the state thread now serves.
    pub fn served(&mut self, served: BTreeSet<ResourceName>) {
        self.served = Some(served);
    }

    /// Does the work due at `now`; returns when it must be called again (`None`: only after
    /// [`Prune::served`]).
    pub fn tick(&mut self, api: &mut dyn NodeApi, now: Instant) -> Option<Instant> {
        if self.retry_at.is_some_and(|at| now < at) {
            return self.retry_at;
        }
        match self.step(api, now) {
            Ok(()) => {
                self.retry_at = None;
                self.backoff.reset();
            }
            Err(e) => {
                let hint = match e.status() {
                    Some(403) => {
                        " (spookd's ServiceAccount needs get and patch on nodes and patch on \
                         nodes/status: apply manifests/overlays/prune/)"
                    }
                    Some(409 | 422) => " (the Node changed meanwhile; checking again)",
                    _ => "",
                };
                let wait = self.backoff.wait();
                warn!("pruning stale resources: {e}{hint}; retrying in {wait:.1?}");
                self.retry_at = Some(later(now, wait));
            }
        }
        // While backing off nothing happens before the retry, not even a due check.
        self.retry_at.or_else(|| self.due.values().copied().min())
    }

    fn step(&mut self, api: &mut dyn NodeApi, now: Instant) -> Result<(), ApiError> {
        let mut advertised = match self.advertised.take() {
            Some(a) => a,
            None => parse_annotation(api.get()?.annotation.as_deref()),
        };
        self.advertised = Some(advertised.clone());
        let Some(served) = &self.served else {
            return Ok(());
        };
        // 1. Remember every name served before anything can go stale.
        let wanted: BTreeSet<ResourceName> = advertised.union(served).cloned().collect();
        if wanted != advertised {
            api.annotate(&wanted)?;
            debug!(
                "advertised resources recorded on the Node: {}",
                join(&wanted)
            );
            advertised = wanted;
            self.advertised = Some(advertised.clone());
        }
        // 2. Names no longer served become due `after` from now; served ones are not due.
        self.due
            .retain(|r, _| advertised.contains(r) && !served.contains(r));
        for r in advertised.difference(served) {
            self.due.entry(r.clone()).or_insert_with(|| {
                info!(
                    "{r}: no longer served; removing it from the node's status after {:?} if the \
                     kubelet shows it at 0",
                    self.after
                );
                later(now, self.after)
            });
        }
        let ripe: Vec<ResourceName> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(r, _)| r.clone())
            .collect();
        if ripe.is_empty() {
            return Ok(());
        }
        // 3. Re-read the node; remove what the kubelet shows at 0.
        let node = api.get()?;
        let mut gone = BTreeSet::new();
        for r in ripe {
            let capacity = node.capacity.get(r.as_str());
            let allocatable = node.allocatable.get(r.as_str());
            match (capacity, allocatable) {
                (None, None) => {
                    debug!("{r}: not in the node's status any more");
                    gone.insert(r);
                }
                (Some(c), a) if is_zero(c) && a.is_none_or(|a| is_zero(a)) => {
                    api.remove(&r, c, a.map(String::as_str))?;
                    info!(
                        "{r}: removed from the node's capacity and allocatable; confirming in {:?}",
                        self.after
                    );
                    // A kubelet still within its grace period (say, restarted meanwhile) writes
                    // the name back at 0: look again, and forget the name only once it stays away.
                    self.due.insert(r, later(now, self.after));
                }
                _ => {
                    info!(
                        "{r}: the kubelet still counts it (capacity {}, allocatable {}); checking \
                         again in {:?}",
                        capacity.map_or("-", String::as_str),
                        allocatable.map_or("-", String::as_str),
                        self.after
                    );
                    self.due.insert(r, later(now, self.after));
                }
            }
        }
        if !gone.is_empty() {
            let left: BTreeSet<ResourceName> = advertised.difference(&gone).cloned().collect();
            api.annotate(&left)?;
            for r in &gone {
                self.due.remove(r);
            }
            self.advertised = Some(left);
        }
        Ok(())
    }
}

fn join(names: &BTreeSet<ResourceName>) -> String {
    names
        .iter()
        .map(ResourceName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// The annotation's names; entries that are not resource names (a hand edit) are dropped.
fn parse_annotation(value: Option<&str>) -> BTreeSet<ResourceName> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|s| match ResourceName::try_from(s.to_owned()) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!("{ANNOTATION}: ignoring {e}");
                None
            }
        })
        .collect()
}

/// A JSON Pointer token: `~` as `~0`, `/` as `~1` (RFC 6901).
fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Handle of the `spookd-prune` thread; dropping it stops the thread.
pub struct Pruner {
    tx: Sender<BTreeSet<ResourceName>>,
    _worker: Worker,
}

impl Pruner {
    pub fn spawn(opts: PruneOptions, node: NodeName) -> io::Result<Pruner> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let worker = Worker::spawn("spookd-prune", move || {
            let mut api = HttpNodeApi::new(opts.conn, node);
            run(&rx, &mut Prune::new(opts.after), &mut api);
        })?
        // A request may be blocked on the network; the process is exiting.
        .stop_wait(Duration::from_millis(100));
        Ok(Pruner {
            tx,
            _worker: worker,
        })
    }

    /// The names served now.
    pub fn served(&self, served: BTreeSet<ResourceName>) {
        // Fails only once the thread has ended, at shutdown.
        let _ = self.tx.send(served);
    }
}

fn run(rx: &Receiver<BTreeSet<ResourceName>>, prune: &mut Prune, api: &mut dyn NodeApi) {
    let mut wake: Option<Instant> = None;
    loop {
        let message = match wake {
            Some(at) => rx.recv_deadline(at),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match message {
            // Only the newest set matters.
            Ok(served) => prune.served(rx.try_iter().last().unwrap_or(served)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        wake = prune.tick(api, Instant::now());
    }
}

/// The Node over HTTPS.
pub struct HttpNodeApi {
    client: Client,
    url: String,
}

impl HttpNodeApi {
    pub fn new(conn: Connection, node: NodeName) -> Self {
        let url = node::url(&conn, &node);
        HttpNodeApi {
            client: Client::new(conn),
            url,
        }
    }
}

impl NodeApi for HttpNodeApi {
    fn get(&mut self) -> Result<NodeView, ApiError> {
        node::read(&self.client, &self.url, ANNOTATION)
    }

    fn annotate(&mut self, names: &BTreeSet<ResourceName>) -> Result<(), ApiError> {
        // Resource names hold only letters, digits, '.', '-', '_' and one '/': nothing to escape.
        let value = if names.is_empty() {
            "null".to_owned()
        } else {
            format!("\"{}\"", join(names))
        };
        let body = format!(r#"{{"metadata":{{"annotations":{{"{ANNOTATION}":{value}}}}}}}"#);
        self.client
            .patch(&self.url, "application/merge-patch+json", &body)
            .map(drop)
    }

    fn remove(
        &mut self,
        resource: &ResourceName,
        capacity: &str,
        allocatable: Option<&str>,
    ) -> Result<(), ApiError> {
        let body = status_patch(resource, capacity, allocatable);
        let url = format!("{}/status", self.url);
        self.client
            .patch(&url, "application/json-patch+json", &body)
            .map(drop)
    }
}

/// The JSON patch removing `resource` from capacity (and allocatable), each after a `test` that
/// it still holds the value read. Quantities and names need no escaping (see `annotate`).
fn status_patch(resource: &ResourceName, capacity: &str, allocatable: Option<&str>) -> String {
    let token = pointer_token(resource.as_str());
    let mut ops = Vec::new();
    for (field, value) in [("capacity", Some(capacity)), ("allocatable", allocatable)] {
        if let Some(value) = value {
            let path = format!("/status/{field}/{token}");
            ops.push(format!(
                r#"{{"op":"test","path":"{path}","value":"{value}"}}"#
            ));
            ops.push(format!(r#"{{"op":"remove","path":"{path}"}}"#));
        }
    }
    format!("[{}]", ops.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(s: &str) -> ResourceName {
        ResourceName::try_from(s.to_owned()).unwrap()
    }

    fn set(names: &[&str]) -> BTreeSet<ResourceName> {
        names.iter().map(|n| res(n)).collect()
    }

    /// A Node in memory; `fail` answers the next calls with these statuses.
    #[derive(Default)]
    struct FakeNode {
        node: NodeView,
        calls: Vec<String>,
        fail: Vec<u16>,
    }

    impl FakeNode {
        fn check(&mut self, call: String) -> Result<(), ApiError> {
            self.calls.push(call);
            match self.fail.pop() {
                Some(code) => Err(ApiError::Status {
                    url: "fake".into(),
                    code,
                    retry_after: None,
                    body: String::new(),
                }),
                None => Ok(()),
            }
        }
        fn count(&mut self, name: &str, q: &str) {
            self.node.capacity.insert(name.into(), q.into());
            self.node.allocatable.insert(name.into(), q.into());
        }
    }

    impl NodeApi for FakeNode {
        fn get(&mut self) -> Result<NodeView, ApiError> {
            self.check("get".into())?;
            Ok(self.node.clone())
        }
        fn annotate(&mut self, names: &BTreeSet<ResourceName>) -> Result<(), ApiError> {
            self.check(format!("annotate {}", join(names)))?;
            self.node.annotation = (!names.is_empty()).then(|| join(names));
            Ok(())
        }
        fn remove(&mut self, r: &ResourceName, c: &str, a: Option<&str>) -> Result<(), ApiError> {
            self.check(format!("remove {r} {c} {a:?}"))?;
            if self.node.capacity.get(r.as_str()).map(String::as_str) != Some(c) {
                return Err(ApiError::Status {
                    url: "fake".into(),
                    code: 422,
                    retry_after: None,
                    body: "test failed".into(),
                });
            }
            self.node.capacity.remove(r.as_str());
            self.node.allocatable.remove(r.as_str());
            Ok(())
        }
    }

    const AFTER: Duration = Duration::from_secs(300);

    #[test]
    fn records_served_names_then_prunes_a_removed_one_at_zero_after_the_wait() {
        let t0 = Instant::now();
        let mut node = FakeNode::default();
        node.count("nvidia.com/gpu", "0");
        node.count("a.io/x", "2");
        node.count("b.io/y", "1");
        let mut p = Prune::new(AFTER);
        // Before the first config: the annotation is read (an RBAC problem shows at start), and
        // nothing is written or due.
        assert_eq!(p.tick(&mut node, t0), None);
        assert_eq!(node.calls, ["get"]);
        p.served(set(&["a.io/x", "b.io/y"]));
        assert_eq!(p.tick(&mut node, t0), None);
        assert_eq!(node.calls, ["get", "annotate a.io/x,b.io/y"]);
        // b.io/y leaves the config; the kubelet shows it at 0 after its grace period.
        p.served(set(&["a.io/x"]));
        assert_eq!(p.tick(&mut node, t0), Some(t0 + AFTER));
        node.count("b.io/y", "0");
        node.calls.clear();
        assert_eq!(p.tick(&mut node, t0 + AFTER), Some(t0 + AFTER * 2));
        assert_eq!(node.calls, ["get", "remove b.io/y 0 Some(\"0\")"]);
        assert!(!node.node.capacity.contains_key("b.io/y"));
        // The kubelet writes it back at 0 (its grace period was not over): removed again; then
        // it stays away and leaves the annotation.
        node.count("b.io/y", "0");
        assert_eq!(p.tick(&mut node, t0 + AFTER * 2), Some(t0 + AFTER * 3));
        assert!(!node.node.capacity.contains_key("b.io/y"));
        assert_eq!(p.tick(&mut node, t0 + AFTER * 3), None);
        assert_eq!(
            node.calls[2..],
            [
                "get",
                "remove b.io/y 0 Some(\"0\")",
                "get",
                "annotate a.io/x"
            ]
        );
        // A foreign zero resource is never touched.
        assert_eq!(node.node.capacity["nvidia.com/gpu"], "0");
        assert_eq!(node.node.annotation.as_deref(), Some("a.io/x"));
    }

    #[test]
    fn a_name_served_again_before_the_deadline_is_untouched() {
        let t0 = Instant::now();
        let mut node = FakeNode::default();
        node.count("a.io/x", "0");
        let mut p = Prune::new(AFTER);
        p.served(set(&["a.io/x"]));
        p.tick(&mut node, t0);
        p.served(set(&[]));
        assert_eq!(p.tick(&mut node, t0), Some(t0 + AFTER));
        p.served(set(&["a.io/x"]));
        assert_eq!(p.tick(&mut node, t0 + AFTER), None);
        assert!(node.calls.iter().all(|c| !c.starts_with("remove")));
        assert_eq!(node.node.annotation.as_deref(), Some("a.io/x"));
    }

    #[test]
    fn a_restarted_spookd_prunes_what_the_annotation_remembers() {
        let t0 = Instant::now();
        let mut node = FakeNode::default();
        node.count("a.io/x", "0");
        node.count("other.io/manual", "0");
        node.node.annotation = Some("a.io/x,not a name".into());
        let mut p = Prune::new(AFTER);
        p.served(set(&["b.io/y"]));
        assert_eq!(p.tick(&mut node, t0), Some(t0 + AFTER));
        assert_eq!(node.calls, ["get", "annotate a.io/x,b.io/y"]);
        p.tick(&mut node, t0 + AFTER);
        assert!(!node.node.capacity.contains_key("a.io/x"));
        p.tick(&mut node, t0 + AFTER * 2);
        assert!(node.node.capacity.contains_key("other.io/manual"));
        assert_eq!(node.node.annotation.as_deref(), Some("b.io/y"));
    }

    #[test]
    fn a_name_still_counted_is_checked_again_later_and_a_vanished_one_forgotten() {
        let t0 = Instant::now();
        let mut node = FakeNode::default();
        node.count("a.io/x", "3");
        node.node.annotation = Some("a.io/x,c.io/z".into());
        let mut p = Prune::new(AFTER);
        p.served(set(&[]));
        p.tick(&mut node, t0);
        assert_eq!(p.tick(&mut node, t0 + AFTER), Some(t0 + AFTER * 2));
        // c.io/z is in no status at all: only forgotten.
        assert_eq!(node.node.annotation.as_deref(), Some("a.io/x"));
        assert!(node.calls.iter().all(|c| !c.starts_with("remove")));
        node.count("a.io/x", "0");
        assert_eq!(p.tick(&mut node, t0 + AFTER * 2), Some(t0 + AFTER * 3));
        assert_eq!(p.tick(&mut node, t0 + AFTER * 3), None);
        assert_eq!(node.node.annotation, None);
        assert_eq!(node.calls.last().unwrap(), "annotate ");
    }

    #[test]
    fn errors_back_off_and_retry_without_losing_anything() {
        let t0 = Instant::now();
        let mut node = FakeNode::default();
        node.count("a.io/x", "0");
        node.node.annotation = Some("a.io/x".into());
        let mut p = Prune::new(AFTER);
        p.served(set(&[]));
        // 403 on the first read: retried after a backoff.
        node.fail = vec![403];
        let retry = p.tick(&mut node, t0).unwrap();
        assert!(retry > t0 && retry <= t0 + Duration::from_secs(1));
        assert_eq!(
            p.tick(&mut node, t0),
            Some(retry),
            "nothing before the retry"
        );
        assert_eq!(node.calls, ["get"]);
        assert_eq!(p.tick(&mut node, retry), Some(retry + AFTER));
        // At the deadline: the patch fails (409, then 500); the name stays due and is retried.
        let due = retry + AFTER;
        node.fail = vec![500, 409];
        let next = p.tick(&mut node, due).unwrap();
        assert!(node.node.capacity.contains_key("a.io/x"));
        let next = p.tick(&mut node, next).unwrap();
        assert!(node.node.capacity.contains_key("a.io/x"));
        assert_eq!(p.tick(&mut node, next), Some(next + AFTER));
        assert!(!node.node.capacity.contains_key("a.io/x"));
        // The test op guards a changed value: the fake answers 422 like the API server.
        node.count("a.io/x", "0");
        assert!(node.remove(&res("a.io/x"), "1", None).is_err());
    }

    #[test]
    fn the_status_patch_tests_before_it_removes_and_escapes_the_slash() {
        assert_eq!(
            status_patch(&res("example.com/widget"), "0", Some("0")),
            r#"[{"op":"test","path":"/status/capacity/example.com~1widget","value":"0"},{"op":"remove","path":"/status/capacity/example.com~1widget"},{"op":"test","path":"/status/allocatable/example.com~1widget","value":"0"},{"op":"remove","path":"/status/allocatable/example.com~1widget"}]"#
        );
        assert_eq!(
            status_patch(&res("a.io/x"), "0", None),
            r#"[{"op":"test","path":"/status/capacity/a.io~1x","value":"0"},{"op":"remove","path":"/status/capacity/a.io~1x"}]"#
        );
        assert_eq!(pointer_token("a~b/c"), "a~0b~1c");
    }
}
