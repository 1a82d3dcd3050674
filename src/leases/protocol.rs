//! Exclusive access across hosts: the Lease protocol (the `spookd-lease` thread in
//! [`crate::leases`] runs it).
//!
//! A device mapped to several hosts gets one `coordination.k8s.io/v1` Lease, named by
//! [`lease_name`]; `holderIdentity` is the node that may hand it to a container. The protocol
//! ([`acquire`], [`renew`], [`release`]) uses only optimistic concurrency, so races between
//! nodes resolve to one winner:
//!
//! - **acquire**: create the Lease held by us. If it exists (409), read it: free (no holder) or
//!   expired → replace it with us as holder, naming the `resourceVersion` read (a 409 means another
//!   node won); ours already → renew; held by a live other → refused, naming the holder.
//! - **expired** is judged by our own monotonic clock, never by comparing wall clocks across nodes:
//!   a Lease is expired when *we* have seen the same `resourceVersion` unchanged for its
//!   `leaseDurationSeconds` ([`Observations`]). A version first seen now is live for a whole
//!   duration. Every renewal makes a new version, so a holder that renews is never taken over.
//! - **renew**: replace the Lease with the version we hold; a 409 means it was taken over (we failed
//!   to renew in time) and the device is lost.
//! - **release**: delete with a `resourceVersion` precondition; if it moved, re-read and delete
//!   only while we still hold it.
//!
//! Safety (checked by the model in `tests/lease_model.rs` under random delays, concurrent
//! acquisitions and crashes): a holder counts its hold valid until its last successful renewal's
//! *start* plus the duration minus a margin; a taker's first sight of that renewal's version comes
//! after the renewal took effect, and it waits a whole duration from there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::config::{InstanceId, ResourceName};
use crate::hash::stable_hash as fnv1a;
use crate::kube::client::{ApiError, Client, Connection, Lines, Method};
use crate::kube::watch::{self, Versioned, WatchEvent};
use crate::time::micro_time;

/// Label on every Lease spookd makes, to list and watch them.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "spookd");

/// Longest Lease name spookd makes (a DNS label, so it also fits anywhere a name goes).
const MAX_NAME: usize = 63;

/// The Lease name of a device: `spookd-<resource>-<instanceID>`, lower-cased with `/` as `.` and
/// anything else outside `[a-z0-9.-]` as `-`. When that changed a character that was not
/// upper-case or `/` (so two devices could map to one name), or the name would be longer than 63,
/// it is cut and a hash of the exact resource and instanceID is appended.
pub fn lease_name(resource: &ResourceName, id: &InstanceId) -> String {
    let raw = format!("spookd-{}-{}", resource.as_str(), id.as_str());
    let mut lossy = false;
    let mut name = String::with_capacity(raw.len());
    for c in raw.chars() {
        let mapped = match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            '/' => '.',
            // "A" and "a" are different instanceIDs: folding case loses information too.
            'A'..='Z' => {
                lossy = true;
                c.to_ascii_lowercase()
            }
            _ => {
                lossy = true;
                '-'
            }
        };
        let separator = matches!(mapped, '-' | '.');
        if separator && name.ends_with(['-', '.']) {
            // "..", ".-" and "-." are not DNS-safe: one '-' stands for the run.
            lossy = true;
            name.pop();
            name.push('-');
            continue;
        }
        name.push(mapped);
    }
    while name.ends_with(['-', '.']) {
        lossy = true;
        name.pop();
    }
    if lossy || name.len() > MAX_NAME {
        let hash = fnv1a(&[resource.as_str().as_bytes(), b"\0", id.as_str().as_bytes()]);
        name.truncate(MAX_NAME - 17);
        while name.ends_with(['-', '.']) {
            name.pop();
        }
        let _ = write!(name, "-{hash:016x}");
    }
    name
}

/// A Lease as spookd reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    /// `None` (or empty) when released.
    pub holder: Option<String>,
    pub duration: Duration,
    pub resource_version: String,
    /// `spec.acquireTime` as written (informational; kept across renewals).
    pub acquire_time: Option<String>,
    /// `spec.leaseTransitions`: how often the holder changed.
    pub transitions: u32,
}

