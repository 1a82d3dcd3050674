//! `/healthz`, `/readyz` and Prometheus `/metrics` on `--metrics-addr`.
//!
//! One thread (`spookd-metrics`) serves every connection from one `poll(2)` loop, with hard
//! bounds: at most [`MAX_CONNECTIONS`] open (a new one pushes out the oldest), at most
//! [`MAX_PENDING_OUTPUT`] of answers waiting to be read, a request head of
//! at most 8 KiB, 2 s for the whole exchange, GET only, `Connection: close`. Idle, slow
//! (byte-a-second) or garbage clients cost a slot each and never hold up another: a `/healthz`
//! is answered as soon as its head arrives, however many others are open. The loop sleeps until
//! a socket is ready or the nearest deadline, so an idle server never wakes. The state thread is
//! asked for a [`Snapshot`] with a 1 s timeout and never sees a client. No HTTP crate: the ones
//! we looked at spawn a thread per connection, which a slow-loris client turns into unbounded
//! threads on a node daemon.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{info, warn};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::clock::later;
use crate::kube::json_string;
use crate::state::msg::{DraStatus, Msg, Snapshot};
use crate::worker::Worker;

/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;
/// Longest one connection may take, reading and writing.
const CONNECTION_TIME: Duration = Duration::from_secs(2);
/// Longest the state thread may take to answer.
const STATE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most connections open at once (one file descriptor each); a new one pushes out the oldest,
/// so a client holding many open can never lock out the kubelet's probes.
pub const MAX_CONNECTIONS: usize = 256;
/// Most bytes of answers held for clients at once: a client that asks for /metrics and never
/// reads holds its answer until its deadline, and 512 of them held 200 MB at 4,000 devices. Past
/// this, /metrics answers 503 until others drain; /healthz and /readyz (a few bytes) always answer.
pub const MAX_PENDING_OUTPUT: usize = 8 << 20;
/// Each connection's kernel send buffer.
const SEND_BUFFER: usize = 64 << 10;
/// How long accepting pauses after it failed (out of file descriptors): the listener stays
/// readable, and polling it at once again would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Handle of the metrics thread; dropping it stops the thread.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    _worker: Worker,
}

