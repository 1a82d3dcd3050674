//! Each node's health report, and how the leader reads them: the publisher may sit on a node that
//! cannot reach a device (which is why `hosts` exist), so the nodes that reach it say what their
//! probes see, through the API.
//!
//! - Every node writes one Lease of its own in the leader Lease's namespace
//!   (`<leader Lease>.<node>`, hashed where longer than a name may be), held by the node and
//!   renewed every third of `--lease-duration`, whose annotation `<driver>/unhealthy` lists the
//!   devices its probes find Unhealthy, one `<device> <message>` a line. The `spookd-dra-report`
//!   thread writes it at most every [`MIN_WRITE`] however often a probe flaps, and renews it.
//! - The leader lists the reports (and watches them: a change is published within a second). A
//!   report is live while its version has changed within its duration, by the leader's own clock
//!   (a dead node's report stops counting). A probed device is tainted when at least one live host
//!   of it reports, and every live host that does finds it Unhealthy: an instrument reachable from
//!   one host is not taken from the others, and one that no live host probes is left as it is
//!   (its nodes are not Ready, so nothing is scheduled there anyway).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::clock::later;
use crate::config::dra::Inventory;
use crate::dra::api::{HttpObjects, Object, Objects};
use crate::dra::objects::{Taints, INSTANCE_LABEL, MANAGED_BY};
use crate::dra::publish::Nudge;
use crate::kube::client::{ApiError, Connection};
use crate::kube::watch::{Failure, Observer, Phase, Versioned};
use crate::time::micro_time;
use crate::worker::Worker;

/// The fewest seconds between two writes of a node's report for a change of health: a device
/// flapping every second costs its node one write in this time, and the leader as many.
pub const MIN_WRITE: Duration = Duration::from_secs(5);
/// Most Unhealthy devices one report lists (an object's annotations hold 256 KiB; a line is at
/// most 128 bytes). More are left out, and said so.
pub const MAX_LISTED: usize = 1500;
/// The label telling report Leases from the others.
pub const COMPONENT_LABEL: (&str, &str) = ("app.kubernetes.io/component", "health-report");
/// Longest object name.
const MAX_NAME: usize = 253;
/// Retries of a failed write.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// A report as the API holds it (a `coordination.k8s.io/v1` Lease).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportLease {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ReportMeta,
    #[serde(default)]
    pub spec: ReportSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportSpec {
    #[serde(default)]
    pub holder_identity: Option<String>,
    #[serde(default)]
    pub lease_duration_seconds: Option<i64>,
    #[serde(default)]
    pub renew_time: Option<String>,
}

impl Object for ReportLease {
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn version(&self) -> &str {
        &self.metadata.resource_version
    }
}

impl Versioned for ReportLease {
    fn resource_version(&self) -> &str {
        &self.metadata.resource_version
    }
}

/// The report watch's observer: the publisher is nudged when a report appears, goes, or says
/// something new (its holder or annotations), not at each renewal. Every node renews its report
/// every third of its duration: nudged by each, the leader would list every slice and report
/// several times a second on a large cluster. The leader judges a report's liveness by when it
/// first saw its version, at a publish: one that stops being renewed stops counting up to two
/// [`crate::dra::publish::RESYNC`]s after its duration has run out (one before).
pub struct ReportNudge {
    nudge: Nudge,
    /// Each report's name and a digest of what it says.
    said: BTreeMap<String, u64>,
}

impl ReportNudge {
    pub fn new(nudge: Nudge) -> Self {
        ReportNudge {
            nudge,
            said: BTreeMap::new(),
        }
    }

    fn digest(r: &ReportLease) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &r.spec.holder_identity,
            &r.spec.lease_duration_seconds,
            &r.metadata.annotations,
        )
            .hash(&mut h);
        h.finish()
    }
}

impl Observer<ReportLease> for ReportNudge {
    fn listed(&mut self, items: Vec<ReportLease>, _: &str) -> bool {
        self.said = (items.iter())
            .map(|r| (r.metadata.name.clone(), Self::digest(r)))
            .collect();
        self.nudge.changed()
    }
    fn put(&mut self, item: ReportLease) -> bool {
        let digest = Self::digest(&item);
        if self.said.insert(item.metadata.name, digest) == Some(digest) {
            return true;
        }
        self.nudge.changed()
    }
    fn deleted(&mut self, item: ReportLease) -> bool {
        self.said.remove(&item.metadata.name);
        self.nudge.changed()
    }
    fn failed(&mut self, phase: Phase, why: &Failure<'_>) -> bool {
        Observer::<ReportLease>::failed(&mut self.nudge, phase, why)
    }
}

/// The report annotation's key: in the driver's domain.
pub fn annotation(driver: &str) -> String {
    format!("{driver}/unhealthy")
}