/// Lease calls; the real one speaks HTTP, the model's is in memory. A version conflict or an
/// existing Lease is [`ApiError::Status`] 409; a missing one 404.
pub trait LeaseApi {
    /// Creates Lease `name` held by `holder`.
    fn create(&mut self, name: &str, holder: &str, duration: Duration) -> Result<Lease, ApiError>;
    /// Reads Lease `name`; `None` if it does not exist.
    fn get(&mut self, name: &str) -> Result<Option<Lease>, ApiError>;
    /// Replaces `lease` (at its version) with `holder` as holder and a fresh renew time.
    fn update(&mut self, lease: &Lease, holder: &str) -> Result<Lease, ApiError>;
    /// Deletes `lease` if it is still at its version.
    fn delete(&mut self, lease: &Lease) -> Result<(), ApiError>;
    /// Every Lease spookd made in the namespace (by the [`MANAGED_BY`] label).
    fn list(&mut self) -> Result<Vec<Lease>, ApiError>;
}

/// When this node first saw each Lease version: a version unchanged for the Lease's duration, by
/// our own clock, is expired.
#[derive(Debug, Default)]
pub struct Observations(BTreeMap<String, (String, Instant)>);

impl Observations {
    /// Notes `lease` as seen at `now` (a version already seen keeps its first sighting).
    pub fn see(&mut self, lease: &Lease, now: Instant) {
        match self.0.get(&lease.name) {
            Some((version, _)) if *version == lease.resource_version => {}
            _ => {
                self.0
                    .insert(lease.name.clone(), (lease.resource_version.clone(), now));
            }
        }
    }

    /// Forgets a deleted Lease.
    pub fn forget(&mut self, name: &str) {
        self.0.remove(name);
    }

    /// Whether `lease` (seen before, or now) has stayed at its version for its whole duration.
    pub fn expired(&mut self, lease: &Lease, now: Instant) -> bool {
        self.see(lease, now);
        self.0
            .get(&lease.name)
            .is_some_and(|(_, first)| now.saturating_duration_since(*first) >= lease.duration)
    }
}

/// How an acquisition ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// We hold it now, at this version.
    Won(Lease),
    /// Another node holds it (or won the race just now).
    HeldBy(String),
}

fn conflict(e: &ApiError) -> bool {
    e.status() == Some(409)
}

/// Takes Lease `name` for `me` if it is free, expired or already ours.
pub fn acquire(
    api: &mut dyn LeaseApi,
    seen: &mut Observations,
    name: &str,
    me: &str,
    duration: Duration,
    now: Instant,
) -> Result<Acquired, ApiError> {
    match api.create(name, me, duration) {
        Ok(lease) => {
            seen.see(&lease, now);
            return Ok(Acquired::Won(lease));
        }
        Err(e) if !conflict(&e) => return Err(e),
        Err(_) => {}
    }
    let Some(current) = api.get(name)? else {
        // Released between our create and our read: one more try, and a lost race is a loss.
        return match api.create(name, me, duration) {
            Ok(lease) => Ok(Acquired::Won(lease)),
            Err(e) if conflict(&e) => holder_now(api, name),
            Err(e) => Err(e),
        };
    };
    // Free, ours, or expired: take it at the version read. Held by a live other: refused.
    if let Some(holder) = current.holder.as_deref() {
        if !holder.is_empty() && holder != me && !seen.expired(&current, now) {
            return Ok(Acquired::HeldBy(holder.to_owned()));
        }
    }
    match api.update(&current, me) {
        Ok(lease) => {
            seen.see(&lease, now);
            Ok(Acquired::Won(lease))
        }
        Err(e) if conflict(&e) => holder_now(api, name),
        Err(e) => Err(e),
    }
}

/// After a lost race: who holds it now.
fn holder_now(api: &mut dyn LeaseApi, name: &str) -> Result<Acquired, ApiError> {
    let holder = api
        .get(name)?
        .and_then(|l| l.holder)
        .unwrap_or_else(|| "another node".to_owned());
    Ok(Acquired::HeldBy(holder))
}