/// The metrics port, bound before anything else starts (a taken port fails start-up while
/// nothing has been registered or created yet); [`MetricsListener::serve`] starts the thread.
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `addr` (port 0 picks one; the start-up log names it).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        Ok(MetricsListener { listener, addr })
    }

    /// Serves from a thread until the handle is dropped.
    pub fn serve(self, state: Sender<Msg>) -> io::Result<MetricsServer> {
        let MetricsListener { listener, addr } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = Worker::spawn("spookd-metrics", move || {
            Server {
                listener,
                state,
                stop: flag,
                conns: VecDeque::new(),
                paused_until: None,
            }
            .run();
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
        // Wake the poll: the listener turns readable.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

/// One client connection: reading its head, then writing the answer.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    head: Vec<u8>,
    /// The answer, once the head is complete (or refused); `sent` bytes of it are written.
    out: Option<(Vec<u8>, usize)>,
}

struct Server {
    listener: TcpListener,
    state: Sender<Msg>,
    stop: Arc<AtomicBool>,
    /// Oldest first.
    conns: VecDeque<Conn>,
    paused_until: Option<Instant>,
}

impl Server {
    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let (listener_ready, ready) = self.wait();
            let now = Instant::now();
            // `ready` is in the order of `conns`: handled before `accept` changes it.
            // Summed once per wake, then kept up to date as each connection advances.
            let mut pending: usize = self.conns.iter().map(Conn::unsent).sum();
            for (i, ready) in ready.into_iter().enumerate() {
                if let Some(conn) = self.conns.get_mut(i) {
                    let before = conn.unsent();
                    let room = MAX_PENDING_OUTPUT.saturating_sub(pending);
                    if ready {
                        conn.advance(&self.state, room);
                    }
                    if now >= conn.deadline && conn.out.is_none() {
                        conn.out = Some((response(408, "request timeout\n"), 0));
                        conn.advance(&self.state, room);
                    }
                    pending = (pending - before).saturating_add(conn.unsent());
                }
            }
            // Done, failed, or out of time (a client that does not read its answer).
            self.conns
                .retain(|c| !(c.finished() || (now >= c.deadline && c.out.is_some())));
            if listener_ready {
                self.accept(now);
            }
        }
    }

    /// Sleeps in `poll(2)` until the listener or a connection is ready or a deadline passes.
    fn wait(&mut self) -> (bool, Vec<bool>) {
        let now = Instant::now();
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        let listening = self.paused_until.is_none();
        let until = (self.conns.iter().map(|c| c.deadline))
            .chain(self.paused_until)
            .min();
        let mut fds = Vec::with_capacity(1 + self.conns.len());
        let none = PollFlags::empty();
        fds.push(PollFd::new(
            &self.listener,
            if listening { PollFlags::IN } else { none },
        ));
        for c in &self.conns {
            let want = if c.out.is_some() {
                PollFlags::OUT
            } else {
                PollFlags::IN
            };
            fds.push(PollFd::new(&c.stream, want));
        }
        // Beyond what a Timespec holds (never, in practice): wait for an event.
        let timeout =
            until.and_then(|at| Timespec::try_from(at.saturating_duration_since(now)).ok());
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {
                let mut ready = fds.iter().map(|p| !p.revents().is_empty());
                let listener = ready.next().unwrap_or(false) && listening;
                (listener, ready.collect())
            }
            // EINTR: look again on the next turn.
            Err(_) => (false, vec![false; self.conns.len()]),
        }
    }

    /// Takes every pending connection; past [`MAX_CONNECTIONS`] the oldest goes.
    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    // The kernel's send buffer grows to megabytes for a client that does not
                    // read (and counts against the pod's memory): kept small, what is not sent
                    // stays in our buffers, which MAX_PENDING_OUTPUT bounds.
                    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, SEND_BUFFER);
                    if self.conns.len() >= MAX_CONNECTIONS {
                        self.conns.pop_front();
                    }
                    self.conns.push_back(Conn {
                        stream,
                        deadline: later(now, CONNECTION_TIME),
                        head: Vec::new(),
                        out: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, most likely: free the oldest and pause.
                    warn!("metrics: accept failed: {e}; pausing {ACCEPT_PAUSE:?}");
                    self.conns.pop_front();
                    self.paused_until = Some(later(now, ACCEPT_PAUSE));
                    return;
                }
            }
        }
    }
}

impl Conn {
    /// Reads what arrived or writes what the socket takes, without blocking; an answer of more
    /// than `room` bytes is refused (503) instead of held.
    fn advance(&mut self, state: &Sender<Msg>, room: usize) {
        if self.out.is_none() {
            let mut buf = [0u8; 1024];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => {
                        // Closed before a whole head: nothing to answer.
                        self.out = Some((Vec::new(), 0));
                        return;
                    }
                    Ok(n) => {
                        self.head.extend_from_slice(&buf[..n]);
                        if self.head.len() > MAX_REQUEST {
                            self.out = Some((response(431, "request too large\n"), 0));
                            break;
                        }
                        // The blank line ending the head; bare LFs too, as curl -0 and some
                        // probes send them.
                        let done = self.head.windows(4).any(|w| w == b"\r\n\r\n")
                            || self.head.windows(2).any(|w| w == b"\n\n");
                        if done {
                            self.out = Some((answer(&self.head, state, room), 0));
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => {
                        self.out = Some((Vec::new(), 0));
                        return;
                    }
                }
            }
            self.head = Vec::new();
        }
        if let Some((out, sent)) = &mut self.out {
            while *sent < out.len() {
                match self.stream.write(&out[*sent..]) {
                    Ok(0) => break,
                    Ok(n) => *sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => {
                        *sent = out.len();
                        return;
                    }
                }
            }
        }
    }

    /// Bytes of its answer not yet written.
    fn unsent(&self) -> usize {
        self.out
            .as_ref()
            .map_or(0, |(out, sent)| out.len().saturating_sub(*sent))
    }

    fn finished(&self) -> bool {
        self.out
            .as_ref()
            .is_some_and(|(out, sent)| *sent >= out.len())
    }
}

