//! spookd's benchmark: the figures that matter on an edge node, measured on the real binary
//! against the kubelet stand-in over real Unix sockets. Run by `scripts/bench` (release build,
//! static binary). Prints a table, then one machine-readable `BENCH {...}` line.
//!
//! Process figures (RSS, threads, CPU, context switches) are read from /proc from outside. Times
//! are medians/percentiles over repeated runs. This never fails on a figure: it reports them.

// Bench helpers panic on a broken setup, which is a bug to fix, not a figure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;
#[path = "../src/sim/mod.rs"]
#[allow(dead_code)]
mod sim;
#[path = "../tests/util.rs"]
#[allow(dead_code)]
mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::CallOption;
use sim::{Event, Kubelet};
use spookd::config::{Config, NodeName, ResourceName};
use spookd::kubelet::proto::{AllocateRequest, ContainerAllocateRequest, DevicePluginClient};
use spookd::state::msg::Msg;
use spookd::state::{Backend, State};

const NODE: &str = "bench-node";
const WAIT: Duration = Duration::from_secs(30);
/// How long idle CPU and wakeups are measured (#20: CPU over 60 s).
const IDLE_WINDOW: Duration = Duration::from_secs(60);

fn seed() -> String {
    format!(
        "deviceMapping:\n  - hosts: [{NODE}]\n    devices:\n      - resourceName: example.com/widget\n        instanceID: \"0001\"\n        env: {{IP: 192.168.0.200, PORT: \"12345\"}}\n      - resourceName: example.com/thingamajig\n        instanceID: \"0001\"\n"
    )
}

