//! `spookd status`: what the running daemon serves on this node, for its operator (or `kubectl
//! exec`). It asks the daemon at its metrics address (`/status`: resources, registration, each
//! device's health and probe detail and, with `--exclusive-leases`, its Lease's holder) and the
//! kubelet's podresources API (`List`: which pod and container holds each device), and prints an
//! aligned table or, with `--output json`, JSON. The podresources call is made here, not in the
//! daemon, so a status request never holds up the daemon's /healthz.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::kube::json_string;
use crate::kubelet::podresources::{self, Holders};
use crate::text::{Cut, Quoted};

/// Longest wait for the daemon's connect and for each read.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the whole answer may take (a daemon dribbling it is not waited for longer).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Largest /status answer read (10,000 devices with details are about 2 MiB).
const MAX_ANSWER: u64 = 16 << 20;

/// What the daemon's /status says.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node: String,
    pub mode: String,
    pub configured: bool,
    pub source_problem: Option<String>,
    pub resources: Vec<Resource>,
    pub dra: Option<Dra>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub registered: bool,
    pub devices: Vec<Device>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub id: String,
    pub healthy: bool,
    pub probe: Option<String>,
    pub lease_holder: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Dra {
    pub leader: bool,
    pub generation: i64,
    pub slices: usize,
    pub devices: usize,
    pub registered: bool,
    /// The written fields the API server drops (its feature gates are off).
    #[serde(default)]
    pub dropped_fields: Vec<String>,
    /// The names this node serves by DRA that a device plugin also advertises here.
    #[serde(default)]
    pub served_by_device_plugin: Vec<String>,
}

/// Why `spookd status` could not tell.
#[derive(Debug)]
pub enum StatusError {
    /// Neither `--metrics-addr` nor `SPOOKD_METRICS_ADDR`: the daemon serves no status.
    NoAddress,
    Connect {
        addr: SocketAddr,
        source: io::Error,
    },
    Read {
        addr: SocketAddr,
        source: io::Error,
    },
    Http {
        addr: SocketAddr,
        line: String,
    },
    Decode {
        addr: SocketAddr,
        source: serde_yaml::Error,
    },
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::NoAddress => write!(
                f,
                "no metrics address: the daemon serves its status only with --metrics-addr \
                 (SPOOKD_METRICS_ADDR), e.g. 0.0.0.0:9470; give the same here"
            ),
            StatusError::Connect { addr, source } => write!(
                f,
                "cannot reach the daemon at {addr}: {source} (is spookd running, with \
                 --metrics-addr {addr}?)"
            ),
            StatusError::Read { addr, source } => {
                write!(f, "reading the daemon's answer from {addr}: {source}")
            }
            StatusError::Http { addr, line } => {
                write!(
                    f,
                    "the daemon at {addr} answered {}, not its status",
                    Quoted(line)
                )
            }
            StatusError::Decode { addr, source } => {
                write!(
                    f,
                    "the answer from {addr} is not spookd's status: {}",
                    Cut(source)
                )
            }
        }
    }
}

impl std::error::Error for StatusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StatusError::Connect { source, .. } | StatusError::Read { source, .. } => Some(source),
            StatusError::Decode { source, .. } => Some(source),
            StatusError::NoAddress | StatusError::Http { .. } => None,
        }
    }
}

