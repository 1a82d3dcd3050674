//! /healthz, /readyz and /metrics of the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::{Setup, Spookd, SEED, WAIT};

fn start() -> (Setup, String) {
    let s = Setup::with_args("node1", SEED, &["--metrics-addr", "127.0.0.1:0"]);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    let addr = metrics_addr(&s.spookd);
    (s, addr)
}

/// The address a spookd started with `--metrics-addr 127.0.0.1:0` serves on, from its log.
pub(crate) fn metrics_addr(spookd: &Spookd) -> String {
    assert!(
        spookd.wait_log("/metrics on http://", 1),
        "{}",
        spookd.log()
    );
    spookd
        .log()
        .split("/metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned()
}

/// Sends raw bytes, returns (status, body).
fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(request).unwrap();
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

pub(crate) fn get(addr: &str, path: &str) -> (u16, String) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: spookd\r\n\r\n").as_bytes(),
    )
}

/// The value of the sample line starting with `series` in /metrics.
pub(crate) fn metric(addr: &str, series: &str) -> Option<String> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(str::to_owned)
}

pub(crate) fn wait_metric(addr: &str, series: &str, value: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if metric(addr, series).as_deref() == Some(value) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{series} never became {value}; now {:?}",
        metric(addr, series)
    );
}

#[test]
fn metrics_and_health_follow_events() {
    let (mut s, addr) = start();
    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(&addr, "/readyz"), (200, "ok\n".to_owned()));
    let (_, body) = get(&addr, "/metrics");
    assert!(body.starts_with("# HELP spookd_build_info"), "{body}");
    let w = "resource=\"example.com/widget\"";
    assert_eq!(
        metric(
            &addr,
            &format!(
                "spookd_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&addr, &format!("spookd_devices{{{w},health=\"Healthy\"}}")).as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(
            &addr,
            &format!("spookd_devices{{{w},health=\"Unhealthy\"}}")
        )
        .as_deref(),
        Some("0")
    );
    assert_eq!(
        metric(&addr, &format!("spookd_resource_registered{{{w}}}")).as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&addr, "spookd_config_reloads_total{result=\"ok\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&addr, "spookd_config_reloads_total{result=\"error\"}").as_deref(),
        Some("0")
    );
    let t0: f64 = metric(&addr, "spookd_config_last_reload_success_timestamp_seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!(t0 > 1.7e9, "{t0}");
    assert_eq!(
        metric(
            &addr,
            &format!("spookd_kubelet_registrations_total{{{w},result=\"ok\"}}")
        )
        .as_deref(),
        Some("1")
    );

    // Allocations, by result.
    s.kubelet
        .allocate("example.com/widget", &[&["0001"]])
        .unwrap();
    assert!(s
        .kubelet
        .allocate("example.com/widget", &[&["nope"]])
        .is_err());
    assert_eq!(
        metric(
            &addr,
            &format!("spookd_allocations_total{{{w},result=\"ok\"}}")
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(
            &addr,
            &format!("spookd_allocations_total{{{w},result=\"error\"}}")
        )
        .as_deref(),
        Some("1")
    );

    // A bad config counts as an error; a good one as ok and moves the timestamp.
    s.config.write("deviceMapping: [");
    wait_metric(&addr, "spookd_config_reloads_total{result=\"error\"}", "1");
    std::thread::sleep(Duration::from_millis(20));
    s.config
        .write(&SEED.replace("\"0001\"\n        env", "\"0002\"\n        env"));
    wait_metric(&addr, "spookd_config_reloads_total{result=\"ok\"}", "2");
    let t1: f64 = metric(&addr, "spookd_config_last_reload_success_timestamp_seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!(t1 > t0, "{t1} > {t0}");

    // A kubelet restart re-registers: counted.
    s.kubelet.restart().unwrap();
    wait_metric(
        &addr,
        &format!("spookd_kubelet_registrations_total{{{w},result=\"ok\"}}"),
        "2",
    );

    // The kubelet gone with our sockets: unhealthy, naming what is missing; back: healthy.
    s.kubelet.stop().unwrap();
    for f in s.own_sockets() {
        std::fs::remove_file(s.dp().join(f)).unwrap();
    }
    // Both sockets' deletions are seen one after the other: wait for the answer naming both.
    let expected = (
        503,
        "not registered with the kubelet: example.com/thingamajig, example.com/widget\n".to_owned(),
    );
    let deadline = std::time::Instant::now() + WAIT;
    let mut health = get(&addr, "/healthz");
    while health != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        health = get(&addr, "/healthz");
    }
    assert_eq!(health, expected);
    assert_eq!(get(&addr, "/readyz").0, 503);
    s.kubelet.restart().unwrap();
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    wait_metric(&addr, &format!("spookd_resource_registered{{{w}}}"), "1");
    assert_eq!(get(&addr, "/healthz").0, 200);
}

#[test]
fn junk_oversized_and_slow_clients_get_bounded_answers() {
    let (s, addr) = start();
    assert_eq!(raw(&addr, b"\x00\xff junk\r\n\r\n").0, 400);
    assert_eq!(raw(&addr, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(get(&addr, "/nope").0, 404);
    assert_eq!(raw(&addr, &vec![b'a'; 20_000]).0, 431);
    // A client that connects and says nothing gets 408 after the 2 s bound; meanwhile another
    // client waits at most that long, and spookd keeps serving the kubelet.
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let (status, _) = get(&addr, "/healthz");
    assert_eq!(status, 200);
    let mut answer = String::new();
    let _ = silent.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(s
        .kubelet
        .allocate("example.com/widget", &[&["0001"]])
        .is_ok());
}
