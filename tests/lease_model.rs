//! A model of the Lease protocol (`spookd::leases::protocol`) under concurrency: several nodes, each a thread
//! running the real `acquire`, `renew` and `release` against one in-memory Lease store with the
//! API server's optimistic concurrency, random delays around every call, calls that fail, calls
//! whose response is lost after they took effect, node crashes and restarts (fresh memory, the
//! Leases left behind). A checker asserts that no two nodes ever count the same device as theirs
//! at the same instant: a node's claim lasts from a won acquisition or renewal until that call's
//! start plus the Lease duration minus a margin (what the daemon must honour), or until release.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spookd::kube::client::ApiError;
use spookd::leases::protocol::{acquire, release, renew, Acquired, Lease, LeaseApi, Observations};

const NODES: usize = 5;
const DEVICES: usize = 3;
/// How much longer every duration of the model is: under emulation (scripts/test-arm64) every
/// thread runs several times slower and may pause longer than the margin between a call and its
/// bookkeeping, which no Lease protocol survives; so the Lease duration, the margin, the delays
/// injected around calls and the run all take ten times longer there: the same ratios, the same
/// number of Lease lifetimes (docs/development.md, arm64 under emulation).
fn scale() -> u32 {
    if crate::util::runner().is_some() {
        10
    } else {
        1
    }
}

/// The Lease duration, the margin before it a holder stops counting the device as its own, and
/// how long the model runs.
fn times() -> (Duration, Duration, Duration) {
    let scale = u64::from(scale());
    (
        Duration::from_millis(30 * scale),
        Duration::from_millis(3 * scale),
        Duration::from_secs(4 * scale),
    )
}

fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn chance(percent: u64) -> bool {
    random() % 100 < percent
}

fn status(code: u16) -> ApiError {
    ApiError::Status {
        url: "model".into(),
        code,
        retry_after: None,
        body: String::new(),
    }
}

#[derive(Default)]
struct Inner {
    leases: BTreeMap<String, Lease>,
    version: u64,
}

/// The store every node talks to, each call atomic, with faults around it.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<Inner>>);

impl Store {
    /// Runs `op` atomically between random delays; sometimes fails before it, sometimes loses the
    /// answer after it took effect.
    fn call<T>(&self, op: impl FnOnce(&mut Inner) -> Result<T, ApiError>) -> Result<T, ApiError> {
        std::thread::sleep(Duration::from_micros(random() % 400) * scale());
        if chance(2) {
            return Err(status(500));
        }
        let result = op(&mut self.0.lock().unwrap());
        std::thread::sleep(Duration::from_micros(random() % 400) * scale());
        if result.is_ok() && chance(2) {
            return Err(status(504));
        }
        result
    }
}

impl LeaseApi for Store {
    fn create(&mut self, name: &str, holder: &str, d: Duration) -> Result<Lease, ApiError> {
        self.call(|st| {
            if st.leases.contains_key(name) {
                return Err(status(409));
            }
            st.version += 1;
            let lease = Lease {
                name: name.into(),
                holder: Some(holder.into()),
                duration: d,
                resource_version: st.version.to_string(),
                ..Lease::default()
            };
            st.leases.insert(name.into(), lease.clone());
            Ok(lease)
        })
    }
    fn get(&mut self, name: &str) -> Result<Option<Lease>, ApiError> {
        self.call(|st| Ok(st.leases.get(name).cloned()))
    }
    fn update(&mut self, lease: &Lease, holder: &str) -> Result<Lease, ApiError> {
        self.call(|st| {
            st.version += 1;
            let version = st.version.to_string();
            let current = st.leases.get_mut(&lease.name).ok_or_else(|| status(404))?;
            if current.resource_version != lease.resource_version {
                return Err(status(409));
            }
            current.holder = Some(holder.into());
            current.resource_version = version;
            Ok(current.clone())
        })
    }
    fn list(&mut self) -> Result<Vec<Lease>, ApiError> {
        self.call(|st| Ok(st.leases.values().cloned().collect()))
    }
    fn delete(&mut self, lease: &Lease) -> Result<(), ApiError> {
        self.call(|st| {
            let current = st.leases.get(&lease.name).ok_or_else(|| status(404))?;
            if current.resource_version != lease.resource_version {
                return Err(status(409));
            }
            st.leases.remove(&lease.name);
            Ok(())
        })
    }
}

/// Who counts each device as theirs, and until when.
#[derive(Default)]
struct Checker {
    claims: Mutex<BTreeMap<String, BTreeMap<usize, Instant>>>,
    violations: AtomicU64,
}