/// Renews a Lease we hold; `Ok(None)` when it was taken over (we did not renew in time).
pub fn renew(api: &mut dyn LeaseApi, held: &Lease, me: &str) -> Result<Option<Lease>, ApiError> {
    match api.update(held, me) {
        Ok(lease) => Ok(Some(lease)),
        Err(e) if conflict(&e) || e.status() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes a Lease we hold; if it moved meanwhile, deletes it only while it is still ours.
pub fn release(api: &mut dyn LeaseApi, held: &Lease, me: &str) -> Result<(), ApiError> {
    match api.delete(held) {
        Ok(()) => Ok(()),
        Err(e) if e.status() == Some(404) => Ok(()),
        Err(e) if conflict(&e) => match api.get(&held.name)? {
            Some(current) if current.holder.as_deref() == Some(me) => match api.delete(&current) {
                Err(e) if e.status() != Some(404) => Err(e),
                _ => Ok(()),
            },
            _ => Ok(()),
        },
        Err(e) => Err(e),
    }
}

/// The Leases of one namespace over HTTPS (`coordination.k8s.io/v1`).
pub struct HttpLeaseApi {
    client: Client,
    /// `https://server/apis/coordination.k8s.io/v1/namespaces/NS/leases`
    base: String,
    namespace: String,
}

/// Largest Lease read.
const MAX_LEASE: u64 = 64 << 10;
/// Largest Lease list read (thousands of shared devices).
const MAX_LEASE_LIST: u64 = 32 << 20;

#[derive(Deserialize)]
struct LeaseList {
    #[serde(default)]
    metadata: LeaseMeta,
    #[serde(default)]
    items: Vec<LeaseJson>,
}

/// One line of a Lease watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Created or changed.
    Put(Lease),
    /// Deleted: its name, and the version of the deletion.
    Deleted(String, String),
    /// Nothing changed up to this version.
    Bookmark(String),
    /// The version watched from is too old (410): list again.
    Expired,
    /// Another error status from the server.
    Failed(String),
}

impl From<WatchEvent<Lease>> for LeaseEvent {
    fn from(e: WatchEvent<Lease>) -> LeaseEvent {
        match e {
            WatchEvent::Added(lease) | WatchEvent::Modified(lease) => LeaseEvent::Put(lease),
            WatchEvent::Deleted(lease) => LeaseEvent::Deleted(lease.name, lease.resource_version),
            WatchEvent::Bookmark(version) => LeaseEvent::Bookmark(version),
            WatchEvent::Error(status) if status.code == 410 => LeaseEvent::Expired,
            WatchEvent::Error(status) => {
                LeaseEvent::Failed(format!("{} {}", status.code, status.message))
            }
        }
    }
}

/// Parses one line of a Lease watch (the one watch-event parser, [`watch::parse_event`]).
pub fn parse_lease_watch_event(line: &str) -> Result<WatchEvent<Lease>, serde_yaml::Error> {
    watch::parse_event::<LeaseJson>(line).map(|e| e.map(Lease::from))
}

impl Versioned for Lease {
    fn resource_version(&self) -> &str {
        &self.resource_version
    }
}

#[derive(Deserialize)]
struct LeaseJson {
    #[serde(default)]
    metadata: LeaseMeta,
    #[serde(default)]
    spec: LeaseSpec,
}

#[derive(Default, Deserialize)]
struct LeaseMeta {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseSpec {
    #[serde(default)]
    holder_identity: Option<String>,
    #[serde(default)]
    lease_duration_seconds: Option<u64>,
    #[serde(default)]
    acquire_time: Option<String>,
    #[serde(default)]
    lease_transitions: Option<u32>,
}

impl From<LeaseJson> for Lease {
    fn from(j: LeaseJson) -> Lease {
        Lease {
            name: j.metadata.name,
            holder: j.spec.holder_identity.filter(|h| !h.is_empty()),
            duration: Duration::from_secs(j.spec.lease_duration_seconds.unwrap_or(0)),
            resource_version: j.metadata.resource_version,
            acquire_time: j.spec.acquire_time,
            transitions: j.spec.lease_transitions.unwrap_or(0),
        }
    }
}

impl HttpLeaseApi {
    pub fn new(conn: Connection, namespace: &str) -> Self {
        let base = format!(
            "{}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
            conn.server
        );
        HttpLeaseApi {
            client: Client::new(conn),
            base,
            namespace: namespace.to_owned(),
        }
    }

    fn selector(&self) -> String {
        format!(
            "{}?labelSelector={}%3D{}",
            self.base,
            MANAGED_BY.0.replace('/', "%2F"),
            MANAGED_BY.1
        )
    }

    /// spookd's Leases and the list's resourceVersion, to watch from.
    pub fn list_at(&mut self) -> Result<(Vec<Lease>, String), ApiError> {
        let url = self.selector();
        let response = self
            .client
            .get(&url, crate::kube::client::REQUEST_TIMEOUT)?;
        let body = Client::read_body(&url, response, MAX_LEASE_LIST)?;
        let list: LeaseList = serde_yaml::from_slice(&body).map_err(|source| ApiError::Decode {
            url: url.clone(),
            source,
        })?;
        let leases = list.items.into_iter().map(Lease::from).collect();
        Ok((leases, list.metadata.resource_version))
    }

    /// Watches spookd's Leases from `version` for up to `timeout` (a silent connection is
    /// dropped after that plus a quarter), as [`LeaseEvent`]s.
    pub fn watch(
        &mut self,
        version: &str,
        timeout: Duration,
    ) -> Result<impl Iterator<Item = Result<LeaseEvent, ApiError>>, ApiError> {
        Ok(self
            .watch_events(version, timeout)?
            .map(|e| e.map(LeaseEvent::from)))
    }

    /// The same watch, as the list-then-watch loop reads it.
    pub fn watch_events(
        &mut self,
        version: &str,
        timeout: Duration,
    ) -> Result<Lines<Box<dyn std::io::Read + Send>, WatchEvent<Lease>>, ApiError> {
        let url = format!(
            "{}&watch=true&allowWatchBookmarks=true&timeoutSeconds={}&resourceVersion={version}",
            self.selector(),
            timeout.as_secs().max(1)
        );
        let read_timeout =
            (timeout.saturating_add(timeout / 4)).saturating_add(Duration::from_secs(1));
        let response = self.client.watch(&url, read_timeout)?;
        let reader: Box<dyn std::io::Read + Send> = Box::new(response.into_body().into_reader());
        Ok(Lines::new(reader, url, parse_lease_watch_event))
    }

    fn decode(url: &str, response: ureq::http::Response<ureq::Body>) -> Result<Lease, ApiError> {
        let body = Client::read_body(url, response, MAX_LEASE)?;
        let json: LeaseJson = serde_yaml::from_slice(&body).map_err(|source| ApiError::Decode {
            url: url.to_owned(),
            source,
        })?;
        Ok(json.into())
    }

    /// The whole Lease object. Names, holders (node names) and versions need no JSON escaping:
    /// they are DNS names and decimal numbers.
    fn body(&self, lease: &Lease, holder: &str, acquire_time: &str, now: &str) -> String {
        let version = if lease.resource_version.is_empty() {
            String::new()
        } else {
            format!(r#","resourceVersion":"{}""#, lease.resource_version)
        };
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{}","namespace":"{}","labels":{{"{}":"{}"}}{version}}},"spec":{{"holderIdentity":"{holder}","leaseDurationSeconds":{},"acquireTime":"{acquire_time}","renewTime":"{now}","leaseTransitions":{}}}}}"#,
            lease.name,
            self.namespace,
            MANAGED_BY.0,
            MANAGED_BY.1,
            lease.duration.as_secs().max(1),
            lease.transitions
        )
    }
}

impl LeaseApi for HttpLeaseApi {
    fn create(&mut self, name: &str, holder: &str, duration: Duration) -> Result<Lease, ApiError> {
        let now = micro_time(SystemTime::now());
        let lease = Lease {
            name: name.to_owned(),
            duration,
            ..Lease::default()
        };
        let body = self.body(&lease, holder, &now, &now);
        let response = self
            .client
            .send(Method::Post, &self.base, "application/json", &body)?;
        Self::decode(&self.base, response)
    }

    fn get(&mut self, name: &str) -> Result<Option<Lease>, ApiError> {
        let url = format!("{}/{name}", self.base);
        (self.client.get_found(&url)?)
            .map(|response| Self::decode(&url, response))
            .transpose()
    }

    fn update(&mut self, lease: &Lease, holder: &str) -> Result<Lease, ApiError> {
        let now = micro_time(SystemTime::now());
        let mut next = lease.clone();
        let acquire_time = if lease.holder.as_deref() == Some(holder) {
            lease.acquire_time.clone().unwrap_or_else(|| now.clone())
        } else {
            next.transitions += 1;
            now.clone()
        };
        let url = format!("{}/{}", self.base, lease.name);
        let body = self.body(&next, holder, &acquire_time, &now);
        let response = self
            .client
            .send(Method::Put, &url, "application/json", &body)?;
        Self::decode(&url, response)
    }

    fn list(&mut self) -> Result<Vec<Lease>, ApiError> {
        self.list_at().map(|(leases, _)| leases)
    }

    fn delete(&mut self, lease: &Lease) -> Result<(), ApiError> {
        let url = format!("{}/{}", self.base, lease.name);
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"DeleteOptions","preconditions":{{"resourceVersion":"{}"}}}}"#,
            lease.resource_version
        );
        self.client
            .send(Method::Delete, &url, "application/json", &body)
            .map(drop)
    }
}