/// The name of `node`'s report for the driver whose leader Lease is `leader`.
pub fn report_name(leader: &str, node: &str) -> String {
    let name = format!("{leader}.{node}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = crate::hash::stable_hash(&[node.as_bytes()]);
    format!("{leader}.{hash:016x}")
}

/// The annotation's text: `<device> <message>` a line (device names are DNS labels; messages are
/// cut to one line of at most 63 bytes), at most [`MAX_LISTED`] lines.
pub fn encode(unhealthy: &Taints) -> String {
    let mut out = String::new();
    for (device, message) in unhealthy.iter().take(MAX_LISTED) {
        let message = crate::dra::objects::taint_value(message);
        out.push_str(device);
        out.push(' ');
        out.push_str(&message);
        out.push('\n');
    }
    out
}

/// The annotation read back; lines that are not `<device> <message>` are skipped.
pub fn decode(text: &str) -> Taints {
    (text.lines().take(MAX_LISTED))
        .filter_map(|l| {
            let (device, message) = l.split_once(' ').unwrap_or((l, ""));
            crate::config::is_dns_label(device).then(|| (device.to_owned(), message.to_owned()))
        })
        .collect()
}

impl HttpObjects<ReportLease> {
    /// The driver's health reports in `namespace`.
    pub fn reports(conn: Connection, namespace: &str, driver: &str) -> Self {
        let base = format!(
            "{}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
            conn.server
        );
        let selector = format!(
            "{}={},{}={driver}",
            COMPONENT_LABEL.0, COMPONENT_LABEL.1, INSTANCE_LABEL
        );
        HttpObjects::new(conn, base, &selector)
    }
}

/// What the leader knows of the reports: when it first saw each version.
#[derive(Debug, Default)]
pub struct Reports {
    seen: BTreeMap<String, (String, Instant)>,
}

impl Reports {
    /// The taints the live reports in `listed` give for `inventory` (see the module doc).
    pub fn taints(
        &mut self,
        inventory: &Inventory,
        driver: &str,
        listed: &[ReportLease],
        now: Instant,
    ) -> Taints {
        let key = annotation(driver);
        self.seen
            .retain(|name, _| listed.iter().any(|r| r.metadata.name == *name));
        let mut live: BTreeMap<&str, Taints> = BTreeMap::new();
        for r in listed {
            let version = &r.metadata.resource_version;
            let first = match self.seen.get(&r.metadata.name) {
                Some((v, at)) if v == version => *at,
                _ => {
                    self.seen
                        .insert(r.metadata.name.clone(), (version.clone(), now));
                    now
                }
            };
            // At most an hour, as Leases are; a report without one lives a minute.
            let secs = r.spec.lease_duration_seconds.unwrap_or(60).clamp(1, 3600);
            let duration = Duration::from_secs(secs.unsigned_abs());
            let Some(node) = r.spec.holder_identity.as_deref() else {
                continue;
            };
            if now.saturating_duration_since(first) < duration {
                let text = r.metadata.annotations.get(&key).map_or("", String::as_str);
                live.insert(node, decode(text));
            }
        }
        let mut taints = Taints::new();
        for d in inventory.devices() {
            if d.device.health_check.is_none() {
                continue;
            }
            let reports: Vec<&Taints> = (d.hosts.iter())
                .filter_map(|h| live.get(h.as_str()))
                .collect();
            let off = !reports.is_empty() && reports.iter().all(|r| r.contains_key(&d.name));
            if off {
                let message = reports[0].get(&d.name).cloned().unwrap_or_default();
                taints.insert(d.name.clone(), message);
            }
        }
        taints
    }
}

/// What the reporter needs to know of where it writes.
pub struct Reporter {
    pub api: Box<dyn Objects<ReportLease> + Send>,
    pub driver: String,
    pub namespace: String,
    pub node: String,
    pub name: String,
    pub duration: Duration,
}

impl Reporter {
    /// The report holding `unhealthy`, to write over `current` (if any).
    fn object(&self, unhealthy: &Taints, current: Option<&ReportLease>) -> ReportLease {
        let mut labels = BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (INSTANCE_LABEL.to_owned(), self.driver.clone()),
            (COMPONENT_LABEL.0.to_owned(), COMPONENT_LABEL.1.to_owned()),
        ]);
        if let Some(c) = current {
            // Others' labels stay.
            for (k, v) in &c.metadata.labels {
                labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let mut annotations = current
            .map(|c| c.metadata.annotations.clone())
            .unwrap_or_default();
        annotations.insert(annotation(&self.driver), encode(unhealthy));
        ReportLease {
            api_version: "coordination.k8s.io/v1".to_owned(),
            kind: "Lease".to_owned(),
            metadata: ReportMeta {
                name: self.name.clone(),
                namespace: self.namespace.clone(),
                resource_version: current
                    .map(|c| c.metadata.resource_version.clone())
                    .unwrap_or_default(),
                labels,
                annotations,
            },
            spec: ReportSpec {
                holder_identity: Some(self.node.clone()),
                lease_duration_seconds: Some(
                    i64::try_from(self.duration.as_secs().max(1)).unwrap_or(3600),
                ),
                renew_time: Some(micro_time(SystemTime::now())),
            },
        }
    }

    /// Writes the report: over the one last written, else over the one found, else a new one.
    fn write(
        &mut self,
        unhealthy: &Taints,
        current: &mut Option<ReportLease>,
    ) -> Result<(), ApiError> {
        if current.is_none() {
            *current = self.api.get(&self.name)?;
        }
        let object = self.object(unhealthy, current.as_ref());
        let stored = match current {
            Some(_) => self.api.replace(&object),
            None => self.api.create(&object),
        };
        match stored {
            Ok(stored) => {
                *current = Some(stored);
                Ok(())
            }
            Err(e) => {
                // Moved or gone: read it again next time.
                *current = None;
                Err(e)
            }
        }
    }
}

/// Handle of the `spookd-dra-report` thread; dropping it stops the thread.
pub struct ReportWriter {
    tx: Sender<Option<Taints>>,
    _worker: Worker,
}

impl ReportWriter {
    pub fn spawn(mut reporter: Reporter) -> std::io::Result<ReportWriter> {
        let (tx, rx) = crossbeam_channel::unbounded::<Option<Taints>>();
        let worker = Worker::spawn("spookd-dra-report", move || run(&mut reporter, &rx))?
            .stop_wait(Duration::from_millis(300));
        Ok(ReportWriter {
            tx,
            _worker: worker,
        })
    }

    /// The devices this node's probes find Unhealthy now; `None`: it probes none, and stops
    /// renewing its report (which the leader then stops counting).
    pub fn report(&self, unhealthy: Option<Taints>) {
        let _ = self.tx.send(unhealthy);
    }
}

fn run(reporter: &mut Reporter, rx: &Receiver<Option<Taints>>) {
    let renew = reporter.duration / 3;
    let mut backoff = Backoff::new(RETRY);
    let mut current: Option<ReportLease> = None;
    // Nothing is written until the node probes something.
    let mut unhealthy: Option<Taints> = None;
    let mut written: Option<Taints> = None;
    let mut last_write: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut next = Instant::now();
    loop {
        match rx.recv_deadline(next) {
            Ok(new) => {
                unhealthy = new;
                // Newer ones may be queued behind: only the last counts.
                while let Ok(newer) = rx.try_recv() {
                    unhealthy = newer;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let Some(unhealthy) = unhealthy.as_ref() else {
            written = None;
            next = later(now, Duration::from_secs(3600));
            continue;
        };
        let changed = written.as_ref() != Some(unhealthy);
        let due = match last_write {
            None => now,
            Some(at) if changed => later(at, MIN_WRITE),
            Some(at) => later(at, renew),
        };
        let due = retry_at.map_or(due, |r| due.max(r));
        if now < due {
            next = due;
            continue;
        }
        match reporter.write(unhealthy, &mut current) {
            Ok(()) => {
                if changed {
                    let more = if unhealthy.len() > MAX_LISTED {
                        format!(" (only the first {MAX_LISTED} listed)")
                    } else {
                        String::new()
                    };
                    info!(
                        "health report {}: {} Unhealthy device(s){more}",
                        reporter.name,
                        unhealthy.len()
                    );
                }
                written = Some(unhealthy.clone());
                last_write = Some(now);
                retry_at = None;
                backoff.reset();
                next = later(now, renew);
            }
            Err(e) => {
                let wait = backoff.wait();
                warn!(
                    "cannot write health report {}: {e}; retrying in {wait:?}",
                    reporter.name
                );
                retry_at = Some(later(now, wait));
                next = later(now, wait);
            }
        }
        debug!(
            "health report {}: written; next check in {renew:?}",
            reporter.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The publisher hears of a report that appears, goes, or says something new, not of a
    /// renewal (a new version and renewTime, the same holder and annotations).
    #[test]
    fn renewals_do_not_nudge_the_publisher() {
        let (nudge, sent) = Nudge::counted();
        let mut watch = ReportNudge::new(nudge);
        let report = |name: &str, version: &str, says: &str| {
            let mut r = ReportLease::default();
            r.metadata.name = name.into();
            r.metadata.resource_version = version.into();
            r.spec.holder_identity = Some("n1".into());
            r.spec.renew_time = Some(format!("2026-12-07T12:00:0{version}.000000Z"));
            r.metadata
                .annotations
                .insert("d.io/unhealthy".into(), says.into());
            r
        };
        assert!(watch.listed(vec![report("a", "1", ""), report("b", "1", "")], "9"));
        assert_eq!(sent(), 1);
        assert!(watch.put(report("a", "2", "")));
        assert_eq!(sent(), 0);
        assert!(watch.put(report("a", "3", "x-d-io-1 off")));
        assert!(watch.put(report("c", "1", "")));
        assert!(watch.deleted(report("b", "1", "")));
        assert_eq!(sent(), 3);
    }

    fn inventory() -> Inventory {
        let yaml = "deviceMapping:
  - hosts: [a, b]
    devices:
      - {resourceName: a.io/x, instanceID: '1', healthCheck: {tcp: '127.0.0.1:9'}}
      - {resourceName: a.io/x, instanceID: '2'}
  - hosts: [c]
    devices:
      - {resourceName: a.io/y, instanceID: '1', healthCheck: {tcp: '127.0.0.1:9'}}
";
        crate::dra::test_support::inventory(yaml)
    }

    fn report(node: &str, version: &str, unhealthy: &[&str]) -> ReportLease {
        let listed: Taints = (unhealthy.iter())
            .map(|d| ((*d).to_owned(), "refused".to_owned()))
            .collect();
        ReportLease {
            metadata: ReportMeta {
                name: report_name("spookd-dra-d-io", node),
                resource_version: version.to_owned(),
                annotations: BTreeMap::from([(annotation("d.io"), encode(&listed))]),
                ..ReportMeta::default()
            },
            spec: ReportSpec {
                holder_identity: Some(node.to_owned()),
                lease_duration_seconds: Some(40),
                renew_time: None,
            },
            ..ReportLease::default()
        }
    }

    /// Whose probes count: a device is tainted when every live host of it that reports finds it
    /// Unhealthy; one host still reaching it keeps it; a device nobody reports on is left; an
    /// unprobed device never; a report whose version stays for its duration stops counting.
    #[test]
    fn a_device_is_tainted_when_every_live_host_finds_it_unhealthy() {
        let inv = inventory();
        let mut r = Reports::default();
        let t0 = Instant::now();
        let names = |t: &Taints| t.keys().cloned().collect::<Vec<_>>();
        // Nobody reports: nothing.
        assert!(r.taints(&inv, "d.io", &[], t0).is_empty());
        // a finds x-1 off, b finds it fine: kept.
        let both = [report("a", "1", &["x-a-io-1"]), report("b", "1", &[])];
        assert!(r.taints(&inv, "d.io", &both, t0).is_empty());
        // Both find it off; an unprobed device listed by mistake is not tainted.
        let off = [
            report("a", "2", &["x-a-io-1", "x-a-io-2"]),
            report("b", "2", &["x-a-io-1"]),
        ];
        let t = r.taints(&inv, "d.io", &off, t0);
        assert_eq!(names(&t), ["x-a-io-1"]);
        assert_eq!(t["x-a-io-1"], "refused");
        // Only a reports (b's report gone): a alone decides.
        let a_only = [report("a", "2", &["x-a-io-1"])];
        assert_eq!(names(&r.taints(&inv, "d.io", &a_only, t0)), ["x-a-io-1"]);
        // a's report unchanged for its 40 s: dead, so nobody reports: the taint goes.
        let later = t0 + Duration::from_secs(41);
        assert!(r.taints(&inv, "d.io", &a_only, later).is_empty());
        // Renewed (a new version): it counts again.
        let renewed = [report("a", "3", &["x-a-io-1"])];
        assert_eq!(
            names(&r.taints(&inv, "d.io", &renewed, later)),
            ["x-a-io-1"]
        );
        // Another driver's annotation is not read.
        assert!(r.taints(&inv, "e.io", &renewed, later).is_empty());
    }

    #[test]
    fn reports_round_trip_and_are_bounded() {
        let many: Taints = (0..2000)
            .map(|i| {
                (
                    format!("dev-{i:04}"),
                    format!("connect to 10.0.0.1:{i}: refused"),
                )
            })
            .collect();
        let text = encode(&many);
        assert_eq!(text.lines().count(), MAX_LISTED);
        assert!(text.len() < 200 * 1024, "{}", text.len());
        let back = decode(&text);
        assert_eq!(back.len(), MAX_LISTED);
        assert_eq!(back["dev-0000"], "connect-to-10.0.0.1-0-refused");
        // What is not a device name is skipped.
        assert_eq!(
            decode("../x y\nok fine\n\n").keys().collect::<Vec<_>>(),
            ["ok"]
        );
        assert_eq!(
            report_name("spookd-dra-d-io", "node1"),
            "spookd-dra-d-io.node1"
        );
        let long = "n".repeat(253);
        assert!(report_name("spookd-dra-d-io", &long).len() <= 253);
    }
}