/// The answer to one complete request head; a /metrics answer larger than `room` is a 503.
fn answer(head: &[u8], state: &Sender<Msg>, room: usize) -> Vec<u8> {
    let line = head
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return response(400, "bad request\n");
    }
    if method != "GET" {
        return response(405, "only GET\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics" | "/status") {
        return response(404, "try /healthz, /readyz, /metrics or /status\n");
    }
    let Some(snapshot) = snapshot(state) else {
        return response(503, "state thread not answering\n");
    };
    match path {
        "/metrics" => {
            let answer = response(200, &render(&snapshot));
            if answer.len() > room {
                return response(
                    503,
                    "too many /metrics answers are waiting to be read; try again\n",
                );
            }
            answer
        }
        "/status" => {
            let answer = json_response(&status_json(&snapshot));
            if answer.len() > room {
                return response(503, "too many answers are waiting to be read; try again\n");
            }
            answer
        }
        "/healthz" => match unregistered(&snapshot) {
            None => response(200, "ok\n"),
            Some(reason) => response(503, &reason),
        },
        _ => match not_ready(&snapshot) {
            None => response(200, "ok\n"),
            Some(reason) => response(503, &reason),
        },
    }
}

/// Why /readyz says no: no valid config yet, a config source that cannot read, or resources not
/// registered with the kubelet.
fn not_ready(s: &Snapshot) -> Option<String> {
    if !s.configured {
        return Some("no valid config applied yet\n".to_owned());
    }
    if let Some(problem) = &s.source_problem {
        return Some(format!(
            "the config source cannot read the config: {problem}\n"
        ));
    }
    unregistered(s)
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

fn response(code: u16, body: &str) -> Vec<u8> {
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
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn json_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `/status`: what `spookd status` shows, as JSON: per resource its registration and devices
/// (health, what the probe last saw, the Lease's holder), and the DRA driver's state.
/// /status's `dra` object; `spookd status --json` writes the same from what it read.
pub fn dra_json<S: AsRef<str>>(
    leader: bool,
    generation: i64,
    slices: usize,
    devices: usize,
    registered: bool,
    dropped: &[S],
    served_by_device_plugin: &[impl AsRef<str>],
) -> String {
    format!(
        r#"{{"leader":{leader},"generation":{generation},"slices":{slices},"devices":{devices},"registered":{registered},"droppedFields":[{}],"servedByDevicePlugin":[{}]}}"#,
        json_strings(dropped),
        json_strings(served_by_device_plugin),
    )
}

/// The items of a JSON list of strings.
fn json_strings(items: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| json_string(s.as_ref())).collect();
    quoted.join(",")
}

pub fn status_json(s: &Snapshot) -> String {
    let q = |v: &str| json_string(v);
    let opt = |v: Option<&String>| v.map_or_else(|| "null".to_owned(), |v| q(v));
    let mut resources = Vec::new();
    for (name, (_, _, registered)) in &s.resources {
        let devices: Vec<String> = (s.devices.iter())
            .filter(|((r, _), _)| r == name)
            .map(|((r, id), healthy)| {
                let key = (r.clone(), id.clone());
                format!(
                    r#"{{"id":{},"healthy":{healthy},"probe":{},"leaseHolder":{}}}"#,
                    q(id),
                    opt(s.probe_details.get(&key)),
                    opt(s.lease_holders.get(&key)),
                )
            })
            .collect();
        resources.push(format!(
            r#"{{"name":{},"registered":{registered},"devices":[{}]}}"#,
            q(name),
            devices.join(",")
        ));
    }
    let dra = match &s.dra {
        None => "null".to_owned(),
        Some(d) => dra_json(
            d.leader,
            d.generation,
            d.slices,
            d.devices,
            d.registered,
            &d.dropped,
            &d.served_by_device_plugin,
        ),
    };
    format!(
        r#"{{"node":{},"mode":{},"configured":{},"sourceProblem":{},"resources":[{}],"dra":{dra}}}"#,
        q(&s.node),
        q(if s.dra.is_some() {
            "dra"
        } else {
            "device-plugin"
        }),
        s.configured,
        opt(s.source_problem.as_ref()),
        resources.join(",")
    )
}

/// Escapes a label value for the Prometheus text format (backslash, quote and LF); any other
/// control character, which the format has no escape for and parsers refuse (a CR ends a line
/// for some), becomes U+FFFD. The config refuses them in instanceIDs; this holds whatever comes.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
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
        "Lease acquisitions for an Allocate, by result: won, or lost (held by another node, an API error, or lost at renewal).",
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
        "spookd_config_source_ok",
        "gauge",
        "Whether the config source can read the config (0: missing, unreadable, not a regular \
         file, too large, or stalled; see /readyz for why).",
        vec![format!(" {}", u8::from(s.source_problem.is_none()))],
    );
    family(
        "spookd_kubelet_reregistrations_total",
        "counter",
        "Times a registered resource's ListAndWatch streams all closed and none reopened, so \
         spookd registered it again.",
        vec![format!(" {}", s.reregistrations)],
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
    family(
        "spookd_events_failed_total",
        "counter",
        "Kubernetes Events that could not be written or were dropped (best effort: serving goes on).",
        vec![format!(" {}", s.events_failed)],
    );
    if let Some(d) = &s.dra {
        render_dra(d, &mut family);
    }
    out
}

