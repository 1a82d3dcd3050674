//! `/healthz`, `/readyz` and Prometheus `/metrics` on `--metrics-addr`.
//!
//! One thread (`spookd-metrics`) serves one connection at a time, with hard bounds: a request head
//! of at most 8 KiB, 2 s for the whole exchange, GET only, `Connection: close`. A slow or hostile
//! client can delay other scrapes by at most those 2 s and never reaches the state thread, which is
//! asked for a [`Snapshot`] with a 1 s timeout. No HTTP crate: the ones we looked at spawn a thread
//! per connection, which a slow-loris client turns into unbounded threads on a node daemon.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, info, warn};

use crate::state::Msg;
use crate::worker::Worker;

/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;
/// Longest one connection may take, reading and writing.
const CONNECTION_TIME: Duration = Duration::from_secs(2);
/// Longest the state thread may take to answer.
const STATE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the state thread reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Per served resource: (healthy devices, unhealthy devices, registered with the kubelet).
    pub resources: BTreeMap<String, (usize, usize, bool)>,
    /// Whether a valid config has been applied since start.
    pub configured: bool,
    pub reloads_ok: u64,
    pub reloads_error: u64,
    /// Unix time of the last applied config.
    pub last_reload_success: Option<f64>,
    /// (resource, "ok" | "error") → count.
    pub allocations: BTreeMap<(String, &'static str), u64>,
    /// (resource, "ok" | "error") → count.
    pub registrations: BTreeMap<(String, &'static str), u64>,
    /// (resource, device) → Healthy.
    pub devices: BTreeMap<(String, String), bool>,
    /// Changes of a device's health seen by the probes.
    pub health_changes: u64,
    /// `--exclusive-leases`: Leases this node holds, and acquisitions won and lost.
    pub leases_held: u64,
    pub lease_acquisitions_won: u64,
    pub lease_acquisitions_lost: u64,
}

/// Handle of the metrics thread; dropping it stops the thread.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    _worker: Worker,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks one; see [`MetricsServer::addr`]) and serves from a thread.
    pub fn spawn(addr: SocketAddr, state: Sender<Msg>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = Worker::spawn("spookd-metrics", move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                match conn {
                    Ok(conn) => {
                        if let Err(e) = serve(conn, &state) {
                            debug!("metrics connection: {e}");
                        }
                    }
                    Err(e) => warn!("metrics: accept failed: {e}"),
                }
            }
        })?;
        info!("serving /healthz, /readyz and /metrics on http://{addr}");
        Ok(MetricsServer {
            addr,
            stop,
            _worker: worker,
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

/// Reads one request head within the bounds and answers it.
fn serve(mut conn: TcpStream, state: &Sender<Msg>) -> io::Result<()> {
    let deadline = Instant::now() + CONNECTION_TIME;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(&mut conn, 408, "request timeout\n", deadline);
        }
        conn.set_read_timeout(Some(left))?;
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return respond(&mut conn, 408, "request timeout\n", deadline)
            }
            Err(e) => return Err(e),
        };
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(&mut conn, 431, "request too large\n", deadline);
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return respond(&mut conn, 400, "bad request\n", deadline);
    }
    if method != "GET" {
        return respond(&mut conn, 405, "only GET\n", deadline);
    }
    let path = target.split('?').next().unwrap_or_default();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return respond(
            &mut conn,
            404,
            "try /healthz, /readyz or /metrics\n",
            deadline,
        );
    }
    let Some(snapshot) = snapshot(state) else {
        return respond(&mut conn, 503, "state thread not answering\n", deadline);
    };
    match path {
        "/metrics" => respond(&mut conn, 200, &render(&snapshot), deadline),
        "/healthz" => match unregistered(&snapshot) {
            None => respond(&mut conn, 200, "ok\n", deadline),
            Some(reason) => respond(&mut conn, 503, &reason, deadline),
        },
        _ => match (snapshot.configured, unregistered(&snapshot)) {
            (false, _) => respond(&mut conn, 503, "no valid config applied yet\n", deadline),
            (true, Some(reason)) => respond(&mut conn, 503, &reason, deadline),
            (true, None) => respond(&mut conn, 200, "ok\n", deadline),
        },
    }
}

fn snapshot(state: &Sender<Msg>) -> Option<Snapshot> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    state.send(Msg::Snapshot { reply }).ok()?;
    answer.recv_timeout(STATE_TIMEOUT).ok()
}

/// Why the plugin is not healthy: resources not registered with the kubelet.
fn unregistered(s: &Snapshot) -> Option<String> {
    let missing: Vec<&str> = s
        .resources
        .iter()
        .filter(|(_, (_, _, registered))| !registered)
        .map(|(r, _)| r.as_str())
        .collect();
    (!missing.is_empty())
        .then(|| format!("not registered with the kubelet: {}\n", missing.join(", ")))
}

