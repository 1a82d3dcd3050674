//! What becomes of each notice: an Event about the Pod (and the ConfigMap), a repeat counted in
//! its series instead, or nothing when over the rate or asked to wait. Failures are logged once
//! until a write works again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

use super::{EventApi, EventOptions, ObjectRef, REPORTING_CONTROLLER};
use crate::clock::later;
use crate::config::NodeName;
use crate::kube::client::ApiError;
use crate::kube::json_string;
use crate::state::msg::Notice;
use crate::time::micro_time;

/// Series remembered at most (the oldest is forgotten first); the API server keeps Events for an
/// hour by default.
const MAX_SERIES: usize = 1024;
/// A repeat after this long starts a new Event instead of counting in the old one (the API
/// server deletes Events an hour after their last change).
const SERIES_WINDOW: Duration = Duration::from_secs(30 * 60);

/// One series: an Event and how often its notice came.
struct Series {
    name: String,
    count: u32,
    first: SystemTime,
    /// Recency, for forgetting the oldest.
    used: u64,
}

/// Writes allowed at once, then one per [`REFILL`]: a flapping probe or config must not flood
/// the API server (client-go's event spam filter: 25, then one per 5 minutes per object).
const BURST: f64 = 25.0;
const REFILL: Duration = Duration::from_secs(10);
/// How long writes pause after a 429 or 5xx without a Retry-After (and the bounds of one).
const PAUSE: Duration = Duration::from_secs(10);
const MAX_PAUSE: Duration = Duration::from_secs(300);
/// How long the ConfigMap's UID is trusted (deleted and created again, it has a new one).
const UID_TTL: Duration = Duration::from_secs(300);

/// What became of one Event.
enum Outcome {
    Written,
    /// Not written: over the rate, or the API server asked to wait.
    Limited,
    Failed(ApiError),
}

/// What the thread decides: which Events to create and which series to count. Pure apart from
/// its [`EventApi`], so the tests give it a fake.
pub struct Recorder {
    pod: ObjectRef,
    configmap: Option<(String, String)>,
    configmap_ref: Option<(ObjectRef, Instant)>,
    instance: String,
    series: BTreeMap<(ObjectRef, &'static str, String), Series>,
    clock: u64,
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
    /// Objects whose last write failed: the next failure is not logged again.
    failing: BTreeSet<String>,
    /// Over the rate since the last write: logged once.
    limited: bool,
}

impl Recorder {
    pub fn new(opts: &EventOptions, node: &NodeName, now: Instant) -> Recorder {
        Recorder {
            pod: opts.pod.clone(),
            configmap: opts.configmap.clone(),
            configmap_ref: None,
            instance: format!("spookd-{node}"),
            series: BTreeMap::new(),
            clock: 0,
            tokens: BURST,
            refilled: now,
            paused_until: None,
            failing: BTreeSet::new(),
            limited: false,
        }
    }