/// `--dra`: the driver's families.
fn render_dra(d: &DraStatus, family: &mut impl FnMut(&str, &str, &str, Vec<String>)) {
    let one = |v: u64| vec![format!(" {v}")];
    family(
        "spookd_dra_leader",
        "gauge",
        "Whether this node holds the driver's leader Lease and publishes.",
        one(u64::from(d.leader)),
    );
    family(
        "spookd_dra_pool_generation",
        "gauge",
        "The generation of the pool last published or found up to date (0: not yet, or never led).",
        vec![format!(" {}", d.generation)],
    );
    family(
        "spookd_dra_published_devices",
        "gauge",
        "Devices in the pool last published by this node.",
        one(d.devices as u64),
    );
    family(
        "spookd_dra_resource_slices",
        "gauge",
        "ResourceSlices in the pool last published by this node.",
        one(d.slices as u64),
    );
    family(
        "spookd_dra_publish_failures_total",
        "counter",
        "Publish attempts that failed (each is retried).",
        one(d.publish_failures),
    );
    family(
        "spookd_dra_plugin_registered",
        "gauge",
        "Whether the kubelet accepted the plugin's registration.",
        one(u64::from(d.registered)),
    );
    family(
        "spookd_dra_claims_total",
        "counter",
        "Claims prepared or unprepared, by result.",
        vec![
            format!("{{result=\"ok\"}} {}", d.claims_ok),
            format!("{{result=\"error\"}} {}", d.claims_failed),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_dra_drivers_families_in_dra_mode_only() {
        let mut s = Snapshot::default();
        assert!(!render(&s).contains("spookd_dra_"));
        s.dra = Some(DraStatus {
            leader: true,
            generation: 7,
            slices: 2,
            devices: 130,
            publish_failures: 1,
            registered: true,
            claims_ok: 3,
            claims_failed: 1,
            dropped: Vec::new(),
            served_by_device_plugin: Vec::new(),
        });
        let text = render(&s);
        for line in [
            "spookd_dra_leader 1",
            "spookd_dra_pool_generation 7",
            "spookd_dra_published_devices 130",
            "spookd_dra_resource_slices 2",
            "spookd_dra_publish_failures_total 1",
            "spookd_dra_plugin_registered 1",
            "spookd_dra_claims_total{result=\"ok\"} 3",
            "spookd_dra_claims_total{result=\"error\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

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
        // A CR (or any other control character) would end or break a line of the format.
        assert_eq!(label("a\rb\u{0}c\td"), "a\u{FFFD}b\u{FFFD}c\u{FFFD}d");
        for line in text.lines() {
            assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
        }
        assert_eq!(unregistered(&s), None);
        s.resources
            .insert("example.com/gizmo".into(), (1, 0, false));
        assert_eq!(
            unregistered(&s).as_deref(),
            Some("not registered with the kubelet: example.com/gizmo\n")
        );
    }
}
