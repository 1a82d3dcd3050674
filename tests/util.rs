//! The harness: temp dirs, a ConfigMap-style config volume, the spookd process, the kubelet.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use crate::sim::Kubelet;

/// How long any wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The poll interval tests run spookd with.
pub const POLL: &str = "50ms";

/// A temporary directory, removed on drop. Kept short: Unix socket paths are limited to 108 bytes.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("spk-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A directory laid out as the kubelet lays out a ConfigMap volume: `config.yaml` links to
/// `..data/config.yaml`, `..data` links to a timestamped directory, and an update writes a new
/// directory and renames a new `..data` link over the old one (atomic), then removes the old one.
pub struct ConfigVolume {
    dir: PathBuf,
    version: usize,
}

impl ConfigVolume {
    pub fn new(dir: PathBuf, content: &str) -> ConfigVolume {
        fs::create_dir_all(&dir).unwrap();
        let mut v = ConfigVolume { dir, version: 0 };
        v.write(content);
        symlink("..data/config.yaml", v.dir.join("config.yaml")).unwrap();
        v
    }

    /// The path spookd is given.
    pub fn path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// Swaps in new content the kubelet's way; returns when the swap happened.
    pub fn write(&mut self, content: &str) -> Instant {
        self.write_bytes(content.as_bytes())
    }

    pub fn write_bytes(&mut self, content: &[u8]) -> Instant {
        self.version += 1;
        let new = format!(
            "..2026_11_26_00_00_{:02}.{}",
            self.version % 60,
            self.version
        );
        fs::create_dir(self.dir.join(&new)).unwrap();
        fs::write(self.dir.join(&new).join("config.yaml"), content).unwrap();
        let tmp = self.dir.join("..data_tmp");
        symlink(&new, &tmp).unwrap();
        let old = fs::read_link(self.dir.join("..data")).ok();
        fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let swapped = Instant::now();
        if let Some(old) = old {
            fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
        swapped
    }
}

/// A running spookd; killed on drop. Its stderr (the log) goes to a file.
pub struct Spookd {
    child: Child,
    log: PathBuf,
}

impl Spookd {
    /// Starts `spookd --config CONFIG --node-name NODE --device-plugin-dir DIR --poll-interval 50ms`.
    pub fn start(config: &Path, node: &str, dir: &Path, log: PathBuf) -> Spookd {
        Spookd::start_extra(config, node, dir, log, &[])
    }

