//! Soak: many kubelet restarts and many config writes (about 40 % broken), checking that spookd
//! never applies a broken config, ends on exactly the last good one, and leaks no fds or threads.
//! The suite runs a short version; `scripts/soak` runs 100 restarts and 1,000 writes
//! (SPOOKD_SOAK_RESTARTS, SPOOKD_SOAK_WRITES).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::sim::Event;

use crate::util::{Setup, WAIT};

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (no rand crate for tests).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Waits (bounded) until the process is back to `before` (open fds, threads). gRPC core closes
/// a finished channel's fd and retires idle pool threads asynchronously, so a momentary
/// difference is normal under load; a leak never settles.
fn settles_to(pid: u32, before: (usize, usize)) -> Result<(), (usize, usize)> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = footprint(pid);
        if now == before {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(now);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Threads of gRPC core's EventEngine pool: elastic (it grows under CPU load and shrinks after a
/// long idle time) and bounded by gRPC, so they are counted apart from spookd's own threads.
const GRPC_POOL: &str = "event_engine";

/// The most pool threads accepted: gRPC sizes the pool from the core count and load.
const GRPC_POOL_MAX: usize = 16;

/// (open fds, threads other than gRPC's elastic pool) of a process.
fn footprint(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let own = threads(pid)
        .iter()
        .filter(|t| t.as_str() != GRPC_POOL)
        .count();
    (fds, own)
}

/// The names of a process's threads.
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}

fn assert_grpc_pool_bounded(pid: u32) {
    let pool = threads(pid)
        .iter()
        .filter(|t| t.as_str() == GRPC_POOL)
        .count();
    assert!(pool <= GRPC_POOL_MAX, "{pool} gRPC pool threads");
}

fn config(ids: &[String]) -> String {
    let mut s = String::from("deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/thingamajig, instanceID: \"t1\"}\n");
    for id in ids {
        s.push_str(&format!("      - {{resourceName: example.com/widget, instanceID: \"{id}\", env: {{N: \"{id}\"}}}}\n"));
    }
    s
}

const BROKEN: &[&[u8]] = &[
    b"deviceMapping: [\n",
    b"",
    b"\x00\x01\x02\xff\xfe binary junk",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: 7}\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: 0007}\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: Example.com/widget, instanceID: \"1\"}\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: \"1\", env: {A: x}}\n      - {resourceName: example.com/widget, instanceID: \"1\", env: {A: y}}\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices: []\n    typo: 1\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: \"1\", env: {ID: x}}\n",
    // Hostile input (#16): a list with every entry commented out (was: serve nothing), a NUL
    // in an env value, a CR in an instanceID, an unquoted number behind an anchor, a duration
    // that overflowed the probe thread's clock.
    b"deviceMapping:\n  # - hosts: [node1]\n  #   devices: []\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: \"1\", env: {A: \"x\\0y\"}}\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: \"w\\r1\"}\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: &x 0001}\n",
    b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: \"1\", healthCheck: {tcp: \"127.0.0.1:1\", interval: 5000000000000000h}}\n",
];

#[test]
fn kubelet_restarts_leak_nothing_and_always_reregister() {
    let restarts = count("SPOOKD_SOAK_RESTARTS", 15);
    let mut s = Setup::new("node1", &config(&["w1".into()]));
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    std::thread::sleep(Duration::from_millis(300));
    let before = footprint(s.spookd.pid());
    let mut rng = Lcg(42);
    for i in 0..restarts {
        std::thread::sleep(Duration::from_millis(rng.next(300)));
        let calls = s.kubelet.register_calls().len();
        s.kubelet.restart().unwrap();
        let ok = s.kubelet.wait_until(WAIT, |k| {
            k.register_calls().len() >= calls + 2
                && k.plugins().values().filter(|p| p.devices.is_some()).count() == 2
        });
        assert!(ok, "restart {i}: not re-registered\n{}", s.spookd.log());
    }
    // Exactly one registration per resource per kubelet start.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.kubelet.register_calls().len(), 2 * (restarts + 1));
    assert!(s.kubelet.allocate("example.com/widget", &[&["w1"]]).is_ok());
    assert_eq!(
        settles_to(s.spookd.pid(), before),
        Ok(()),
        "(fds, own threads) after {restarts} kubelet restarts; before: {before:?}"
    );
    assert_grpc_pool_bounded(s.spookd.pid());
}

#[test]
fn config_churn_never_applies_a_broken_config_and_ends_on_the_last_good_one() {
    let writes = count("SPOOKD_SOAK_WRITES", 120);
    let mut s = Setup::new("node1", &config(&["w0".into()]));
    s.expect_devices("example.com/widget", &["w0"]);
    let (tx, events) = crossbeam_channel::unbounded();
    s.kubelet.subscribe(tx);
    std::thread::sleep(Duration::from_millis(200));
    let before = footprint(s.spookd.pid());
    let mut rng = Lcg(7);
    // Every widget list a valid config ever had: a pushed list must be one of them.
    let mut valid: BTreeSet<Vec<String>> = BTreeSet::from([vec!["w0".to_string()]]);
    let mut last_good = vec!["w0".to_string()];
    for i in 0..writes {
        if rng.next(100) < 40 {
            s.config
                .write_bytes(BROKEN[rng.next(BROKEN.len() as u64) as usize]);
        } else {
            let mut ids: Vec<String> = (0..1 + rng.next(4))
                .map(|_| format!("w{}", rng.next(20)))
                .collect();
            ids.sort();
            ids.dedup();
            s.config.write(&config(&ids));
            valid.insert(ids.clone());
            last_good = ids;
        }
        // About a minute for 1,000 writes at the full count.
        std::thread::sleep(Duration::from_millis(if i % 10 == 0 { 60 } else { 30 }));
    }
    let want: Vec<&str> = last_good.iter().map(String::as_str).collect();
    s.expect_devices("example.com/widget", &want);
    for event in events.try_iter() {
        if let Event::Devices { resource, devices } = event {
            let ids: Vec<String> = devices.into_iter().map(|(id, _)| id).collect();
            match resource.as_str() {
                "example.com/widget" => {
                    assert!(valid.contains(&ids), "pushed {ids:?}, never a valid config")
                }
                other => assert_eq!(
                    (other, ids),
                    ("example.com/thingamajig", vec!["t1".to_string()])
                ),
            }
        }
    }
    // Still one registration per resource: churn never restarted a server.
    assert_eq!(s.kubelet.register_calls().len(), 2);
    assert_eq!(
        settles_to(s.spookd.pid(), before),
        Ok(()),
        "(fds, own threads) after {writes} writes; before: {before:?}"
    );
    assert_grpc_pool_bounded(s.spookd.pid());
}
