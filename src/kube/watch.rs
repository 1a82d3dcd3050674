//! One list-then-watch loop and one watch-event parser, for every API user that watches: the
//! ConfigMap source and the Lease watch.
//!
//! The loop LISTs (getting a resourceVersion even when nothing matches), then WATCHes from that
//! version with bookmarks, line by line: ADDED/MODIFIED/DELETED go to the [`Observer`], BOOKMARK
//! advances the version, a 410 (as an ERROR event or an HTTP status) means the version is too old
//! and it lists again, and a watch that ends normally resumes from the last version. What a
//! failure costs is the [`Policy`]. Errors back off with jitter (a 429's Retry-After is honoured),
//! never end the loop, and only a stop signal or an observer that says so does.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::backoff::Backoff;
use crate::kube::client::ApiError;
use crate::text::{cut_owned, Quoted, MAX_MESSAGE};

/// Longest a 429's Retry-After is honoured for, and the shortest (`Retry-After: 0` from a
/// server under load must not make every node retry at once, in a loop).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const MIN_RETRY_AFTER: Duration = Duration::from_millis(250);

/// One line of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent<T> {
    Added(T),
    Modified(T),
    Deleted(T),
    /// Nothing changed up to this version.
    Bookmark(String),
    /// An ERROR event: the server's `metav1.Status`.
    Error(Status),
}

impl<T> WatchEvent<T> {
    /// The same event with its object converted.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> WatchEvent<U> {
        match self {
            WatchEvent::Added(t) => WatchEvent::Added(f(t)),
            WatchEvent::Modified(t) => WatchEvent::Modified(f(t)),
            WatchEvent::Deleted(t) => WatchEvent::Deleted(f(t)),
            WatchEvent::Bookmark(v) => WatchEvent::Bookmark(v),
            WatchEvent::Error(s) => WatchEvent::Error(s),
        }
    }
}

/// A `metav1.Status`, as an ERROR watch event carries it. Its texts are logged: each is cut to
/// [`MAX_MESSAGE`] as it is read (a watch line may be 4 MiB).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default, deserialize_with = "cut_string")]
    pub reason: String,
    #[serde(default, deserialize_with = "cut_string")]
    pub message: String,
}

fn cut_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| cut_owned(s, MAX_MESSAGE))
}

/// Object metadata, as much as the watch needs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Meta {
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_yaml::Value,
}

/// A BOOKMARK's object: only its metadata is filled in.
#[derive(Deserialize)]
struct Bookmark {
    #[serde(default)]
    metadata: Meta,
}

/// Parses one watch line (JSON, which serde_yaml reads: JSON is YAML 1.2).
pub fn parse_event<T: DeserializeOwned>(line: &str) -> Result<WatchEvent<T>, serde_yaml::Error> {
    let raw: RawEvent = serde_yaml::from_str(line)?;
    let object = raw.object;
    Ok(match raw.kind.as_str() {
        "ADDED" => WatchEvent::Added(serde_yaml::from_value(object)?),
        "MODIFIED" => WatchEvent::Modified(serde_yaml::from_value(object)?),
        "DELETED" => WatchEvent::Deleted(serde_yaml::from_value(object)?),
        "BOOKMARK" => {
            let b: Bookmark = serde_yaml::from_value(object)?;
            WatchEvent::Bookmark(b.metadata.resource_version)
        }
        "ERROR" => WatchEvent::Error(serde_yaml::from_value(object)?),
        other => {
            return Err(serde::de::Error::custom(format!(
                "unknown watch event type {}",
                Quoted(other)
            )))
        }
    })
}

/// An object's resourceVersion: where a watch resumes after it.
pub trait Versioned {
    fn resource_version(&self) -> &str;
}

/// The events of one watch request.
pub type Events<T> = Box<dyn Iterator<Item = Result<WatchEvent<T>, ApiError>>>;

/// The two calls the loop makes; the real ones go over HTTPS, the tests' to a fake.
pub trait WatchApi {
    type Object: Versioned;
    /// Every matching object and the list's resourceVersion.
    fn list(&mut self) -> Result<(Vec<Self::Object>, String), ApiError>;
    /// Opens a watch from `version`; yields events until the server ends it.
    fn watch(&mut self, version: &str) -> Result<Events<Self::Object>, ApiError>;
}

/// What a failed watch costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// It resumes from the last version seen, and a list that works resets the backoff (the
    /// ConfigMap: one object, and nothing seen is lost by waiting).
    Resume,
    /// It lists again after the observer is told (the Leases: what was known may be stale), and
    /// only a watch that opens resets the backoff, so a list that works followed by a watch that
    /// is refused cannot spin.
    Relist,
}

/// Which call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    List,
    Watch,
}