    /// As [`Spookd::start`], with more arguments.
    pub fn start_extra(
        config: &Path,
        node: &str,
        dir: &Path,
        log: PathBuf,
        extra: &[&str],
    ) -> Spookd {
        let mut args = vec![
            "--config".as_ref(),
            config.as_os_str(),
            "--node-name".as_ref(),
            node.as_ref(),
            "--device-plugin-dir".as_ref(),
            dir.as_os_str(),
            "--poll-interval".as_ref(),
            POLL.as_ref(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        Spookd::start_args(&args, log)
    }

    pub fn start_args(args: &[&std::ffi::OsStr], log: PathBuf) -> Spookd {
        let file = fs::File::create(&log).unwrap();
        let child = spookd_command()
            .args(args)
            .env("RUST_LOG", "debug")
            .env_remove("NODE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Spookd { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// spookd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text` at least `count` times.
    pub fn wait_log(&self, text: &str, count: usize) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log().matches(text).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
        while start.elapsed() < WAIT {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "spookd did not exit within {WAIT:?} of SIGTERM\n{}",
            self.log()
        );
    }
}

impl Drop for Spookd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The program that runs spookd's binary in these tests, if any: `SPOOKD_TEST_RUNNER`
/// (`qemu-aarch64-static` for the aarch64 binary on an amd64 machine, scripts/test-arm64; cargo's
/// target runner runs the test binary itself the same way, but not what it starts).
pub fn runner() -> Option<std::ffi::OsString> {
    std::env::var_os("SPOOKD_TEST_RUNNER").filter(|r| !r.is_empty())
}

/// A command running spookd's binary (through the runner, where there is one).
pub fn spookd_command() -> Command {
    match runner() {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(env!("CARGO_BIN_EXE_spookd"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_spookd")),
    }
}

/// The same as words for a shell's `exec` (paths here hold no spaces or quotes).
pub fn spookd_words() -> String {
    match runner() {
        Some(runner) => format!(
            "{} {}",
            runner.to_string_lossy(),
            env!("CARGO_BIN_EXE_spookd")
        ),
        None => env!("CARGO_BIN_EXE_spookd").to_owned(),
    }
}

/// Whether `test` is skipped because spookd runs under emulation, where what it measures is not
/// spookd's (it says so): each such test is listed in docs/development.md, arm64 under emulation,
/// with the reason.
pub fn skipped_under_emulation(test: &str) -> bool {
    let skip = runner().is_some();
    if skip {
        eprintln!("{test}: skipped under emulation (docs/development.md)");
        // cargo counts it passed: scripts/test-arm64 lists these.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let _ = fs::create_dir_all(dir);
        let list = dir.join("skipped-under-emulation");
        let line = format!("{test}\n");
        let _ = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(list)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    }
    skip
}

/// A whole setup: temp dir, device-plugins dir with a kubelet stand-in, config volume, spookd.
pub struct Setup {
    pub tmp: TempDir,
    pub kubelet: Kubelet,
    pub config: ConfigVolume,
    pub spookd: Spookd,
}

impl Setup {
    pub fn new(node: &str, config: &str) -> Setup {
        Setup::with_args(node, config, &[])
    }

    pub fn with_args(node: &str, config: &str, extra: &[&str]) -> Setup {
        let tmp = TempDir::new();
        let dp = tmp.join("dp");
        fs::create_dir_all(&dp).unwrap();
        let kubelet = Kubelet::start(&dp).unwrap();
        let config = ConfigVolume::new(tmp.join("cm"), config);
        let spookd = Spookd::start_extra(&config.path(), node, &dp, tmp.join("spookd.log"), extra);
        Setup {
            tmp,
            kubelet,
            config,
            spookd,
        }
    }

    pub fn dp(&self) -> PathBuf {
        self.tmp.join("dp")
    }

    /// Waits until `resource` lists exactly `ids`; on failure shows what was seen and the log.
    pub fn expect_devices(&self, resource: &str, ids: &[&str]) {
        if let Err(seen) = self.kubelet.wait_devices(resource, ids, WAIT) {
            panic!(
                "{resource}: expected devices {ids:?}, last seen {seen:?}\n--- spookd log ---\n{}",
                self.spookd.log()
            );
        }
    }

    /// Waits until exactly `resources` are registered and have sent a list.
    pub fn expect_resources(&self, resources: &[&str]) {
        let ok = self.kubelet.wait_until(WAIT, |k| {
            let plugins = k.plugins();
            plugins
                .keys()
                .map(String::as_str)
                .eq(resources.iter().copied())
                && plugins.values().all(|p| p.devices.is_some())
        });
        assert!(
            ok,
            "expected resources {resources:?}, have {:?}\n--- spookd log ---\n{}",
            self.kubelet.plugins().keys().collect::<Vec<_>>(),
            self.spookd.log()
        );
    }

    /// The `spookd-*` files in the device-plugins dir, sorted.
    pub fn own_sockets(&self) -> Vec<String> {
        own_sockets(&self.dp())
    }
}

/// This process runs as root (tests that need mounts or rootful podman skip otherwise).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

pub fn own_sockets(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("spookd-"))
        .collect();
    names.sort();
    names
}

/// The seed's example: two resources on node1, one device each, and devices of another node.
pub const SEED: &str = r#"
deviceMapping:
  - hosts: [node1, node2]
    devices:
      - resourceName: example.com/widget
        instanceID: "0001"
        env:
          IP: 192.168.0.200
          PORT: 12345
      - resourceName: example.com/thingamajig
        instanceID: "0001"
  - hosts: [node3]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0001"
"#;
