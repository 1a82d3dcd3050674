//! Health probes of the real binary against listeners the tests open and close on 127.0.0.1.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketType};

use crate::metrics::{metrics_addr, wait_metric};
use crate::util::{Setup, WAIT};

fn config(port: u16, probe: &str) -> String {
    format!(
        r#"
deviceMapping:
  - hosts: [node1]
    devices:
      - resourceName: example.com/widget
        instanceID: "0001"
        healthCheck: {{tcp: "127.0.0.1:{port}", {probe}}}
      - resourceName: example.com/widget
        instanceID: "0002"
"#
    )
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Waits until `resource` lists exactly `want` as (ID, health).
fn expect_health(s: &Setup, resource: &str, want: &[(&str, &str)]) {
    let want = pairs(want);
    let ok = s.kubelet.wait_until(WAIT, |k| {
        k.plugins().get(resource).and_then(|p| p.devices.clone()) == Some(want.clone())
    });
    assert!(
        ok,
        "{resource}: expected {want:?}, have {:?}\n--- spookd log ---\n{}",
        s.kubelet.plugins().get(resource).map(|p| p.devices.clone()),
        s.spookd.log()
    );
}

/// Binds `addr` again after its listener was closed; bounded retries.
fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebind {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot listen on {addr} again: {e}"),
        }
    }
}

#[test]
fn a_closed_listener_turns_unhealthy_after_the_threshold_and_reopening_heals_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let probe = "interval: 100ms, timeout: 100ms, failureThreshold: 3, successThreshold: 2";
    let s = Setup::with_args(
        "node1",
        &config(addr.port(), probe),
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let metrics = metrics_addr(&s.spookd);
    expect_health(
        &s,
        "example.com/widget",
        &[("0001", "Healthy"), ("0002", "Healthy")],
    );
    let accepted = format!("{addr} accepts connections");
    assert!(s.spookd.wait_log(&accepted, 1), "{}", s.spookd.log());

    drop(listener);
    expect_health(
        &s,
        "example.com/widget",
        &[("0001", "Unhealthy"), ("0002", "Healthy")],
    );
    // Exactly failureThreshold failures led there, after the last success.
    let log = s.spookd.log();
    let (before, _) = log.split_once("0001: Unhealthy").unwrap();
    let after_success = before.rsplit(&accepted).next().unwrap();
    let failed = format!("probe of {addr} failed");
    assert_eq!(after_success.matches(&failed).count(), 3, "{log}");
    let series = "spookd_device_healthy{resource=\"example.com/widget\",device=";
    wait_metric(&metrics, &format!("{series}\"0001\"}}"), "0");
    wait_metric(&metrics, &format!("{series}\"0002\"}}"), "1");
    wait_metric(
        &metrics,
        "spookd_devices{resource=\"example.com/widget\",health=\"Unhealthy\"}",
        "1",
    );

    // The kubelet decides: Allocate of an Unhealthy device answers, with a warning.
    let resp = s
        .kubelet
        .allocate("example.com/widget", &[&["0001"]])
        .unwrap();
    assert_eq!(resp.container_responses.len(), 1);
    assert!(s.spookd.wait_log("0001: allocated while Unhealthy", 1));

    // A reload that leaves the probe alone keeps its health.
    let mut s = s;
    let grown = config(addr.port(), probe).replace(
        "        instanceID: \"0002\"\n",
        "        instanceID: \"0002\"\n      - resourceName: example.com/widget\n        instanceID: \"0003\"\n",
    );
    s.config.write(&grown);
    expect_health(
        &s,
        "example.com/widget",
        &[
            ("0001", "Unhealthy"),
            ("0002", "Healthy"),
            ("0003", "Healthy"),
        ],
    );

    let _listener = rebind(addr);
    expect_health(
        &s,
        "example.com/widget",
        &[
            ("0001", "Healthy"),
            ("0002", "Healthy"),
            ("0003", "Healthy"),
        ],
    );
    assert!(s.spookd.log().contains("0001: Healthy again"));
    wait_metric(&metrics, &format!("{series}\"0001\"}}"), "1");
    wait_metric(&metrics, "spookd_device_health_changes_total", "2");
}

/// A listening socket whose accept queue is full: the kernel drops further SYNs, so a connect
/// neither succeeds nor fails until its timeout.
fn blackhole() -> (OwnedFd, SocketAddr, Vec<TcpStream>) {
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, &SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    rustix::net::listen(&fd, 0).unwrap();
    let addr = match rustix::net::getsockname(&fd).unwrap().try_into() {
        Ok(addr) => addr,
        Err(e) => panic!("not an inet address: {e:?}"),
    };
    let mut held = Vec::new();
    for _ in 0..64 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(conn) => held.push(conn),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (fd, addr, held),
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[test]
fn a_blackholed_port_turns_unhealthy_through_the_timeout() {
    let (_listener, addr, _held) = blackhole();
    let s = Setup::new(
        "node1",
        &config(
            addr.port(),
            "interval: 200ms, timeout: 150ms, failureThreshold: 1",
        ),
    );
    expect_health(
        &s,
        "example.com/widget",
        &[("0001", "Unhealthy"), ("0002", "Healthy")],
    );
    let log = s.spookd.log();
    assert!(
        log.contains(&format!("{addr}: no answer within 150ms")),
        "{log}"
    );
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A failing probe moved to another failing target: what /status says it last saw becomes the
/// new target's failure at its first probe. It stayed empty until the health changed, since the
/// prober reported only changes and a retuned probe keeps its health.
#[test]
fn a_failing_probe_moved_to_another_target_shows_what_it_sees_there() {
    let (a, b) = (closed_port(), closed_port());
    let probe = "interval: 100ms, timeout: 100ms, failureThreshold: 1, successThreshold: 1";
    let mut s = Setup::with_args(
        "node1",
        &config(a, probe),
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let metrics = metrics_addr(&s.spookd);
    expect_health(
        &s,
        "example.com/widget",
        &[("0001", "Unhealthy"), ("0002", "Healthy")],
    );
    let seen = || -> String {
        let (code, body) = crate::metrics::get(&metrics, "/status");
        assert_eq!(code, 200, "{body}");
        let v: serde_yaml::Value = serde_yaml::from_str(&body).unwrap();
        let device = &v["resources"][0]["devices"][0];
        device["probe"].as_str().unwrap_or_default().to_owned()
    };
    let at = |port: u16| format!("127.0.0.1:{port}: ");
    let deadline = Instant::now() + WAIT;
    while !seen().starts_with(&at(a)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen().starts_with(&at(a)), "{}", seen());
    s.config.write(&config(b, probe));
    let deadline = Instant::now() + WAIT;
    while !seen().starts_with(&at(b)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        seen().starts_with(&at(b)),
        "still {:?}\n{}",
        seen(),
        s.spookd.log()
    );
    expect_health(
        &s,
        "example.com/widget",
        &[("0001", "Unhealthy"), ("0002", "Healthy")],
    );
}
