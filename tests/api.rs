//! The ConfigMap source against the HTTPS API server stand-in.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::apiserver::{ApiServer, Fault, Pki};
use crate::util::{Kubelet, Spookd, TempDir, SEED, WAIT};

const NS: &str = "spookd";
const NAME: &str = "spookd-device-plugin";

struct ApiSetup {
    tmp: TempDir,
    kubelet: Kubelet,
    api: ApiServer,
    spookd: Spookd,
    token_file: PathBuf,
}

impl ApiSetup {
    /// The server presents `server_pki`'s certificate; spookd trusts `trusted`'s CA only.
    fn new(server_pki: &Pki, trusted: &Pki, initial: Option<&str>, extra: &[&str]) -> ApiSetup {
        let tmp = TempDir::new();
        let dp = tmp.join("dp");
        fs::create_dir_all(&dp).unwrap();
        let kubelet = Kubelet::start(&dp).unwrap();
        let api = ApiServer::start(server_pki, NS, NAME, "token-1");
        if let Some(text) = initial {
            api.set(text);
        }
        let token_file = tmp.join("token");
        fs::write(&token_file, "token-1\n").unwrap();
        let ca_file = tmp.join("ca.crt");
        fs::write(&ca_file, &trusted.ca_pem).unwrap();
        let url = api.url();
        let configmap = format!("{NS}/{NAME}");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--configmap".as_ref(),
            configmap.as_ref(),
            "--api-server".as_ref(),
            url.as_ref(),
            "--token-file".as_ref(),
            token_file.as_os_str(),
            "--ca-file".as_ref(),
            ca_file.as_os_str(),
            "--node-name".as_ref(),
            "node1".as_ref(),
            "--device-plugin-dir".as_ref(),
            dp.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let spookd = Spookd::start_args(&args, tmp.join("spookd.log"));
        ApiSetup {
            tmp,
            kubelet,
            api,
            spookd,
            token_file,
        }
    }

    fn expect_devices(&self, resource: &str, ids: &[&str]) {
        if let Err(seen) = self.kubelet.wait_devices(resource, ids, WAIT) {
            panic!(
                "{resource}: expected {ids:?}, last seen {seen:?}\n--- spookd log ---\n{}",
                self.spookd.log()
            );
        }
    }

    fn wait_watch(&self) {
        assert!(
            self.api.wait_watchers(1, WAIT),
            "no watch opened\n{}",
            self.spookd.log()
        );
    }

    fn lists(&self) -> usize {
        self.api.requests().iter().filter(|r| !r.is_watch()).count()
    }
}

fn widget(id: &str) -> String {
    SEED.replace("\"0001\"\n        env", &format!("\"{id}\"\n        env"))
}

#[test]
fn serves_the_configmap_and_follows_its_changes_through_the_watch() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, Some(SEED), &[]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.expect_devices("example.com/thingamajig", &["0001"]);
    s.wait_watch();
    s.api.set(&widget("0002"));
    s.expect_devices("example.com/widget", &["0002"]);

    let requests = s.api.requests();
    let list = &requests[0];
    assert_eq!(
        list.target,
        format!("/api/v1/namespaces/{NS}/configmaps?fieldSelector=metadata.name%3D{NAME}")
    );
    assert_eq!(list.authorization, "Bearer token-1");
    let watch = requests.iter().find(|r| r.is_watch()).unwrap();
    assert!(
        watch.target.contains("allowWatchBookmarks=true"),
        "{}",
        watch.target
    );
    assert!(
        watch.target.contains("timeoutSeconds=60"),
        "{}",
        watch.target
    );
    assert!(
        watch.target.contains("resourceVersion=101"),
        "{}",
        watch.target
    );
    assert!(requests
        .iter()
        .all(|r| r.target.contains(&format!("metadata.name%3D{NAME}"))));
    assert_eq!(s.lists(), 1, "changes come through the watch, not relists");
}

#[test]
fn bookmarks_advance_the_version_and_410_means_list_again() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, Some(SEED), &["--watch-timeout", "1s"]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.wait_watch();
    s.api.bookmark(); // version 102
                      // The 1 s watch ends normally; the next one resumes from the bookmark's version.
    assert!(
        s.api.wait_requests(WAIT, |r| r
            .iter()
            .any(|r| r.is_watch() && r.target.ends_with("resourceVersion=102"))),
        "{:?}",
        s.api.requests()
    );
    assert_eq!(s.lists(), 1);
    // Compaction: the open watch gets ERROR 410 and spookd lists again.
    s.wait_watch();
    s.api.compact();
    assert!(s
        .api
        .wait_requests(WAIT, |r| r.iter().filter(|r| !r.is_watch()).count() >= 2));
    s.wait_watch();
    s.api.set(&widget("0003"));
    s.expect_devices("example.com/widget", &["0003"]);
    assert!(
        s.spookd.log().contains("listing again"),
        "{}",
        s.spookd.log()
    );
}