/// Where to connect for a listening address: the daemon listening on every address
/// (`0.0.0.0`, `::`) is reached on loopback.
pub fn dial_address(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

/// Asks the daemon at `addr` for its status.
pub fn fetch(addr: SocketAddr) -> Result<Status, StatusError> {
    let addr = dial_address(addr);
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|source| StatusError::Connect { addr, source })?;
    let read = |source| StatusError::Read { addr, source };
    stream.set_read_timeout(Some(TIMEOUT)).map_err(read)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(read)?;
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: spookd\r\nConnection: close\r\n\r\n")
        .map_err(read)?;
    let mut answer = Vec::new();
    let deadline = crate::clock::later(std::time::Instant::now(), ANSWER_WITHIN);
    let mut buf = [0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(read(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no whole answer within {ANSWER_WITHIN:?}"),
            )));
        }
        stream
            .set_read_timeout(Some(left.min(TIMEOUT)))
            .map_err(read)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() as u64 > MAX_ANSWER {
                    return Err(read(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("an answer over {MAX_ANSWER} bytes"),
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The read's timeout was the deadline's rest: the loop says which deadline passed.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && std::time::Instant::now() >= deadline => {}
            Err(e) => return Err(read(e)),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let line = head.lines().next().unwrap_or_default().to_owned();
    if !line.starts_with("HTTP/1.1 200") {
        return Err(StatusError::Http { addr, line });
    }
    serde_yaml::from_str(body).map_err(|source| StatusError::Decode { addr, source })
}

/// The holders, or why they are not known.
pub type Held = Result<Holders, String>;

/// Reads the kubelet's podresources API at `socket`.
pub fn holders(socket: &Path) -> Held {
    let grpc = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    podresources::holders(&grpc, socket).map_err(|e| e.to_string())
}

/// Text from the daemon (or a hostile impostor on its port) made safe for a terminal: control
/// characters shown escaped, never sent raw.
fn safe(s: &str) -> String {
    crate::text::escape(s, char::is_control).into_owned()
}

/// The aligned text.
pub fn text(status: &Status, held: &Held) -> String {
    let status = &Status {
        node: safe(&status.node),
        mode: status.mode.clone(),
        configured: status.configured,
        source_problem: status.source_problem.as_deref().map(safe),
        resources: (status.resources.iter())
            .map(|r| Resource {
                name: safe(&r.name),
                registered: r.registered,
                devices: (r.devices.iter())
                    .map(|d| Device {
                        id: safe(&d.id),
                        healthy: d.healthy,
                        probe: d.probe.as_deref().map(safe),
                        lease_holder: d.lease_holder.as_deref().map(safe),
                    })
                    .collect(),
            })
            .collect(),
        dra: status.dra.clone(),
    };
    let held: &Held = &match held {
        Ok(h) => Ok(h
            .iter()
            .map(|((r, d), who)| ((safe(r), safe(d)), who.iter().map(|w| safe(w)).collect()))
            .collect()),
        Err(e) => Err(safe(e)),
    };
    let mut out = String::new();
    let mode = if status.mode == "dra" {
        "DRA driver"
    } else {
        "device plugin"
    };
    out.push_str(&format!(
        "node {} ({mode}): {}\n",
        status.node,
        if status.configured {
            "a valid config is applied"
        } else {
            "no valid config read yet"
        }
    ));
    if let Some(problem) = &status.source_problem {
        out.push_str(&format!("config source: {problem}\n"));
    }
    if let Some(d) = &status.dra {
        out.push_str(&format!(
            "DRA: {}; pool generation {}, {} devices in {} ResourceSlices; kubelet plugin {}\n",
            if d.leader {
                "this node leads and publishes"
            } else {
                "another node publishes"
            },
            d.generation,
            d.devices,
            d.slices,
            if d.registered {
                "registered"
            } else {
                "not registered"
            }
        ));
        if !d.dropped_fields.is_empty() {
            let fields: Vec<String> = d.dropped_fields.iter().map(|f| safe(f)).collect();
            out.push_str(&format!(
                "DRA: the API server drops {} (feature gates off): pods asking for the \
                 resources in resources.limits are not served by DRA\n",
                fields.join(", ")
            ));
        }
        if !d.served_by_device_plugin.is_empty() {
            let names: Vec<String> = d.served_by_device_plugin.iter().map(|f| safe(f)).collect();
            out.push_str(&format!(
                "DRA: a device plugin on this node also advertises {}: pods asking for it in \
                 resources.limits get the device plugin's devices here, not DRA's\n",
                names.join(", ")
            ));
        }
    }
    if let Err(e) = held {
        out.push_str(&format!("holders unknown: {e}\n"));
    }
    let mut rows: Vec<[String; 6]> = vec![[
        "RESOURCE".into(),
        "REGISTERED".into(),
        "DEVICE".into(),
        "HEALTH".into(),
        "HELD BY".into(),
        "LEASE".into(),
    ]];
    let mut probes = Vec::new();
    for r in &status.resources {
        if r.devices.is_empty() {
            rows.push([
                r.name.clone(),
                yes(r.registered),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for d in &r.devices {
            let holders = match held {
                Ok(h) => h
                    .get(&(r.name.clone(), d.id.clone()))
                    .map_or_else(|| "-".to_owned(), |v| v.join(",")),
                Err(_) => "?".into(),
            };
            rows.push([
                r.name.clone(),
                yes(r.registered),
                d.id.clone(),
                if d.healthy { "Healthy" } else { "Unhealthy" }.into(),
                holders,
                d.lease_holder.clone().unwrap_or_else(|| "-".into()),
            ]);
            if let Some(p) = &d.probe {
                probes.push(format!("  {} {}: {p}\n", r.name, d.id));
            }
        }
    }
    if status.resources.is_empty() {
        out.push_str("no resources served on this node\n");
    } else {
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
    }
    if !probes.is_empty() {
        out.push_str("probes:\n");
        for p in probes {
            out.push_str(&p);
        }
    }
    out
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// The same as JSON: the daemon's status with each device's holders (`null`: unknown).
pub fn json(status: &Status, held: &Held) -> String {
    let q = |v: &str| json_string(v);
    let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "null".to_owned(), q);
    let resources: Vec<String> = status
        .resources
        .iter()
        .map(|r| {
            let devices: Vec<String> = r
                .devices
                .iter()
                .map(|d| {
                    let holders = match held {
                        Ok(h) => {
                            let list = h.get(&(r.name.clone(), d.id.clone()));
                            let items: Vec<String> =
                                list.into_iter().flatten().map(|w| q(w)).collect();
                            format!("[{}]", items.join(","))
                        }
                        Err(_) => "null".to_owned(),
                    };
                    format!(
                        r#"{{"id":{},"healthy":{},"probe":{},"leaseHolder":{},"heldBy":{holders}}}"#,
                        q(&d.id),
                        d.healthy,
                        opt(&d.probe),
                        opt(&d.lease_holder)
                    )
                })
                .collect();
            format!(
                r#"{{"name":{},"registered":{},"devices":[{}]}}"#,
                q(&r.name),
                r.registered,
                devices.join(",")
            )
        })
        .collect();
    let dra = status.dra.as_ref().map_or_else(
        || "null".to_owned(),
        |d| {
            crate::metrics::dra_json(
                d.leader,
                d.generation,
                d.slices,
                d.devices,
                d.registered,
                &d.dropped_fields,
                &d.served_by_device_plugin,
            )
        },
    );
    let problem = match held {
        Ok(_) => "null".to_owned(),
        Err(e) => q(e),
    };
    format!(
        "{{\"node\":{},\"mode\":{},\"configured\":{},\"sourceProblem\":{},\"podResourcesProblem\":{problem},\"resources\":[{}],\"dra\":{dra}}}\n",
        q(&status.node),
        q(&status.mode),
        status.configured,
        opt(&status.source_problem),
        resources.join(",")
    )
}

/// The options of `spookd status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusOptions {
    pub addr: Option<SocketAddr>,
    pub json: bool,
    pub pod_resources: PathBuf,
}

/// Runs `spookd status`: the output, or why there is none.
pub fn run(opts: &StatusOptions) -> Result<String, StatusError> {
    let addr = opts.addr.ok_or(StatusError::NoAddress)?;
    let status = fetch(addr)?;
    // A DRA driver's devices are not the kubelet's device-plugin resources.
    let held = if status.mode == "dra" {
        Ok(Holders::new())
    } else {
        holders(&opts.pod_resources)
    };
    Ok(if opts.json {
        json(&status, &held)
    } else {
        text(&status, &held)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            node: "node1".into(),
            mode: "device-plugin".into(),
            configured: true,
            source_problem: None,
            resources: vec![Resource {
                name: "skao.int/oscilloscope".into(),
                registered: true,
                devices: vec![
                    Device {
                        id: "0001".into(),
                        healthy: true,
                        probe: Some("connected to 10.0.0.1:5025".into()),
                        lease_holder: Some("node1".into()),
                    },
                    Device {
                        id: "0002".into(),
                        healthy: false,
                        probe: None,
                        lease_holder: Some("node2".into()),
                    },
                ],
            }],
            dra: None,
        }
    }

    #[test]
    fn the_table_is_aligned_and_names_holders() {
        let held: Held = Ok(Holders::from([(
            ("skao.int/oscilloscope".into(), "0001".into()),
            vec!["lab/scope-7d9/main".into()],
        )]));
        assert_eq!(
            text(&sample(), &held),
            "node node1 (device plugin): a valid config is applied
RESOURCE               REGISTERED  DEVICE  HEALTH     HELD BY             LEASE
skao.int/oscilloscope  yes         0001    Healthy    lab/scope-7d9/main  node1
skao.int/oscilloscope  yes         0002    Unhealthy  -                   node2
probes:
  skao.int/oscilloscope 0001: connected to 10.0.0.1:5025
"
        );
        let unknown: Held = Err("cannot list pod resources at /x: unavailable".into());
        let t = text(&sample(), &unknown);
        assert!(
            t.contains("holders unknown: cannot list pod resources at /x: unavailable\n"),
            "{t}"
        );
        assert!(t.contains("0001    Healthy    ?"), "{t}");
    }

    #[test]
    fn json_round_trips_and_says_what_is_unknown() {
        let held: Held = Err("down".into());
        let out = json(&sample(), &held);
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["podResourcesProblem"], "down");
        assert!(v["resources"][0]["devices"][0]["heldBy"].is_null());
        let back: Status = serde_yaml::from_str(&out).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn text_from_the_daemon_cannot_reach_the_terminal_raw() {
        let mut s = sample();
        s.resources[0].devices[0].id = "\u{1b}[2Jx".into();
        s.source_problem = Some("bell\u{7}".into());
        let t = text(&s, &Ok(Holders::new()));
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        assert!(t.contains("\\u{1b}[2Jx"), "{t}");
    }

    /// A DRA node where a device plugin serves a name too: the text says so, and the JSON
    /// carries it back.
    #[test]
    fn a_device_plugin_serving_a_dra_name_here_is_shown() {
        let mut s = sample();
        s.resources.clear();
        s.dra = Some(Dra {
            leader: false,
            generation: 3,
            slices: 1,
            devices: 2,
            registered: true,
            dropped_fields: Vec::new(),
            served_by_device_plugin: vec!["skao.int/oscilloscope".into()],
        });
        let t = text(&s, &Ok(Holders::new()));
        assert!(
            t.contains(
                "DRA: a device plugin on this node also advertises skao.int/oscilloscope: pods \
                 asking for it in resources.limits get the device plugin's devices here, not \
                 DRA's\n"
            ),
            "{t}"
        );
        let back: Status = serde_yaml::from_str(&json(&s, &Ok(Holders::new()))).unwrap();
        assert_eq!(back, s);
    }

    /// A listener on 127.0.0.1 that answers every connection with `answer`, a byte every `gap`.
    fn impostor(answer: &'static [u8], gap: Duration) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut head = [0u8; 1024];
                let _ = conn.read(&mut head);
                for b in answer {
                    if conn.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(gap);
                }
            }
        });
        addr
    }

    #[test]
    fn garbage_and_dribbling_answers_are_errors_in_bounded_time() {
        let garbage = impostor(b"SSH-2.0-OpenSSH\r\n\r\n", Duration::ZERO);
        let e = fetch(garbage).unwrap_err();
        assert!(matches!(e, StatusError::Http { .. }), "{e}");
        let not_json = impostor(b"HTTP/1.1 200 OK\r\n\r\n{\"node\": [", Duration::ZERO);
        assert!(matches!(
            fetch(not_json).unwrap_err(),
            StatusError::Decode { .. }
        ));
        // A byte every 200 ms, forever as far as the client knows: cut at the whole-answer
        // deadline, not after each read's.
        let slow: &'static [u8] = Box::leak(vec![b'x'; 1000].into_boxed_slice());
        let dribble = impostor(slow, Duration::from_millis(200));
        let t = std::time::Instant::now();
        let e = fetch(dribble).unwrap_err();
        assert!(
            t.elapsed() < ANSWER_WITHIN + Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        assert!(e.to_string().contains("no whole answer within"), "{e}");
    }

    #[test]
    fn a_daemon_listening_everywhere_is_asked_on_loopback() {
        let a: SocketAddr = "0.0.0.0:9470".parse().unwrap();
        assert_eq!(dial_address(a), "127.0.0.1:9470".parse().unwrap());
        let b: SocketAddr = "[::]:9470".parse().unwrap();
        assert_eq!(dial_address(b), "[::1]:9470".parse().unwrap());
        let c: SocketAddr = "10.1.2.3:1".parse().unwrap();
        assert_eq!(dial_address(c), c);
    }
}