/// `resources` resources of `devices` devices each, all on NODE.
fn big(resources: usize, devices: usize) -> String {
    let mut s = format!("deviceMapping:\n  - hosts: [{NODE}]\n    devices:\n");
    for r in 0..resources {
        for d in 0..devices {
            s.push_str(&format!(
                "      - {{resourceName: bench.example.com/r{r:03}, instanceID: \"d{d:02}\", env: {{IP: 127.0.0.1, PORT: \"{}\"}}}}\n",
                9000 + d
            ));
        }
    }
    s
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("spkb-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(p.join("dp")).unwrap();
        Dir(p)
    }
    fn dp(&self) -> PathBuf {
        self.0.join("dp")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The environment the image sets (`ENV` lines of the Containerfile's final stage), so the
/// processes measured run as they ship: glibc's allocator settings change RSS.
fn image_env() -> Vec<(String, String)> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("Containerfile");
    let text = fs::read_to_string(&file).unwrap();
    let last_stage = text.rsplit("\nFROM ").next().unwrap_or_default();
    last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The CPU list the DaemonSets mount over /sys/devices/system/cpu/possible for gRPC core (the
/// ConfigMap spookd-grpc-cpus), written to a file once; `None` unless this runs as root (a
/// private mount namespace needs it), and then spookd sees this machine's CPUs.
fn grpc_cpus_file() -> Option<&'static Path> {
    static FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        // Root without CAP_SYS_ADMIN (a default container) cannot make a mount namespace.
        let can_mount = util::is_root()
            && Command::new("unshare")
                .args(["-m", "true"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !can_mount {
            return None;
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/base/10-spookd-device-plugin.yaml");
        let text = fs::read_to_string(manifest).unwrap();
        let list = serde_yaml::Deserializer::from_str(&text)
            .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
            .find(|d| d["metadata"]["name"] == "spookd-grpc-cpus")
            .and_then(|d| d["data"]["possible"].as_str().map(str::to_owned))
            .expect("the manifests' spookd-grpc-cpus");
        let file = std::env::temp_dir().join(format!("spkb-{}-cpus", std::process::id()));
        fs::write(&file, list).unwrap();
        Some(file)
    })
    .as_deref()
}

/// The spookd process under test.
struct Proc(Child);

impl Proc {
    /// Starts `bin` as the image runs it: the image's environment and, as root, the manifests'
    /// CPU list for gRPC core (`unshare` execs in place, so the PID is spookd's).
    fn start(bin: &Path, args: &[&str], log: &Path) -> Proc {
        Proc::start_with(bin, args, log, grpc_cpus_file())
    }

    /// Starts `bin` without the CPU list: for timing the start itself, which the wrapper's
    /// `unshare`, `sh` and `mount` would slow by several milliseconds.
    fn start_bare(bin: &Path, args: &[&str], log: &Path) -> Proc {
        Proc::start_with(bin, args, log, None)
    }

    fn start_with(bin: &Path, args: &[&str], log: &Path, cpus: Option<&Path>) -> Proc {
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "mount --bind \"$0\" {} && exec \"$@\"",
                        spookd::daemon::CPU_LIST
                    ))
                    .arg(cpus)
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(args)
            .envs(image_env())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Proc(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn status_field(&self, field: &str) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }
    fn anon_kib(&self) -> u64 {
        self.status_field("RssAnon:")
    }
    fn threads(&self) -> u64 {
        self.status_field("Threads:")
    }
    /// (ns on CPU, voluntary context switches, involuntary ones), summed over the process's
    /// threads. A voluntary switch is a wakeup (the thread slept and was woken); an involuntary
    /// one is a preemption while running.
    /// CPU ns, voluntary switches (wakeups), of which in spookd's own (named `spookd*`) threads,
    /// and involuntary switches (preemptions), summed over the threads.
    fn cpu_and_switches(&self) -> (u64, u64, u64, u64) {
        let mut cpu = 0;
        let (mut voluntary, mut own, mut involuntary) = (0, 0, 0);
        for task in fs::read_dir(format!("/proc/{}/task", self.pid()))
            .unwrap()
            .flatten()
        {
            let p = task.path();
            if let Ok(s) = fs::read_to_string(p.join("schedstat")) {
                cpu += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            let ours = fs::read_to_string(p.join("comm")).is_ok_and(|c| c.starts_with("spookd"));
            if let Ok(s) = fs::read_to_string(p.join("status")) {
                let count = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
                for l in s.lines() {
                    if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                        voluntary += count(v);
                        if ours {
                            own += count(v);
                        }
                    } else if let Some(v) = l.strip_prefix("nonvoluntary_ctxt_switches:") {
                        involuntary += count(v);
                    }
                }
            }
        }
        (cpu, voluntary, own, involuntary)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn file_args<'a>(config: &'a str, dp: &'a str, poll: &'a str) -> Vec<&'a str> {
    vec![
        "--config",
        config,
        "--node-name",
        NODE,
        "--device-plugin-dir",
        dp,
        "--poll-interval",
        poll,
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "p50 …, p99 …" of `sorted` in ms with `shown` decimals, for the table; the two figures go into
/// `json` under `keys` with one decimal more.
fn percentiles(
    json: &mut BTreeMap<&'static str, String>,
    keys: [&'static str; 2],
    sorted: &[Duration],
    shown: usize,
) -> String {
    let (p50, p99) = (ms(percentile(sorted, 0.5)), ms(percentile(sorted, 0.99)));
    json.insert(keys[0], format!("{p50:.*}", shown + 1));
    json.insert(keys[1], format!("{p99:.*}", shown + 1));
    format!("p50 {p50:.shown$} ms, p99 {p99:.shown$} ms")
}

/// Waits until the stand-in has had `n` Register calls in all; returns the last one's time.
fn wait_register_calls(k: &Kubelet, n: usize) -> Instant {
    assert!(
        k.wait_until(WAIT, |k| k.register_calls().len() >= n),
        "only {} registrations",
        k.register_calls().len()
    );
    k.register_calls()[n - 1].1
}

/// Waits for a Devices event for `resource` listing exactly `ids`.
fn wait_devices_event(
    events: &crossbeam_channel::Receiver<Event>,
    resource: &str,
    ids: &[String],
) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("no device list in time");
        if let Event::Devices {
            resource: r,
            devices,
        } = events.recv_timeout(left).unwrap()
        {
            if r == resource && devices.iter().map(|(id, _)| id).eq(ids.iter()) {
                return Instant::now();
            }
        }
    }
}

/// Times 60 config changes, each giving widget the single device `{tag}NNN`: `pause(i)` waits
/// before change i, `change(config)` makes it and returns when; the push is seen on `events`.
/// Returns the latencies, sorted.
fn time_pushes(
    events: &crossbeam_channel::Receiver<Event>,
    tag: &str,
    mut pause: impl FnMut(usize),
    mut change: impl FnMut(&str) -> Instant,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in 0..60 {
        pause(i);
        let id = format!("{tag}{i:03}");
        let t0 =
            change(&seed().replace("\"0001\"\n        env", &format!("\"{id}\"\n        env")));
        let t1 = wait_devices_event(events, "example.com/widget", &[id]);
        times.push(t1 - t0);
    }
    times.sort();
    times
}

/// What an idle process costs: RSS (all and anonymous), threads, CPU %, and per second wakeups,
/// those of spookd's own threads (the rest are gRPC core's), and preemptions.
struct Idle {
    rss: u64,
    anon: u64,
    threads: u64,
    cpu_pct: f64,
    wakeups: f64,
    own_wakeups: f64,
    preemptions: f64,
    /// CPU ns over the window, and how far a counter of the caller's moved in it.
    cpu_ns: u64,
    counted: u64,
}

/// Idle figures of `p`: RSS and threads after `settle`, then over the next `IDLE_WINDOW` CPU,
/// wakeups (voluntary context switches) and preemptions (involuntary ones).
fn idle_figures(p: &Proc, settle: Duration) -> Idle {
    counted_figures(p, settle, &std::sync::atomic::AtomicU64::new(0))
}

/// `idle_figures`, counting how far `counter` moves in the window.
fn counted_figures(p: &Proc, settle: Duration, counter: &std::sync::atomic::AtomicU64) -> Idle {
    use std::sync::atomic::Ordering::SeqCst;
    eprintln!("  (idling {settle:?}, then measuring for {IDLE_WINDOW:?})");
    std::thread::sleep(settle);
    let (rss, anon, threads) = (p.rss_kib(), p.anon_kib(), p.threads());
    let (cpu0, woken0, own0, preempted0) = p.cpu_and_switches();
    let n0 = counter.load(SeqCst);
    let t0 = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let (cpu1, woken1, own1, preempted1) = p.cpu_and_switches();
    let n1 = counter.load(SeqCst);
    let secs = t0.elapsed().as_secs_f64();
    Idle {
        rss,
        anon,
        threads,
        cpu_pct: (cpu1 - cpu0) as f64 / 1e9 / secs * 100.0,
        wakeups: (woken1 - woken0) as f64 / secs,
        // Threads come and go (gRPC's pool), so the sum can shrink: clamp at zero.
        own_wakeups: own1.saturating_sub(own0) as f64 / secs,
        preemptions: (preempted1 - preempted0) as f64 / secs,
        cpu_ns: cpu1.saturating_sub(cpu0),
        counted: n1.saturating_sub(n0),
    }
}

/// `n` devices of example.com/probed, each probing `target` with the default settings.
fn probed(n: usize, target: std::net::SocketAddr) -> String {
    let mut s = seed();
    for i in 0..n {
        s.push_str(&format!(
            "      - {{resourceName: example.com/probed, instanceID: \"p{i:04}\", healthCheck: {{tcp: \"{target}\"}}}}\n"
        ));
    }
    s
}

struct Row {
    figure: String,
    value: String,
    goal: &'static str,
}

/// Sections to run: all, or those named on the command line (e.g. `scripts/bench idle big`).
fn wanted(section: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|n| n == section)
}

/// The peak RSS (VmHWM, KiB) of a fresh process that parses `path` as the daemon does: this
/// binary started again in its parse mode (see `main`).
fn parse_peak_kib(path: &Path) -> (u64, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("SPOOKD_BENCH_PARSE", path)
        .envs(image_env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (kib, result) = text.trim().split_once(' ').unwrap_or(("0", ""));
    (kib.parse().unwrap_or(0), result.to_owned())
}

/// The kubelet's GetPreferredAllocation with `n` available and `n` must-include IDs, on `client`.
fn preferred_call(client: &DevicePluginClient, n: usize) -> Duration {
    use spookd::kubelet::proto::{ContainerPreferredAllocationRequest, PreferredAllocationRequest};
    let ids: Vec<String> = (0..n).map(|i| format!("d{i:05}")).collect();
    let mut c = ContainerPreferredAllocationRequest::new();
    c.available_deviceIDs = ids.clone();
    c.must_include_deviceIDs = ids;
    c.allocation_size = i32::try_from(n).unwrap_or(i32::MAX);
    let mut req = PreferredAllocationRequest::new();
    req.container_requests.push(c);
    let t0 = Instant::now();
    client
        .get_preferred_allocation(&req, CallOption::default().timeout(WAIT))
        .unwrap();
    t0.elapsed()
}

fn main() {
    // Parse mode: read and parse one config as the daemon does, print the peak RSS and the result.
    if let Some(path) = std::env::var_os("SPOOKD_BENCH_PARSE") {
        let result = spookd::source::file::read_config(Path::new(&path))
            .and_then(|text| Config::parse(&text, "bench"));
        let hwm = fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        println!("{hwm} {}", if result.is_ok() { "valid" } else { "refused" });
        return;
    }
    // The in-process figure (reload) runs under the image's allocator settings too: glibc reads
    // them only at start, so start again with them.
    let image = image_env();
    if image
        .iter()
        .any(|(k, v)| std::env::var(k).ok().as_deref() != Some(v.as_str()))
    {
        use std::os::unix::process::CommandExt;
        let err = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .envs(image)
            .exec();
        panic!("could not start again with the image's environment: {err}");
    }
    let bin = std::env::var_os("SPOOKD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_spookd")));
    let mut rows: Vec<Row> = Vec::new();
    let mut json: BTreeMap<&str, String> = BTreeMap::new();
    let mut row = |figure: String, value: String, goal: &'static str| {
        eprintln!("  {figure}: {value}");
        rows.push(Row {
            figure,
            value,
            goal,
        });
    };

    row(
        "CPUs gRPC core counts".into(),
        match grpc_cpus_file() {
            Some(_) => "1: the manifests' spookd-grpc-cpus, mounted as the DaemonSets do".into(),
            None => format!(
                "this machine's ({}; no mount namespace here for the manifests' file: needs root \
                 with CAP_SYS_ADMIN)",
                fs::read_to_string(spookd::daemon::CPU_LIST)
                    .ok()
                    .and_then(|t| spookd::daemon::cpus_in(&t))
                    .map_or("count unknown".to_owned(), |n| format!("{n} CPUs"))
            ),
        },
        "report",
    );
    let mut idle_rss: Option<u64> = None;
    let binary = fs::metadata(&bin).unwrap().len();
    row(
        "binary size (stripped, static)".into(),
        format!("{:.2} MiB", binary as f64 / 1048576.0),
        "≤ 8 MiB",
    );
    json.insert("binary_bytes", binary.to_string());
    // The aarch64 binary the arm64 image ships, where scripts/build-image --arch arm64 built it.
    let arm64 = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image/spookd-arm64");
    match fs::metadata(&arm64) {
        Ok(m) => {
            row(
                "binary size, aarch64 (stripped, static)".into(),
                format!("{:.2} MiB", m.len() as f64 / 1048576.0),
                "≤ 8 MiB",
            );
            json.insert("binary_bytes_arm64", m.len().to_string());
        }
        Err(_) => row(
            "binary size, aarch64 (stripped, static)".into(),
            "not built (scripts/build-image --arch arm64)".into(),
            "≤ 8 MiB",
        ),
    }

    if wanted("start") {
        // Start → all registered (seed config: 2 resources), fresh process each time.
        let mut starts = Vec::new();
        for _ in 0..10 {
            let d = Dir::new("start");
            let k = Kubelet::start(&d.dp()).unwrap();
            let v = util::ConfigVolume::new(d.0.join("cm"), &seed());
            let (c, dp) = (v.path().display().to_string(), d.dp().display().to_string());
            let t0 = Instant::now();
            let p = Proc::start_bare(&bin, &file_args(&c, &dp, "1s"), &d.0.join("log"));
            let last = wait_register_calls(&k, 2);
            starts.push(last - t0);
            drop(p);
        }
        starts.sort();
        row(
            "start → all registered (exec included, no CPU-list wrapper), median of 10".into(),
            format!("{:.1} ms", ms(percentile(&starts, 0.5))),
            "≤ 10 ms",
        );
        json.insert(
            "start_registered_ms_p50",
            format!("{:.2}", ms(percentile(&starts, 0.5))),
        );
    }

    if wanted("idle") {
        // Idle with the seed config at the default poll interval.
        let d = Dir::new("idle");
        let mut k = Kubelet::start(&d.dp()).unwrap();
        let v = util::ConfigVolume::new(d.0.join("cm"), &seed());
        let (c, dp) = (v.path().display().to_string(), d.dp().display().to_string());
        // The default interval, as a DaemonSet runs it.
        let poll = spookd::cli::DEFAULT_POLL_INTERVAL.as_secs().to_string() + "s";
        let p = Proc::start(&bin, &file_args(&c, &dp, &poll), &d.0.join("log"));
        wait_register_calls(&k, 2);
        assert!(k.wait_until(WAIT, |k| k
            .plugins()
            .values()
            .filter(|p| p.devices.is_some())
            .count()
            == 2));
        let Idle {
            rss,
            anon,
            threads,
            cpu_pct,
            wakeups,
            own_wakeups,
            preemptions,
            ..
        } = idle_figures(&p, Duration::from_secs(10));
        idle_rss = Some(rss);
        row(
            "idle RSS after 10 s (seed config): anonymous / all".into(),
            format!(
                "{:.2} MiB / {:.2} MiB",
                anon as f64 / 1024.0,
                rss as f64 / 1024.0
            ),
            "≤ 1 MiB / ≤ 6 MiB",
        );
        json.insert("idle_anon_kib", anon.to_string());
        row(
            "threads, idle (seed config)".into(),
            threads.to_string(),
            "report",
        );
        json.insert("idle_rss_kib", rss.to_string());
        json.insert("idle_threads", threads.to_string());
        row(
            format!("idle CPU over {IDLE_WINDOW:?} (poll {poll}, the default)"),
            format!("{cpu_pct:.4} % of a core"),
            "≤ 0.01 %",
        );
        row(
            "idle wakeups (voluntary context switches)".into(),
            format!("{wakeups:.2} /s, spookd's own threads {own_wakeups:.2} (+ {preemptions:.2} preempted)"),
            "≤ 1.5 /s (own ≤ 0.2 /s)",
        );
        json.insert("idle_cpu_percent", format!("{cpu_pct:.5}"));
        json.insert("idle_wakeups_per_s", format!("{wakeups:.3}"));
        json.insert("idle_own_wakeups_per_s", format!("{own_wakeups:.3}"));
        json.insert("idle_preemptions_per_s", format!("{preemptions:.3}"));

        // Kubelet restarts: kubelet.sock re-created → every resource registered again.
        let mut restarts = Vec::new();
        for _ in 0..25 {
            let before = k.register_calls().len();
            let at = k.restart().unwrap();
            let last = wait_register_calls(&k, before + 2);
            restarts.push(last.saturating_duration_since(at));
            assert!(k.wait_until(WAIT, |k| k.plugins().len() == 2));
            std::thread::sleep(Duration::from_millis(20));
        }
        restarts.sort();
        let (med, max) = (percentile(&restarts, 0.5), *restarts.last().unwrap());
        row(
            "kubelet.sock re-created → all re-registered (25 restarts)".into(),
            format!("median {:.1} ms, max {:.1} ms", ms(med), ms(max)),
            "≤ 10 ms median, ≤ 50 ms max",
        );
        json.insert("reregister_ms_p50", format!("{:.2}", ms(med)));
        json.insert("reregister_ms_max", format!("{:.2}", ms(max)));

        // Allocate from a Rust client on one connection.
        assert!(k.wait_until(WAIT, |k| k.plugins().values().all(|p| p.devices.is_some())));
        let client: Arc<DevicePluginClient> = k.plugin_client("example.com/widget").unwrap();
        let mut req = AllocateRequest::new();
        let mut c = ContainerAllocateRequest::new();
        c.devices_ids = vec!["0001".into()];
        req.container_requests.push(c);
        let call = |client: &DevicePluginClient| {
            client
                .allocate(&req, CallOption::default().timeout(WAIT))
                .unwrap();
        };
        for _ in 0..200 {
            call(&client);
        }
        let n = 5000;
        let mut lat = Vec::with_capacity(n);
        let t = Instant::now();
        for _ in 0..n {
            let s = Instant::now();
            call(&client);
            lat.push(s.elapsed());
        }
        let seq_rate = n as f64 / t.elapsed().as_secs_f64();
        lat.sort();
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..n / 4 {
                        call(&client);
                    }
                });
            }
        });
        let conc_rate = n as f64 / t.elapsed().as_secs_f64();
        let value = percentiles(&mut json, ["allocate_ms_p50", "allocate_ms_p99"], &lat, 3);
        row(
            "Allocate latency, sequential, one connection".into(),
            value,
            "p99 ≤ 1 ms",
        );
        row(
            "Allocate calls/s, sequential / 4 concurrent".into(),
            format!("{seq_rate:.0} / {conc_rate:.0}"),
            "≥ 5,000/s",
        );
        json.insert("allocate_per_s_seq", format!("{seq_rate:.0}"));
        json.insert("allocate_per_s_4", format!("{conc_rate:.0}"));
        drop(client);
        drop(p);
        drop(k);
    }

    if wanted("file") {
        // The kubelet's `..data` swap → ListAndWatch push, default flags: inotify, not the
        // fallback poll, carries the change.
        let d = Dir::new("edit");
        let k = Kubelet::start(&d.dp()).unwrap();
        let (tx, events) = crossbeam_channel::unbounded();
        k.subscribe(tx);
        let mut v = util::ConfigVolume::new(d.0.join("cm"), &seed());
        let (c, dp) = (v.path().display().to_string(), d.dp().display().to_string());
        let poll = spookd::cli::DEFAULT_POLL_INTERVAL.as_secs().to_string() + "s";
        let p = Proc::start(&bin, &file_args(&c, &dp, &poll), &d.0.join("log"));
        wait_devices_event(&events, "example.com/widget", &["0001".into()]);
        // Edits at uneven gaps, as people make them.
        let edits = time_pushes(
            &events,
            "e",
            |i| {
                std::thread::sleep(Duration::from_millis(37 + (i as u64 * 13) % 100));
            },
            |config| v.write(config),
        );
        let value = percentiles(
            &mut json,
            ["file_push_ms_p50", "file_push_ms_p99"],
            &edits,
            1,
        );
        row(
            format!("`..data` swap → ListAndWatch push (default flags: poll {poll}), 60 edits"),
            value,
            "p99 ≤ 20 ms",
        );
        drop(p);
        drop(k);
    }

    if wanted("api") {
        // API event → ListAndWatch push, with the HTTPS API stand-in.
        let d = Dir::new("api");
        let k = Kubelet::start(&d.dp()).unwrap();
        let (tx, events) = crossbeam_channel::unbounded();
        k.subscribe(tx);
        let pki = apiserver::Pki::new("bench CA");
        let api = apiserver::ApiServer::start(&pki, "spookd", "cm", "t");
        api.set(&seed());
        fs::write(d.0.join("token"), "t").unwrap();
        fs::write(d.0.join("ca.crt"), &pki.ca_pem).unwrap();
        let (url, dp) = (api.url(), d.dp().display().to_string());
        let (token, ca) = (
            d.0.join("token").display().to_string(),
            d.0.join("ca.crt").display().to_string(),
        );
        let args = [
            "--configmap",
            "spookd/cm",
            "--api-server",
            &url,
            "--token-file",
            &token,
            "--ca-file",
            &ca,
            "--node-name",
            NODE,
            "--device-plugin-dir",
            &dp,
        ];
        let p = Proc::start(&bin, &args, &d.0.join("log"));
        wait_devices_event(&events, "example.com/widget", &["0001".into()]);
        assert!(api.wait_watchers(1, WAIT));
        let pushes = time_pushes(
            &events,
            "a",
            |_| std::thread::sleep(Duration::from_millis(20)),
            |config| {
                let t0 = Instant::now();
                api.set(config);
                t0
            },
        );
        let value = percentiles(
            &mut json,
            ["api_push_ms_p50", "api_push_ms_p99"],
            &pushes,
            2,
        );
        row(
            "API event → ListAndWatch push (60 events)".into(),
            value,
            "p99 ≤ 50 ms",
        );
        drop(p);
        drop(api);
        drop(k);
    }

    if wanted("probes") {
        // 1,000 devices probed at the default 10 s interval, against a local listener that
        // accepts (and drops) every connection.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let acceptor = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(conn);
                }
            })
        };
        let d = Dir::new("probes");
        let k = Kubelet::start(&d.dp()).unwrap();
        let v = util::ConfigVolume::new(d.0.join("cm"), &probed(1000, target));
        let (c, dp) = (v.path().display().to_string(), d.dp().display().to_string());
        let poll = spookd::cli::DEFAULT_POLL_INTERVAL.as_secs().to_string() + "s";
        let p = Proc::start(&bin, &file_args(&c, &dp, &poll), &d.0.join("log"));
        wait_register_calls(&k, 3);
        let Idle {
            rss,
            threads,
            cpu_pct,
            wakeups,
            own_wakeups,
            preemptions,
            cpu_ns,
            counted: probes,
            ..
        } = counted_figures(&p, Duration::from_secs(10), &accepted);
        let healthy = k
            .plugins()
            .get("example.com/probed")
            .and_then(|p| p.devices.clone())
            .map_or(0, |d| d.iter().filter(|(_, h)| h == "Healthy").count());
        let over_idle = idle_rss.map_or("(run `idle` for the idle RSS)".to_owned(), |idle| {
            format!(
                "idle + {:.2} KiB a device",
                (rss as f64 - idle as f64) / 1000.0
            )
        });
        row(
            "1,000 probed devices (10 s interval): RSS / threads".into(),
            format!("{:.2} MiB, {over_idle} / {threads}", rss as f64 / 1024.0),
            "≤ idle + 1 KiB a device",
        );
        let probes_f = probes.max(1) as f64;
        let secs = IDLE_WINDOW.as_secs_f64();
        row(
            format!("1,000 probed devices: {probes} probes in {IDLE_WINDOW:?}: CPU and own wakeups a probe"),
            format!(
                "{:.1} µs (kernel included), {:.3} own wakeups",
                cpu_ns as f64 / 1000.0 / probes_f,
                own_wakeups * secs / probes_f
            ),
            "report µs; ≤ 0.1 own wakeups a probe",
        );
        row(
            "1,000 probed devices: CPU / wakeups, the process".into(),
            format!("{cpu_pct:.4} % of a core / {wakeups:.2} /s, spookd's own {own_wakeups:.2} (+ {preemptions:.1} preempted)"),
            "report",
        );
        json.insert("probes_1k_probes", probes.to_string());
        json.insert(
            "probes_1k_cpu_us_per_probe",
            format!("{:.2}", cpu_ns as f64 / 1000.0 / probes_f),
        );
        json.insert(
            "probes_1k_own_wakeups_per_probe",
            format!("{:.4}", own_wakeups * secs / probes_f),
        );
        json.insert("probes_1k_rss_kib", rss.to_string());
        json.insert("probes_1k_threads", threads.to_string());
        json.insert("probes_1k_cpu_percent", format!("{cpu_pct:.5}"));
        json.insert("probes_1k_wakeups_per_s", format!("{wakeups:.3}"));
        json.insert("probes_1k_own_wakeups_per_s", format!("{own_wakeups:.3}"));
        json.insert("probes_1k_preemptions_per_s", format!("{preemptions:.3}"));
        json.insert("probes_1k_healthy", healthy.to_string());
        drop(p);
        drop(k);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(target);
        let _ = acceptor.join();
    }

    if wanted("big") {
        // 200 resources × 50 devices, all registered.
        let d = Dir::new("big");
        let k = Kubelet::start(&d.dp()).unwrap();
        let mut v = util::ConfigVolume::new(d.0.join("cm"), &big(200, 50));
        let (c, dp) = (v.path().display().to_string(), d.dp().display().to_string());
        let t0 = Instant::now();
        let p = Proc::start(&bin, &file_args(&c, &dp, "1s"), &d.0.join("log"));
        let last = wait_register_calls(&k, 200);
        let big_start = last - t0;
        assert!(k.wait_until(WAIT, |k| k
            .plugins()
            .values()
            .filter(|p| p.devices.as_ref().is_some_and(|d| d.len() == 50))
            .count()
            == 200));
        std::thread::sleep(Duration::from_secs(2));
        let (rss, threads) = (p.rss_kib(), p.threads());
        row(
            "RSS, 200 resources × 50 devices, all registered".into(),
            format!("{:.2} MiB", rss as f64 / 1024.0),
            "≤ 24 MiB",
        );
        // Users edit configs: the same after four reloads (every resource's list changes each time).
        for n in [49, 50, 49, 50] {
            v.write(&big(200, n));
            assert!(k.wait_until(WAIT, |k| k
                .plugins()
                .values()
                .filter(|p| p.devices.as_ref().is_some_and(|d| d.len() == n))
                .count()
                == 200));
        }
        std::thread::sleep(Duration::from_secs(2));
        let reloaded = p.rss_kib();
        row(
            "RSS, 200 × 50, after 4 reloads of the whole config".into(),
            format!("{:.2} MiB", reloaded as f64 / 1024.0),
            "≤ 24 MiB",
        );
        json.insert("big_reloaded_rss_kib", reloaded.to_string());
        row(
            "threads at 200 resources".into(),
            threads.to_string(),
            "no growth per resource",
        );
        row(
            "start → 200 resources registered".into(),
            format!("{:.1} ms", ms(big_start)),
            "report",
        );
        json.insert("big_rss_kib", rss.to_string());
        json.insert("big_threads", threads.to_string());
        json.insert("big_start_registered_ms", format!("{:.1}", ms(big_start)));
        drop(p);
        drop(k);
    }

    if wanted("sizing") {
        // The sizing table: the daemon's peak RSS (VmHWM) over its start and two reloads of the
        // whole config, at 100, 1,000 and 10,000 devices (each with two env keys).
        for (resources, devices) in [(10, 10), (20, 50), (200, 50)] {
            let n = resources * devices;
            let d = Dir::new(&format!("sizing{n}"));
            let k = Kubelet::start(&d.dp()).unwrap();
            let mut v = util::ConfigVolume::new(d.0.join("cm"), &big(resources, devices));
            let (c, dp) = (v.path().display().to_string(), d.dp().display().to_string());
            let p = Proc::start(&bin, &file_args(&c, &dp, "30s"), &d.0.join("log"));
            wait_register_calls(&k, resources);
            for m in [devices - 1, devices] {
                v.write(&big(resources, m));
                assert!(k.wait_until(WAIT, |k| k
                    .plugins()
                    .values()
                    .filter(|p| p.devices.as_ref().is_some_and(|d| d.len() == m))
                    .count()
                    == resources));
            }
            std::thread::sleep(Duration::from_millis(500));
            let (hwm, rss) = (p.status_field("VmHWM:"), p.rss_kib());
            row(
                format!("sizing: {n} devices ({resources} × {devices}), start + 2 reloads"),
                format!(
                    "peak {:.1} MiB, then {:.1} MiB",
                    hwm as f64 / 1024.0,
                    rss as f64 / 1024.0
                ),
                "report (limit 64Mi)",
            );
            json.insert(
                Box::leak(format!("sizing_hwm_kib_{n}").into_boxed_str()),
                hwm.to_string(),
            );
            drop(p);
            drop(k);
        }
    }

    if wanted("dra") {
        // `--dra` as the leader: the peak RSS (VmHWM) of publishing a pool through the HTTPS API
        // stand-in, then of republishing it all at the next generation after a config edit
        // (every slice rewritten). No kubelet: the publisher does not need one. Three configs near
        // a ConfigMap's 1 MiB: 10,000 devices with two env keys (four attributes each), the most
        // devices a config may hold (20,000, two resources) with none, and the most attributes.
        let minimal = |prefix: &str| {
            let mut s = format!("deviceMapping:\n  - hosts: [{NODE}]\n    devices:\n");
            for r in ["a", "b"] {
                for d in 0..10_000 {
                    s.push_str(&format!(
                        "      - {{resourceName: b.io/{r}, instanceID: {prefix}{d:04}}}\n"
                    ));
                }
            }
            s
        };
        // The most attributes a device may have (32: its two and 30 env keys), on 2,000 devices
        // (about as many as the parser's token bound lets through).
        let wide = |value: &str| {
            let env: Vec<String> = (0..30).map(|k| format!("K{k:02}: {value}")).collect();
            let mut s = format!("deviceMapping:\n  - hosts: [{NODE}]\n    devices:\n");
            for d in 0..2_000 {
                s.push_str(&format!(
                    "      - {{resourceName: b.io/a, instanceID: d{d:04}, env: {{{}}}}}\n",
                    env.join(", ")
                ));
            }
            s
        };
        // The same config in flow style: not in the layout parsed in pieces, so parsed whole
        // (what an anchored, JSON or CRLF config costs).
        let flow = |block: &str| {
            let devices: Vec<&str> = (block.lines())
                .filter_map(|l| l.strip_prefix("      - "))
                .collect();
            format!(
                "deviceMapping: [{{hosts: [{NODE}], devices: [\n{}]}}]\n",
                devices.join(",\n")
            )
        };
        let cases = [
            (
                10_000,
                big(200, 50),
                // Every device's IP changes (an attribute): every slice changes.
                big(200, 50).replace("IP: 127.0.0.1", "IP: 127.0.0.2"),
            ),
            (20_000, minimal("d"), minimal("e")),
            (2_000, wide("v"), wide("w")),
        ];
        let flows: Vec<(usize, String, String)> = (cases.iter())
            .map(|(n, c, e)| (*n, flow(c), flow(e)))
            .collect();
        for (n, config, edited) in cases.into_iter().chain(flows) {
            let style = if config.starts_with("deviceMapping: [") {
                "flow style, parsed whole"
            } else {
                "block"
            };
            let d = Dir::new(&format!("dra{n}{}", style.len()));
            let pki = apiserver::Pki::new("bench CA");
            let api = apiserver::ApiServer::start(&pki, "spookd", "unused", "t");
            fs::write(d.0.join("token"), "t").unwrap();
            fs::write(d.0.join("ca.crt"), &pki.ca_pem).unwrap();
            let mut v = util::ConfigVolume::new(d.0.join("cm"), &config);
            let path = |p: &str| d.0.join(p).display().to_string();
            let (c, url) = (v.path().display().to_string(), api.url());
            let (token, ca, plugins, registry, cdi) = (
                path("token"),
                path("ca.crt"),
                path("plugins"),
                path("registry"),
                path("cdi"),
            );
            let args = [
                "--dra",
                "--config",
                &c,
                "--node-name",
                NODE,
                "--api-server",
                &url,
                "--token-file",
                &token,
                "--ca-file",
                &ca,
                "--lease-namespace",
                "spookd",
                "--kubelet-plugins-dir",
                &plugins,
                "--kubelet-registry-dir",
                &registry,
                "--cdi-dir",
                &cdi,
            ];
            let t0 = Instant::now();
            let p = Proc::start(&bin, &args, &d.0.join("log"));
            let at = |generation: i64| {
                move |s: &BTreeMap<String, serde_yaml::Value>| {
                    let count: usize = (s.values())
                        .filter(|o| o["spec"]["pool"]["generation"] == generation)
                        .map(|o| o["spec"]["devices"].as_sequence().map_or(0, Vec::len))
                        .sum();
                    count == n
                }
            };
            // How long since `t` until every device is at `generation`, and the peak RSS then.
            let published = |generation: i64, t: Instant| {
                assert!(
                    api.wait_objects("resourceslices", Duration::from_secs(120), at(generation)),
                    "not published at generation {generation}: {}",
                    fs::read_to_string(d.0.join("log")).unwrap_or_default()
                );
                let took = t.elapsed();
                std::thread::sleep(Duration::from_millis(500));
                (took, p.status_field("VmHWM:"))
            };
            let (first, hwm1) = published(1, t0);
            let slices = api.objects("resourceslices").len();
            let t1 = Instant::now();
            v.write(&edited);
            let (second, hwm2) = published(2, t1);
            let rss = p.rss_kib();
            row(
                format!(
                    "DRA leader: {n} devices ({} KB config, {style}) in {slices} ResourceSlices, published then republished",
                    config.len() / 1000
                ),
                format!(
                    "{:.1} s then {:.1} s; peak {:.1} then {:.1} MiB, then {:.1} MiB",
                    first.as_secs_f64(),
                    second.as_secs_f64(),
                    hwm1 as f64 / 1024.0,
                    hwm2 as f64 / 1024.0,
                    rss as f64 / 1024.0
                ),
                "report (DRA limit 64Mi)",
            );
            let key = if style == "block" {
                format!("dra_hwm_kib_{n}")
            } else {
                format!("dra_hwm_kib_{n}_flow")
            };
            json.insert(Box::leak(key.into_boxed_str()), hwm2.to_string());
            drop(p);
            drop(api);
        }
    }

    if wanted("reload") {
        // Reload cost at 10,000 devices: parse + validate + diff + push, in process.
        let (small, large) = (big(200, 49), big(200, 50));
        let mut reloads = Vec::new();
        let mut parses = Vec::new();
        for i in 0..10 {
            let mut state = State::new(
                NodeName::try_from(NODE.to_owned()).unwrap(),
                NullBackend,
                Instant::now(),
            );
            let first = Config::parse(small.as_bytes(), "bench").unwrap();
            state.handle(
                Msg::Config {
                    origin: "bench".into(),
                    config: first,
                },
                Instant::now(),
            );
            let mut streams = Vec::new();
            for r in 0..200 {
                let (stx, srx) = spookd::latest::channel();
                let resource =
                    ResourceName::try_from(format!("bench.example.com/r{r:03}")).unwrap();
                state.handle(
                    Msg::Watch {
                        resource,
                        server: r,
                        stream: stx,
                    },
                    Instant::now(),
                );
                streams.push(srx);
            }
            let text = if i % 2 == 0 { &large } else { &small };
            let t = Instant::now();
            let config = Config::parse(text.as_bytes(), "bench").unwrap();
            parses.push(t.elapsed());
            state.handle(
                Msg::Config {
                    origin: "bench".into(),
                    config,
                },
                Instant::now(),
            );
            reloads.push(t.elapsed());
            assert!(streams.iter_mut().all(|s| s.newest().is_some()));
        }
        reloads.sort();
        parses.sort();
        row(
            "reload at 10,000 devices (parse+validate+diff+push), median".into(),
            format!("{:.1} ms", ms(percentile(&reloads, 0.5))),
            "≤ 50 ms",
        );
        row(
            "  of which parse (serde_yaml + checks), median".into(),
            format!("{:.1} ms", ms(percentile(&parses, 0.5))),
            "report",
        );
        json.insert(
            "reload_10k_ms_p50",
            format!("{:.2}", ms(percentile(&reloads, 0.5))),
        );
        json.insert(
            "reload_10k_parse_ms_p50",
            format!("{:.2}", ms(percentile(&parses, 0.5))),
        );
    }

    if wanted("hostile") {
        // What hostile input costs now (issue #16): the parse's peak memory at the largest
        // config, an alias bomb's, and answers under idle, slow and garbage clients.
        let d = Dir::new("hostile");
        let baseline = d.0.join("empty.yaml");
        fs::write(&baseline, "deviceMapping: []\n").unwrap();
        let (base_kib, _) = parse_peak_kib(&baseline);
        let largest = d.0.join("largest.yaml");
        let text = big(200, 50);
        fs::write(&largest, &text).unwrap();
        let (largest_kib, ok) = parse_peak_kib(&largest);
        row(
            format!(
                "parse peak (VmHWM) over a bare process, {} KiB config of 10,000 devices ({ok})",
                text.len() / 1024
            ),
            format!(
                "{:.1} MiB",
                largest_kib.saturating_sub(base_kib) as f64 / 1024.0
            ),
            "fits the 64 Mi limit",
        );
        json.insert(
            "parse_peak_10k_kib",
            largest_kib.saturating_sub(base_kib).to_string(),
        );
        let hosts: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        let devices: Vec<String> = (0..1000)
            .map(|i| format!("{{resourceName: a.io/x, instanceID: \"{i}\"}}"))
            .collect();
        let mut bomb = format!(
            "deviceMapping:\n- hosts: &H [{}]\n  devices: &D [{}]\n",
            hosts.join(", "),
            devices.join(", ")
        );
        while bomb.len() < 1_000_000 {
            bomb.push_str("- {hosts: *H, devices: *D}\n");
        }
        let bomb_path = d.0.join("bomb.yaml");
        fs::write(&bomb_path, &bomb).unwrap();
        let t0 = Instant::now();
        let (bomb_kib, ok) = parse_peak_kib(&bomb_path);
        let bomb_time = t0.elapsed();
        row(
            format!("parse peak, 1 MB alias bomb ({ok}; was 1.9 GB)"),
            format!(
                "{:.1} MiB in {:.0} ms",
                bomb_kib.saturating_sub(base_kib) as f64 / 1024.0,
                ms(bomb_time)
            ),
            "fits the 64 Mi limit",
        );
        json.insert(
            "parse_peak_bomb_kib",
            bomb_kib.saturating_sub(base_kib).to_string(),
        );

        let k = Kubelet::start(&d.dp()).unwrap();
        let v = util::ConfigVolume::new(d.0.join("cm"), &seed());
        let (c, dp) = (v.path().display().to_string(), d.dp().display().to_string());
        let mut args = file_args(&c, &dp, "1s");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        args.extend(["--metrics-addr", &addr]);
        let p = Proc::start(&bin, &args, &d.0.join("log"));
        wait_register_calls(&k, 2);
        let healthz = || -> Duration {
            use std::io::{Read, Write};
            let t0 = Instant::now();
            let mut conn = std::net::TcpStream::connect(&addr).unwrap();
            conn.set_read_timeout(Some(WAIT)).unwrap();
            conn.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            let _ = conn.read_to_end(&mut answer);
            t0.elapsed()
        };
        std::thread::sleep(Duration::from_millis(200));
        let _idle: Vec<std::net::TcpStream> = (0..500)
            .map(|_| std::net::TcpStream::connect(&addr).unwrap())
            .collect();
        let mut slow: Vec<std::net::TcpStream> = (0..20)
            .map(|_| std::net::TcpStream::connect(&addr).unwrap())
            .collect();
        let mut times = Vec::new();
        for i in 0..50 {
            if i % 10 == 0 {
                for c in &mut slow {
                    let _ = std::io::Write::write_all(c, b"G");
                }
                for _ in 0..20 {
                    let mut c = std::net::TcpStream::connect(&addr).unwrap();
                    let _ = std::io::Write::write_all(&mut c, b"\x00garbage\r\n\r\n");
                }
            }
            times.push(healthz());
        }
        times.sort();
        row(
            "/healthz under 500 idle, 20 byte-a-second and garbage clients: p50 / p99".into(),
            format!(
                "{:.2} ms / {:.2} ms",
                ms(percentile(&times, 0.5)),
                ms(percentile(&times, 0.99))
            ),
            "≤ 100 ms (was 9.4 s with 5 idle)",
        );
        json.insert(
            "healthz_hostile_ms_p99",
            format!("{:.3}", ms(percentile(&times, 0.99))),
        );
        let client = k.plugin_client("example.com/widget").unwrap();
        let mut pref: Vec<Duration> = (0..5).map(|_| preferred_call(&client, 20_000)).collect();
        pref.sort();
        row(
            "GetPreferredAllocation, 20,000 available and must-include IDs, median of 5".into(),
            format!("{:.1} ms", ms(percentile(&pref, 0.5))),
            "report (was 6.3 s)",
        );
        json.insert(
            "preferred_20k_ms_p50",
            format!("{:.2}", ms(percentile(&pref, 0.5))),
        );
        drop(p);
        drop(k);
    }

    // The table.
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "\nspookd benchmark — {} ({cores} cores, {cpu})",
        bin.display()
    );
    let env: Vec<String> = image_env()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "the bench and the processes it measures run with the image's environment: {}\n",
        env.join(" ")
    );
    let w = rows
        .iter()
        .map(|r| r.figure.chars().count())
        .max()
        .unwrap_or(0);
    let wv = rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(0);
    println!("| {:w$} | {:wv$} | goal |", "figure", "value");
    println!("|{}|{}|------|", "-".repeat(w + 2), "-".repeat(wv + 2));
    for r in &rows {
        println!("| {:w$} | {:wv$} | {} |", r.figure, r.value, r.goal);
    }
    let line: Vec<String> = json.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    println!("\nBENCH {{{}}}", line.join(","));
    if let Some(cpus) = grpc_cpus_file() {
        let _ = fs::remove_file(cpus);
    }
}

/// Side effects that cost nothing, for the in-process reload figure.
struct NullBackend;

impl Backend for NullBackend {
    type Server = ();
    type Error = std::convert::Infallible;
    fn start(&mut self, _: &ResourceName, id: u64) -> Result<((), String), Self::Error> {
        Ok(((), format!("s-{id}")))
    }
    fn register(&mut self, _: &ResourceName, _: &str) {}
    fn forget(&mut self, _: &ResourceName) {}
    fn socket_exists(&self, _: &str) -> bool {
        true
    }
    fn kubelet_socket(&self) -> Option<u64> {
        Some(1)
    }
    fn set_probes(&mut self, _: spookd::state::msg::ProbeSet) {}
    fn set_served_resources(&mut self, _: std::collections::BTreeSet<ResourceName>) {}
    fn exclusive(&self) -> bool {
        false
    }
    fn leases(&mut self, _: spookd::state::msg::LeaseCmd) {}
}