    /// The objects a notice is about: the Pod, and the ConfigMap once its UID is known.
    fn regarding(
        &mut self,
        api: &mut dyn EventApi,
        now: Instant,
    ) -> Result<Vec<ObjectRef>, ApiError> {
        let mut out = vec![self.pod.clone()];
        if let Some((namespace, name)) = &self.configmap {
            let fresh = self
                .configmap_ref
                .as_ref()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) < UID_TTL);
            if !fresh {
                let uid = api.configmap_uid(namespace, name)?;
                let object = ObjectRef {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid,
                };
                self.configmap_ref = Some((object, now));
            }
            out.extend(self.configmap_ref.as_ref().map(|(o, _)| o.clone()));
        }
        Ok(out)
    }

    /// A write may go now (the rate, and any pause the API server asked for).
    fn take(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now < until) {
            return false;
        }
        let gained =
            now.saturating_duration_since(self.refilled).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + gained).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Reports `notice`; returns how many Events were not written (failed or over the rate).
    pub fn record(
        &mut self,
        api: &mut dyn EventApi,
        notice: &Notice,
        now: SystemTime,
        mono: Instant,
    ) -> u64 {
        let mut missed = 0;
        let regarding = match self.regarding(api, mono) {
            Ok(r) => r,
            Err(e) => {
                self.failed("ConfigMap", &e);
                // The Pod still gets its Event.
                missed += 1;
                vec![self.pod.clone()]
            }
        };
        for object in regarding {
            let who = format!("{}/{}", object.kind, object.name);
            match self.one(api, &object, notice, now, mono) {
                Outcome::Written => {
                    if self.failing.remove(&who) {
                        info!("Events about {who} are written again");
                    }
                    self.limited = false;
                }
                Outcome::Limited => {
                    if !self.limited {
                        warn!(
                            "Kubernetes Events are rate limited ({BURST} at once, then one per \
                             {REFILL:?}; less while the API server asks to wait): the others are \
                             counted in spookd_events_failed_total"
                        );
                    }
                    self.limited = true;
                    missed += 1;
                }
                Outcome::Failed(e) => {
                    if matches!(e.status(), Some(429 | 500..=599)) {
                        let wait = match &e {
                            ApiError::Status {
                                retry_after: Some(after),
                                ..
                            } => (*after).clamp(Duration::from_secs(1), MAX_PAUSE),
                            _ => PAUSE,
                        };
                        self.paused_until = Some(later(mono, wait));
                    }
                    self.failed(&who, &e);
                    missed += 1;
                }
            }
        }
        missed
    }

    fn failed(&mut self, who: &str, e: &ApiError) {
        if self.failing.insert(who.to_owned()) {
            warn!(
                "cannot write a Kubernetes Event about {who}: {e}; serving goes on (needs create \
                 and patch on events.events.k8s.io in the namespace; see manifests/base/); logged \
                 once until one is written"
            );
        }
    }

    fn one(
        &mut self,
        api: &mut dyn EventApi,
        object: &ObjectRef,
        notice: &Notice,
        now: SystemTime,
        mono: Instant,
    ) -> Outcome {
        // Already cut to what the API takes ([`Notice::warning`], [`Notice::normal`]).
        let note = notice.note.clone();
        let key = (object.clone(), notice.reason, note.clone());
        self.clock += 1;
        let time = micro_time(now);
        if let Some(series) = self.series.get_mut(&key) {
            let recent = now
                .duration_since(series.first)
                .is_ok_and(|d| d < SERIES_WINDOW);
            if recent {
                // Counted even when not sent now: the next patch that goes carries the count.
                series.count = series.count.saturating_add(1);
                series.used = self.clock;
                let (name, count) = (series.name.clone(), series.count);
                if !self.take(mono) {
                    return Outcome::Limited;
                }
                match api.series(&object.namespace, &name, count, &time) {
                    Err(e) if e.status() == Some(404) => {}
                    Err(e) => return Outcome::Failed(e),
                    Ok(()) => return Outcome::Written,
                }
            }
            // Gone from the API or too old: a new Event.
            self.series.remove(&key);
        }
        if !self.take(mono) {
            return Outcome::Limited;
        }
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // The object's name cut so the unique suffix stays whole (a name is at most 253).
        let mut prefix: String = object.name.chars().take(253 - 17).collect();
        while prefix.ends_with(['-', '.']) {
            prefix.pop();
        }
        let name = format!("{prefix}.{nanos:x}");
        let q = |s: &str| json_string(s);
        let uid = if object.uid.is_empty() {
            String::new()
        } else {
            format!(",\"uid\":{}", q(&object.uid))
        };
        let instance: String = self.instance.chars().take(128).collect();
        let body = format!(
            r#"{{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{{"name":{},"namespace":{}}},"eventTime":{},"reportingController":{},"reportingInstance":{},"action":{},"reason":{},"type":{},"note":{},"regarding":{{"apiVersion":{},"kind":{},"namespace":{},"name":{}{uid}}}}}"#,
            q(&name),
            q(&object.namespace),
            q(&time),
            q(REPORTING_CONTROLLER),
            q(&instance),
            q(notice.action),
            q(notice.reason),
            q(if notice.warning { "Warning" } else { "Normal" }),
            q(&note),
            q(&object.api_version),
            q(&object.kind),
            q(&object.namespace),
            q(&object.name),
        );
        if let Err(e) = api.create(&object.namespace, &body) {
            return Outcome::Failed(e);
        }
        debug!(
            "Event {}/{name}: {} {}",
            object.namespace, notice.reason, note
        );
        if self.series.len() >= MAX_SERIES {
            let oldest = (self.series.iter())
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.series.remove(&k);
            }
        }
        self.series.insert(
            key,
            Series {
                name,
                count: 1,
                first: now,
                used: self.clock,
            },
        );
        Outcome::Written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::later;
    use crate::kube::client::Connection;

    #[derive(Default)]
    struct Fake {
        created: Vec<(String, serde_yaml::Value)>,
        patched: Vec<(String, String, u32)>,
        fail: Option<u16>,
        gone: bool,
    }

    fn status(code: u16) -> ApiError {
        ApiError::Status {
            url: "fake".into(),
            code,
            retry_after: None,
            body: String::new(),
        }
    }

    impl EventApi for Fake {
        fn create(&mut self, namespace: &str, body: &str) -> Result<(), ApiError> {
            if let Some(code) = self.fail {
                return Err(status(code));
            }
            self.created
                .push((namespace.into(), serde_yaml::from_str(body).unwrap()));
            Ok(())
        }
        fn series(&mut self, ns: &str, name: &str, count: u32, _: &str) -> Result<(), ApiError> {
            if self.gone {
                return Err(status(404));
            }
            self.patched.push((ns.into(), name.into(), count));
            Ok(())
        }
        fn configmap_uid(&mut self, _: &str, _: &str) -> Result<String, ApiError> {
            Ok("cm-uid".into())
        }
    }

    fn opts(configmap: bool) -> EventOptions {
        EventOptions {
            conn: Connection {
                server: "https://x".into(),
                token_file: "/t".into(),
                ca_file: "/c".into(),
            },
            pod: ObjectRef {
                api_version: "v1".into(),
                kind: "Pod".into(),
                namespace: "spookd".into(),
                name: "spookd-abc".into(),
                uid: "pod-uid".into(),
            },
            configmap: configmap.then(|| ("cfg".to_owned(), "spookd-device-plugin".to_owned())),
        }
    }

    fn invalid(note: &str) -> Notice {
        Notice::warning("InvalidConfig", "Reject", note.into())
    }

    #[test]
    fn a_notice_is_an_event_about_the_pod_and_the_configmap() {
        let node = NodeName::try_from("node1".to_owned()).unwrap();
        let mut r = Recorder::new(&opts(true), &node, Instant::now());
        let mut api = Fake::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            r.record(
                &mut api,
                &invalid("node node1: line 3: bad"),
                t,
                Instant::now()
            ),
            0
        );
        assert_eq!(api.created.len(), 2);
        let (ns, pod) = &api.created[0];
        assert_eq!(ns, "spookd");
        let want: serde_yaml::Value = serde_yaml::from_str(&format!(
            "apiVersion: events.k8s.io/v1
kind: Event
metadata: {{name: spookd-abc.{:x}, namespace: spookd}}
eventTime: '2023-11-14T22:13:20.000000Z'
reportingController: spookd.dev/device-plugin
reportingInstance: spookd-node1
action: Reject
reason: InvalidConfig
type: Warning
note: 'node node1: line 3: bad'
regarding: {{apiVersion: v1, kind: Pod, namespace: spookd, name: spookd-abc, uid: pod-uid}}
",
            1_700_000_000_000_000_000u128
        ))
        .unwrap();
        assert_eq!(pod, &want);
        let (ns, cm) = &api.created[1];
        assert_eq!(ns, "cfg");
        assert_eq!(cm["regarding"]["kind"], "ConfigMap");
        assert_eq!(cm["regarding"]["uid"], "cm-uid");
        assert_eq!(cm["metadata"]["namespace"], "cfg");
    }

    #[test]
    fn repeats_count_in_a_series_and_new_notes_are_new_events() {
        let node = NodeName::try_from("node1".to_owned()).unwrap();
        let mut r = Recorder::new(&opts(false), &node, Instant::now());
        let mut api = Fake::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        r.record(&mut api, &invalid("bad"), t, Instant::now());
        r.record(
            &mut api,
            &invalid("bad"),
            t + Duration::from_secs(5),
            Instant::now(),
        );
        r.record(
            &mut api,
            &invalid("bad"),
            t + Duration::from_secs(9),
            Instant::now(),
        );
        assert_eq!(api.created.len(), 1);
        let name = api.created[0].1["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            api.patched,
            [
                ("spookd".to_owned(), name.clone(), 2),
                ("spookd".to_owned(), name, 3)
            ]
        );
        r.record(
            &mut api,
            &invalid("worse"),
            t + Duration::from_secs(10),
            Instant::now(),
        );
        assert_eq!(api.created.len(), 2);
        // Long after, or deleted by the API server: a new Event.
        r.record(
            &mut api,
            &invalid("bad"),
            t + SERIES_WINDOW + Duration::from_secs(1),
            Instant::now(),
        );
        assert_eq!(api.created.len(), 3);
        api.gone = true;
        r.record(
            &mut api,
            &invalid("bad"),
            t + SERIES_WINDOW + Duration::from_secs(2),
            Instant::now(),
        );
        assert_eq!(api.created.len(), 4);
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_and_counted_and_a_429_pauses_writes() {
        let node = NodeName::try_from("node1".to_owned()).unwrap();
        let m = Instant::now();
        let mut r = Recorder::new(&opts(false), &node, m);
        let mut api = Fake::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // 200 distinct notices at once: 25 written, 175 not.
        let missed: u64 = (0..200)
            .map(|i| r.record(&mut api, &invalid(&format!("bad {i}")), t, m))
            .sum();
        assert_eq!((api.created.len(), missed), (25, 175));
        // One more after a refill period.
        assert_eq!(r.record(&mut api, &invalid("late"), t, later(m, REFILL)), 0);
        assert_eq!(api.created.len(), 26);
        // A repeat over the rate is counted locally; the next patch that goes carries it.
        r.record(&mut api, &invalid("late"), t, later(m, REFILL));
        assert!(api.patched.is_empty());
        r.record(&mut api, &invalid("late"), t, later(m, REFILL * 2));
        assert_eq!(api.patched.last().map(|p| p.2), Some(3));
        // A 429 pauses every write for its Retry-After.
        let mut r = Recorder::new(&opts(false), &node, m);
        let mut busy = Fake {
            fail: Some(429),
            ..Fake::default()
        };
        assert_eq!(r.record(&mut busy, &invalid("a"), t, m), 1);
        busy.fail = None;
        assert_eq!(
            r.record(&mut busy, &invalid("b"), t, later(m, PAUSE / 2)),
            1
        );
        assert!(busy.created.is_empty());
        assert_eq!(r.record(&mut busy, &invalid("b"), t, later(m, PAUSE)), 0);
        assert_eq!(busy.created.len(), 1);
    }

    #[test]
    fn event_names_keep_their_unique_suffix() {
        let node = NodeName::try_from("node1".to_owned()).unwrap();
        let mut o = opts(false);
        o.pod.name = format!("{}.x", "p".repeat(250));
        let mut r = Recorder::new(&o, &node, Instant::now());
        let mut api = Fake::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        r.record(&mut api, &invalid("a"), t, Instant::now());
        let name = api.created[0].1["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(name.len() <= 253, "{}", name.len());
        assert!(
            name.ends_with(&format!(".{:x}", 1_700_000_000_000_000_000u128)),
            "{name}"
        );
    }

    #[test]
    fn failures_are_counted_and_long_notes_cut() {
        let node = NodeName::try_from("node1".to_owned()).unwrap();
        let mut r = Recorder::new(&opts(false), &node, Instant::now());
        let mut api = Fake {
            fail: Some(403),
            ..Fake::default()
        };
        assert_eq!(
            r.record(&mut api, &invalid("x"), SystemTime::now(), Instant::now()),
            1
        );
        assert!(r.failing.contains("Pod/spookd-abc"));
        api.fail = None;
        let long = "é".repeat(1000);
        assert_eq!(
            r.record(&mut api, &invalid(&long), SystemTime::now(), Instant::now()),
            0
        );
        assert!(r.failing.is_empty());
        let note = api.created[0].1["note"].as_str().unwrap().to_owned();
        assert!(
            note.len() <= Notice::MAX_NOTE && note.contains(" bytes cut]… "),
            "{}",
            note.len()
        );
    }
}