#[test]
fn dropped_watches_and_server_errors_are_retried_and_nothing_is_lost() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, Some(SEED), &[]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.wait_watch();
    let before = s.api.requests().len();
    s.api.fail_next(&[
        Fault::Status(500, None),
        Fault::Status(429, Some(1)),
        Fault::Status(410, None),
    ]);
    s.api.drop_watches();
    // 500 and 429 (after its Retry-After) are retried; the watch's 410 makes spookd list again.
    assert!(
        s.api.wait_requests(WAIT, |r| r.len() >= before + 4),
        "{:?}\n{}",
        s.api.requests(),
        s.spookd.log()
    );
    s.wait_watch();
    // Served throughout.
    assert_eq!(
        s.kubelet.device_ids("example.com/widget").unwrap(),
        ["0001"]
    );
    s.api.set(&widget("0004"));
    s.expect_devices("example.com/widget", &["0004"]);
    let log = s.spookd.log();
    assert!(log.contains("HTTP 500"), "{log}");
    assert!(log.contains("HTTP 429"), "{log}");
}

#[test]
fn a_rotated_token_is_read_again_after_401() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, Some(SEED), &[]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.wait_watch();
    s.api.set_token("token-2");
    s.api.drop_watches();
    assert!(s.spookd.wait_log("HTTP 401", 1), "{}", s.spookd.log());
    assert!(
        s.spookd.log().contains("token rejected"),
        "{}",
        s.spookd.log()
    );
    fs::write(&s.token_file, "token-2\n").unwrap();
    s.wait_watch();
    s.api.set(&widget("0005"));
    s.expect_devices("example.com/widget", &["0005"]);
    assert_eq!(
        s.api.requests().last().unwrap().authorization,
        "Bearer token-2"
    );
}

#[test]
fn a_forbidden_answer_names_the_missing_rbac() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, Some(SEED), &[]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.wait_watch();
    s.api.fail_next(&[Fault::Status(403, None)]);
    s.api.drop_watches();
    assert!(
        s.spookd
            .wait_log("needs get, list and watch on this ConfigMap", 1),
        "{}",
        s.spookd.log()
    );
    s.wait_watch();
    s.api.set(&widget("0006"));
    s.expect_devices("example.com/widget", &["0006"]);
}

#[test]
fn a_server_the_ca_does_not_vouch_for_is_never_trusted() {
    let trusted = Pki::new("test CA");
    let stranger = Pki::new("untrusted CA");
    let s = ApiSetup::new(&stranger, &trusted, Some(SEED), &[]);
    assert!(s.spookd.wait_log("UnknownIssuer", 2), "{}", s.spookd.log());
    let ca = s.tmp.join("ca.crt");
    let hint = format!("not vouched for by the CA file {}", ca.display());
    assert!(s.spookd.log().contains(&hint), "{}", s.spookd.log());
    // Nothing was served, and no request got past the handshake.
    assert!(s.kubelet.plugins().is_empty());
    assert!(s.api.requests().is_empty());
}

#[test]
fn a_deleted_configmap_keeps_the_last_good_config_and_a_recreated_one_applies() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, Some(SEED), &[]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.wait_watch();
    s.api.delete();
    assert!(
        s.spookd
            .wait_log("the ConfigMap does not exist (deleted?)", 1),
        "{}",
        s.spookd.log()
    );
    assert_eq!(
        s.kubelet.device_ids("example.com/widget").unwrap(),
        ["0001"]
    );
    s.api.set(&widget("0007"));
    s.expect_devices("example.com/widget", &["0007"]);
}

#[test]
fn invalid_content_and_a_missing_key_are_ignored() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, Some(SEED), &[]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.wait_watch();
    s.api.set("deviceMapping: [\n");
    assert!(
        s.spookd.wait_log("keeping the last good config", 1),
        "{}",
        s.spookd.log()
    );
    s.api.set_data(&[("other.yaml", SEED)]);
    assert!(
        s.spookd.wait_log(
            &format!("ConfigMap {NS}/{NAME} key config.yaml: the ConfigMap has no key config.yaml"),
            1
        ),
        "{}",
        s.spookd.log()
    );
    assert_eq!(
        s.kubelet.device_ids("example.com/widget").unwrap(),
        ["0001"]
    );
    s.api.set(&widget("0008"));
    s.expect_devices("example.com/widget", &["0008"]);
}

#[test]
fn starts_with_no_configmap_and_serves_it_once_created() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, None, &[]);
    s.wait_watch();
    assert!(s.kubelet.plugins().is_empty());
    s.api.set(SEED);
    s.expect_devices("example.com/widget", &["0001"]);
}

#[test]
fn a_silent_server_trips_the_read_timeout_and_the_watch_resumes() {
    let pki = Pki::new("test CA");
    let s = ApiSetup::new(&pki, &pki, Some(SEED), &["--watch-timeout", "1s"]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.wait_watch();
    // The next watch is accepted and never answered; the 1 s watch must not hang spookd.
    s.api.fail_next(&[Fault::Silence]);
    assert!(s.spookd.wait_log("timeout", 1), "{}", s.spookd.log());
    s.wait_watch();
    s.api.set(&widget("0009"));
    s.expect_devices("example.com/widget", &["0009"]);
}

#[test]
fn sigterm_with_an_open_watch_exits_zero() {
    let pki = Pki::new("test CA");
    let mut s = ApiSetup::new(&pki, &pki, Some(SEED), &[]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.wait_watch();
    let (status, took) = s.spookd.terminate();
    assert!(status.success(), "{status:?}\n{}", s.spookd.log());
    assert!(crate::util::own_sockets(&s.tmp.join("dp")).is_empty());
    eprintln!("exited {took:?} after SIGTERM with a watch open");
    let _ = Duration::ZERO;
}