/// Leases in memory with the API server's optimistic concurrency, for the unit tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryLeases {
    pub leases: BTreeMap<String, Lease>,
    version: u64,
}

#[cfg(test)]
fn memory_status(code: u16) -> ApiError {
    ApiError::Status {
        url: "memory".into(),
        code,
        retry_after: None,
        body: String::new(),
    }
}

#[cfg(test)]
impl LeaseApi for MemoryLeases {
    fn create(&mut self, name: &str, holder: &str, d: Duration) -> Result<Lease, ApiError> {
        if self.leases.contains_key(name) {
            return Err(memory_status(409));
        }
        self.version += 1;
        let lease = Lease {
            name: name.into(),
            holder: Some(holder.into()),
            duration: d,
            resource_version: self.version.to_string(),
            ..Lease::default()
        };
        self.leases.insert(name.into(), lease.clone());
        Ok(lease)
    }
    fn get(&mut self, name: &str) -> Result<Option<Lease>, ApiError> {
        Ok(self.leases.get(name).cloned())
    }
    fn update(&mut self, lease: &Lease, holder: &str) -> Result<Lease, ApiError> {
        let current = self
            .leases
            .get_mut(&lease.name)
            .ok_or_else(|| memory_status(404))?;
        if current.resource_version != lease.resource_version {
            return Err(memory_status(409));
        }
        self.version += 1;
        current.holder = Some(holder.into());
        current.resource_version = self.version.to_string();
        Ok(current.clone())
    }
    fn delete(&mut self, lease: &Lease) -> Result<(), ApiError> {
        let current = self
            .leases
            .get(&lease.name)
            .ok_or_else(|| memory_status(404))?;
        if current.resource_version != lease.resource_version {
            return Err(memory_status(409));
        }
        self.leases.remove(&lease.name);
        Ok(())
    }
    fn list(&mut self) -> Result<Vec<Lease>, ApiError> {
        Ok(self.leases.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(r: &str, id: &str) -> String {
        lease_name(
            &ResourceName::try_from(r.to_owned()).unwrap(),
            &InstanceId::try_from(id.to_owned()).unwrap(),
        )
    }

    fn dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && !s.contains("..")
            && !s.contains(".-")
            && !s.contains("-.")
    }

    #[test]
    fn lease_names_are_readable_when_they_can_be_and_always_dns_safe_and_distinct() {
        assert_eq!(
            name("skao.int/oscilloscope", "0001"),
            "spookd-skao.int.oscilloscope-0001"
        );
        // Folding case or replacing characters could merge two devices: a hash tells them apart.
        let a = name("a.io/x", "Dev_1");
        let b = name("a.io/x", "dev-1");
        assert_eq!(b, "spookd-a.io.x-dev-1");
        assert!(
            a.starts_with("spookd-a.io.x-dev-1-") && a.len() == "spookd-a.io.x-dev-1".len() + 17
        );
        assert_ne!(a, b);
        let long = name(
            "a-very-long-domain.example.com/a-very-long-resource-name",
            "0001",
        );
        assert!(long.len() <= 63, "{long}");
        let names = [
            a,
            b,
            long,
            name("a.io/x", "ends."),
            name("a.io/x", "é ü"),
            name("a.io/x", "..."),
            name("a.io/x", &"z".repeat(63)),
            name("a.io/x", &format!("{}1", "z".repeat(62))),
        ];
        for n in &names {
            assert!(dns_label(n), "{n}");
        }
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
        // Stable: the same on every node, in every build.
        assert_eq!(name("a.io/x", "Dev_1"), names[0]);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }

    const D: Duration = Duration::from_secs(40);

    #[test]
    fn a_live_lease_is_refused_an_expired_one_taken_and_ours_renewed() {
        let t0 = Instant::now();
        let mut api = MemoryLeases::default();
        let (mut a_seen, mut b_seen) = (Observations::default(), Observations::default());
        let won = acquire(&mut api, &mut a_seen, "l", "node-a", D, t0).unwrap();
        let Acquired::Won(held) = won else { panic!() };
        // B sees it for the first time: live for a whole duration from now, whatever its times.
        let t = t0 + Duration::from_secs(100);
        assert_eq!(
            acquire(&mut api, &mut b_seen, "l", "node-b", D, t).unwrap(),
            Acquired::HeldBy("node-a".into())
        );
        // A renews before B's wait is over: a new version, B starts waiting again.
        let held = renew(&mut api, &held, "node-a").unwrap().unwrap();
        let t = t + D - Duration::from_secs(1);
        assert_eq!(
            acquire(&mut api, &mut b_seen, "l", "node-b", D, t).unwrap(),
            Acquired::HeldBy("node-a".into())
        );
        // A stops renewing: a whole duration after B first saw that version, B takes it over.
        let t = t + D;
        let Acquired::Won(b_held) = acquire(&mut api, &mut b_seen, "l", "node-b", D, t).unwrap()
        else {
            panic!()
        };
        assert_eq!(b_held.holder.as_deref(), Some("node-b"));
        // A's renewal of the old version fails: it knows it lost the device.
        assert_eq!(renew(&mut api, &held, "node-a").unwrap(), None);
        // B asks again (a restart, say): its own Lease is renewed, not refused.
        let again = acquire(&mut api, &mut b_seen, "l", "node-b", D, t).unwrap();
        assert!(matches!(again, Acquired::Won(l) if l.resource_version != b_held.resource_version));
    }

    #[test]
    fn release_deletes_only_our_own_lease() {
        let t0 = Instant::now();
        let mut api = MemoryLeases::default();
        let mut seen = Observations::default();
        let Acquired::Won(held) = acquire(&mut api, &mut seen, "l", "a", D, t0).unwrap() else {
            panic!()
        };
        // Renewed meanwhile (our own newer version): the stale release still deletes it.
        renew(&mut api, &held, "a").unwrap().unwrap();
        release(&mut api, &held, "a").unwrap();
        assert!(api.leases.is_empty());
        // Released: anyone may create it again at once.
        let mut other = Observations::default();
        let Acquired::Won(b) = acquire(&mut api, &mut other, "l", "b", D, t0).unwrap() else {
            panic!()
        };
        // A release by a node that no longer holds it leaves the new holder alone.
        release(&mut api, &held, "a").unwrap();
        assert_eq!(api.leases["l"], b);
        // A Lease whose holder released it (no holder) is free at once.
        api.leases.get_mut("l").unwrap().holder = None;
        let got = acquire(&mut api, &mut Observations::default(), "l", "c", D, t0).unwrap();
        assert!(matches!(got, Acquired::Won(l) if l.holder.as_deref() == Some("c")));
    }
}