impl Checker {
    /// `node` counts `device` as its own until `until`; nobody else may at this instant.
    fn claim(&self, device: &str, node: usize, until: Instant) {
        let now = Instant::now();
        let mut claims = self.claims.lock().unwrap();
        let holders = claims.entry(device.to_owned()).or_default();
        for (other, other_until) in holders.iter() {
            if *other != node && *other_until > now {
                eprintln!("VIOLATION: {device} held by {node} and {other}");
                self.violations.fetch_add(1, Ordering::SeqCst);
            }
        }
        holders.insert(node, until);
    }

    fn drop_claim(&self, device: &str, node: usize) {
        if let Some(h) = self.claims.lock().unwrap().get_mut(device) {
            h.remove(&node);
        }
    }
}

#[derive(Default)]
struct Counts {
    attempts: AtomicU64,
    won: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    takeovers: AtomicU64,
    lost: AtomicU64,
    crashes: AtomicU64,
}

fn node(id: usize, store: Store, checker: Arc<Checker>, counts: Arc<Counts>, end: Instant) {
    let (d, margin, _) = times();
    let me = format!("node-{id}");
    let mut api = store;
    let mut seen = Observations::default();
    // Devices this node holds: the Lease version and when the call that won it started.
    let mut held: BTreeMap<String, (Lease, Instant)> = BTreeMap::new();
    while Instant::now() < end {
        let device = format!("dev-{}", random() % DEVICES as u64);
        if chance(1) {
            // Crash: everything forgotten, Leases left behind to expire; back after a pause.
            counts.crashes.fetch_add(1, Ordering::SeqCst);
            held.clear();
            seen = Observations::default();
            std::thread::sleep(d / 2);
            continue;
        }
        // Renew what is held (the daemon renews every duration / 3).
        let mut renewed = BTreeMap::new();
        for (name, (lease, since)) in std::mem::take(&mut held) {
            if since.elapsed() < d / 3 {
                renewed.insert(name, (lease, since));
                continue;
            }
            let start = Instant::now();
            match renew(&mut api, &lease, &me) {
                Ok(Some(lease)) => {
                    checker.claim(&name, id, start + d - margin);
                    renewed.insert(name, (lease, start));
                }
                Ok(None) => {
                    counts.lost.fetch_add(1, Ordering::SeqCst);
                    checker.drop_claim(&name, id);
                }
                // An outage: the claim runs out by itself; try again next turn.
                Err(_) => {
                    renewed.insert(name, (lease, since));
                }
            }
        }
        held = renewed;
        if let Some((lease, _)) = held.get(&device).cloned() {
            if chance(30) {
                checker.drop_claim(&device, id);
                held.remove(&device);
                let _ = release(&mut api, &lease, &me);
            }
            continue;
        }
        counts.attempts.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        let previous = api.0.lock().unwrap().leases.get(&device).cloned();
        match acquire(&mut api, &mut seen, &device, &me, d, start) {
            Ok(Acquired::Won(lease)) => {
                counts.won.fetch_add(1, Ordering::SeqCst);
                if previous.and_then(|l| l.holder).is_some_and(|h| h != me) {
                    counts.takeovers.fetch_add(1, Ordering::SeqCst);
                }
                checker.claim(&device, id, start + d - margin);
                held.insert(device, (lease, start));
            }
            Ok(Acquired::HeldBy(_)) => {
                counts.refused.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[test]
fn no_device_is_ever_held_by_two_nodes() {
    let store = Store::default();
    let checker = Arc::new(Checker::default());
    let counts = Arc::new(Counts::default());
    let end = Instant::now() + times().2;
    let threads: Vec<_> = (0..NODES)
        .map(|id| {
            let (store, checker, counts) = (store.clone(), checker.clone(), counts.clone());
            std::thread::spawn(move || node(id, store, checker, counts, end))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = |c: &AtomicU64| c.load(Ordering::SeqCst);
    eprintln!(
        "model: {} acquisitions ({} won, {} takeovers, {} refused, {} errors), {} lost at \
         renewal, {} crashes",
        n(&counts.attempts),
        n(&counts.won),
        n(&counts.takeovers),
        n(&counts.refused),
        n(&counts.errors),
        n(&counts.lost),
        n(&counts.crashes)
    );
    assert_eq!(n(&checker.violations), 0, "a device was held twice");
    // The run must have exercised the protocol, not idled.
    assert!(n(&counts.attempts) >= 2000, "too few rounds");
    assert!(n(&counts.won) >= 100 && n(&counts.refused) >= 100);
    assert!(
        n(&counts.takeovers) >= 10,
        "no expired Lease was taken over"
    );
    assert!(n(&counts.crashes) >= 10);
}