fn respond(conn: &mut TcpStream, code: u16, body: &str, deadline: Instant) -> io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let content_type = if body.starts_with("# HELP") {
        // The Prometheus text format.
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    conn.set_write_timeout(Some(left))?;
    write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// Escapes a label value for the Prometheus text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition format.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for sample in samples {
            let _ = writeln!(out, "{name}{sample}");
        }
    };
    family(
        "spookd_build_info",
        "gauge",
        "spookd's version.",
        vec![format!("{{version=\"{}\"}} 1", crate::VERSION)],
    );
    family(
        "spookd_devices",
        "gauge",
        "Devices advertised to the kubelet, by health.",
        s.resources
            .iter()
            .flat_map(|(r, (healthy, unhealthy, _))| {
                let r = label(r);
                [
                    format!("{{resource=\"{r}\",health=\"Healthy\"}} {healthy}"),
                    format!("{{resource=\"{r}\",health=\"Unhealthy\"}} {unhealthy}"),
                ]
            })
            .collect(),
    );
    family(
        "spookd_device_healthy",
        "gauge",
        "Whether the device is advertised Healthy (1) or Unhealthy (0); devices without a \
         healthCheck are always 1.",
        s.devices
            .iter()
            .map(|((r, d), healthy)| {
                format!(
                    "{{resource=\"{}\",device=\"{}\"}} {}",
                    label(r),
                    label(d),
                    u8::from(*healthy)
                )
            })
            .collect(),
    );
    family(
        "spookd_device_health_changes_total",
        "counter",
        "Changes of a device's health seen by its probe.",
        vec![format!(" {}", s.health_changes)],
    );
    family(
        "spookd_leases_held",
        "gauge",
        "Leases of shared devices this node holds (--exclusive-leases).",
        vec![format!(" {}", s.leases_held)],
    );
    family(
        "spookd_lease_acquisitions_total",
        "counter",
        "Lease acquisitions for an Allocate, by result: won, or lost (held elsewhere, API error).",
        vec![
            format!("{{result=\"won\"}} {}", s.lease_acquisitions_won),
            format!("{{result=\"lost\"}} {}", s.lease_acquisitions_lost),
        ],
    );
    family(
        "spookd_resource_registered",
        "gauge",
        "Whether the resource is registered with the kubelet.",
        s.resources
            .iter()
            .map(|(r, (_, _, reg))| format!("{{resource=\"{}\"}} {}", label(r), u8::from(*reg)))
            .collect(),
    );
    family(
        "spookd_config_reloads_total",
        "counter",
        "Configs read, by result.",
        vec![
            format!("{{result=\"ok\"}} {}", s.reloads_ok),
            format!("{{result=\"error\"}} {}", s.reloads_error),
        ],
    );
    family(
        "spookd_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the last valid config was applied (0: never).",
        vec![format!(" {:.3}", s.last_reload_success.unwrap_or(0.0))],
    );
    let by_result = |m: &BTreeMap<(String, &'static str), u64>| -> Vec<String> {
        m.iter()
            .map(|((r, result), n)| {
                format!("{{resource=\"{}\",result=\"{result}\"}} {n}", label(r))
            })
            .collect()
    };
    family(
        "spookd_allocations_total",
        "counter",
        "Allocate calls, by resource and result.",
        by_result(&s.allocations),
    );
    family(
        "spookd_kubelet_registrations_total",
        "counter",
        "Registrations with the kubelet, by resource and result.",
        by_result(&s.registrations),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let mut s = Snapshot {
            configured: true,
            reloads_ok: 2,
            reloads_error: 1,
            last_reload_success: Some(1700000000.5),
            ..Snapshot::default()
        };
        s.resources
            .insert("example.com/widget".into(), (2, 0, true));
        s.devices
            .insert(("example.com/widget".into(), "0001".into()), true);
        s.devices
            .insert(("example.com/widget".into(), "0\"2".into()), false);
        s.health_changes = 4;
        s.leases_held = 2;
        s.lease_acquisitions_won = 5;
        s.lease_acquisitions_lost = 1;
        s.allocations.insert(("example.com/widget".into(), "ok"), 3);
        s.registrations
            .insert(("example.com/widget".into(), "error"), 1);
        let text = render(&s);
        for line in [
            "# TYPE spookd_build_info gauge",
            &format!("spookd_build_info{{version=\"{}\"}} 1", crate::VERSION),
            "spookd_devices{resource=\"example.com/widget\",health=\"Healthy\"} 2",
            "spookd_devices{resource=\"example.com/widget\",health=\"Unhealthy\"} 0",
            "spookd_resource_registered{resource=\"example.com/widget\"} 1",
            "# TYPE spookd_device_healthy gauge",
            "spookd_device_healthy{resource=\"example.com/widget\",device=\"0001\"} 1",
            "spookd_device_healthy{resource=\"example.com/widget\",device=\"0\\\"2\"} 0",
            "spookd_device_health_changes_total 4",
            "# TYPE spookd_leases_held gauge",
            "spookd_leases_held 2",
            "spookd_lease_acquisitions_total{result=\"won\"} 5",
            "spookd_lease_acquisitions_total{result=\"lost\"} 1",
            "spookd_config_reloads_total{result=\"ok\"} 2",
            "spookd_config_reloads_total{result=\"error\"} 1",
            "spookd_config_last_reload_success_timestamp_seconds 1700000000.500",
            "# TYPE spookd_allocations_total counter",
            "spookd_allocations_total{resource=\"example.com/widget\",result=\"ok\"} 3",
            "spookd_kubelet_registrations_total{resource=\"example.com/widget\",result=\"error\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(unregistered(&s), None);
        s.resources
            .insert("example.com/gizmo".into(), (1, 0, false));
        assert_eq!(
            unregistered(&s).as_deref(),
            Some("not registered with the kubelet: example.com/gizmo\n")
        );
    }
}