/// Why a call failed: the API, or an ERROR event other than 410.
#[derive(Debug)]
pub enum Failure<'a> {
    Api(&'a ApiError),
    Status(&'a Status),
}

/// What the loop tells its user. Every method returns false to end the loop.
pub trait Observer<T> {
    /// A full list, at `version`.
    fn listed(&mut self, items: Vec<T>, version: &str) -> bool;
    /// An object created or changed.
    fn put(&mut self, item: T) -> bool;
    /// An object deleted.
    fn deleted(&mut self, item: T) -> bool;
    /// A call failed; the loop waits (the backoff, or a 429's Retry-After) and tries again.
    fn failed(&mut self, phase: Phase, why: &Failure<'_>) -> bool;
    /// The version watched from is too old (410); the loop lists again at once.
    fn expired(&mut self, _version: &str) {}
}

/// What to do after a watch ended.
enum Next {
    Relist,
    Rewatch(String),
}

/// The loop's waits: the backoff, and the stop signal that cuts any wait short.
struct Waits<'a> {
    backoff: &'a mut Backoff,
    stop: &'a Receiver<()>,
}

impl Waits<'_> {
    /// Waits after a failure (a 429's Retry-After, or the backoff). False when stopped.
    fn after(&mut self, why: &Failure<'_>) -> bool {
        let wait = match why {
            Failure::Api(ApiError::Status {
                code: 429,
                retry_after: Some(after),
                ..
            }) => (*after).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER),
            _ => self.backoff.wait(),
        };
        !self.stopped(wait)
    }

    fn stopped(&self, wait: Duration) -> bool {
        !matches!(self.stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
    }
}

/// Runs until `stop` fires (or is dropped) or the observer says to end.
pub fn list_then_watch<A: WatchApi + ?Sized>(
    api: &mut A,
    observer: &mut impl Observer<A::Object>,
    policy: Policy,
    backoff: &mut Backoff,
    stop: &Receiver<()>,
) {
    let mut waits = Waits { backoff, stop };
    let mut next = Next::Relist;
    loop {
        next = match next {
            Next::Relist => match api.list() {
                Ok((items, version)) => {
                    if policy == Policy::Resume {
                        waits.backoff.reset();
                    }
                    if !observer.listed(items, &version) {
                        return;
                    }
                    Next::Rewatch(version)
                }
                Err(e) => {
                    let why = Failure::Api(&e);
                    if !observer.failed(Phase::List, &why) || !waits.after(&why) {
                        return;
                    }
                    Next::Relist
                }
            },
            Next::Rewatch(version) => match watch(api, observer, policy, &mut waits, version) {
                Some(next) => next,
                None => return,
            },
        };
        if waits.stopped(Duration::ZERO) {
            return;
        }
    }
}

/// One watch from `version`: what comes next, or `None` when the loop must end.
fn watch<A: WatchApi + ?Sized>(
    api: &mut A,
    observer: &mut impl Observer<A::Object>,
    policy: Policy,
    waits: &mut Waits<'_>,
    mut version: String,
) -> Option<Next> {
    let retry = |version: String| match policy {
        Policy::Resume => Next::Rewatch(version),
        Policy::Relist => Next::Relist,
    };
    let events = match api.watch(&version) {
        Ok(events) => events,
        Err(e) if e.status() == Some(410) => {
            observer.expired(&version);
            return Some(Next::Relist);
        }
        Err(e) => {
            let why = Failure::Api(&e);
            let go_on = observer.failed(Phase::Watch, &why) && waits.after(&why);
            return go_on.then(|| retry(version));
        }
    };
    if policy == Policy::Relist {
        waits.backoff.reset();
    }
    for event in events {
        let go_on = match event {
            Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                o.resource_version().clone_into(&mut version);
                observer.put(o)
            }
            Ok(WatchEvent::Deleted(o)) => {
                o.resource_version().clone_into(&mut version);
                observer.deleted(o)
            }
            Ok(WatchEvent::Bookmark(v)) => {
                version = v;
                continue;
            }
            Ok(WatchEvent::Error(status)) if status.code == 410 => {
                observer.expired(&version);
                return Some(Next::Relist);
            }
            Ok(WatchEvent::Error(status)) => {
                let why = Failure::Status(&status);
                let go_on = observer.failed(Phase::Watch, &why) && waits.after(&why);
                return go_on.then_some(Next::Relist);
            }
            Err(e) => {
                let why = Failure::Api(&e);
                let go_on = observer.failed(Phase::Watch, &why) && waits.after(&why);
                return go_on.then(|| retry(version));
            }
        };
        if !go_on {
            return None;
        }
        waits.backoff.reset();
    }
    Some(Next::Rewatch(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's ERROR event with a 1 MB message (and a garbage type) is logged on every retry:
    /// its texts are cut as they are read.
    #[test]
    fn an_error_events_texts_are_cut_as_they_are_read() {
        let big = "m".repeat(1 << 20);
        let line = format!(
            "{{\"type\":\"ERROR\",\"object\":{{\"kind\":\"Status\",\"code\":500,\"reason\":\"{big}\",\"message\":\"{big}\"}}}}"
        );
        let WatchEvent::Error(status) = parse_event::<Meta>(&line).unwrap() else {
            panic!("not an ERROR event");
        };
        assert_eq!(status.code, 500);
        for text in [&status.reason, &status.message] {
            assert!(
                text.len() <= MAX_MESSAGE && text.contains(" bytes cut]… "),
                "{}",
                text.len()
            );
        }
        let e = parse_event::<Meta>(&format!("{{\"type\":\"{big}\",\"object\":{{}}}}"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.len() <= 2 * MAX_MESSAGE, "{}", e.len());
    }
}
