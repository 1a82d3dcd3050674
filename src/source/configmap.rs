//! The API source: watches one ConfigMap through the Kubernetes API over plain HTTPS.
//!
//! The list-then-watch loop ([`crate::kube::watch`]) on the `spookd-config-api` thread, with the
//! [`Policy::Resume`] policy: LIST the one ConfigMap (by `fieldSelector=metadata.name=NAME`, so a
//! missing ConfigMap still yields a resourceVersion to watch from), then WATCH from that version.
//! ADDED/MODIFIED carry new content, sent to the state thread when it changed; DELETED keeps the
//! last good config. Errors never end the thread; the last good config stays in force meanwhile.
//!
//! The server is trusted only if the CA file vouches for it; the token is read from its file on
//! every request, so rotated service-account tokens are picked up (see [`crate::kube::client`]).
//! Responses are JSON, which serde_yaml reads (JSON is YAML 1.2), so no JSON crate is needed.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};
use serde::Deserialize;

use crate::backoff::Backoff;
use crate::config::{Config, ConfigError};
use crate::kube::client::{bad_certificate, ApiError, Client, Connection, Lines, REQUEST_TIMEOUT};
use crate::kube::watch::{
    self, Events, Failure, Meta, Observer, Phase, Policy, Versioned, WatchApi, WatchEvent,
};
use crate::state::msg::Msg;
use crate::worker::Worker;

/// Largest LIST response.
const MAX_BODY: u64 = 8 << 20;

/// Which ConfigMap, which key, and how to reach and trust the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiOptions {
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub conn: Connection,
    /// The watch's `timeoutSeconds`; a read that waits longer than this plus a quarter (and 1 s)
    /// means the connection is dead.
    pub watch_timeout: Duration,
}

impl ApiOptions {
    /// How config errors name this source.
    pub fn origin(&self) -> String {
        format!(
            "ConfigMap {}/{} key {}",
            self.namespace, self.name, self.key
        )
    }

    fn read_timeout(&self) -> Duration {
        (self.watch_timeout.saturating_add(self.watch_timeout / 4))
            .saturating_add(Duration::from_secs(1))
    }
}

/// A ConfigMap, as much of it as spookd reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ConfigMap {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ConfigMapList {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    items: Vec<ConfigMap>,
}

/// One line of a ConfigMap watch.
pub type Event = WatchEvent<ConfigMap>;

/// Parses one line of a ConfigMap watch.
pub fn parse_event(line: &str) -> Result<Event, serde_yaml::Error> {
    watch::parse_event(line)
}

impl Versioned for ConfigMap {
    fn resource_version(&self) -> &str {
        &self.metadata.resource_version
    }
}

/// Handle of the API watch thread (`spookd-config-api`). Dropping it stops the thread; a read
/// blocked on the network is not waited for long (the process is exiting).
pub struct ApiSource {
    _stop: Sender<()>,
    _worker: Worker,
}

impl ApiSource {
    pub fn spawn(opts: ApiOptions, state: Sender<Msg>) -> io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let worker = Worker::spawn("spookd-config-api", move || {
            let mut watch = Watch::new(&opts, &state, &stopped);
            watch.run(&mut HttpApi::new(opts));
        })?
        .stop_wait(Duration::from_millis(100));
        Ok(ApiSource {
            _stop: stop,
            _worker: worker,
        })
    }
}

/// The list-then-watch loop, generic over the API so it can be tested without a server.
pub struct Watch<'a> {
    origin: String,
    key: String,
    ca_file: PathBuf,
    state: &'a Sender<Msg>,
    stop: &'a Receiver<()>,
    /// The content last sent to the state thread (`None`: nothing, or the ConfigMap was absent).
    last: Option<Option<String>>,
    backoff: Backoff,
}

impl<'a> Watch<'a> {
    pub fn new(opts: &ApiOptions, state: &'a Sender<Msg>, stop: &'a Receiver<()>) -> Self {
        Watch {
            origin: opts.origin(),
            key: opts.key.clone(),
            ca_file: opts.conn.ca_file.clone(),
            state,
            stop,
            last: None,
            backoff: Backoff::default(),
        }
    }

    /// Runs until stopped or the state thread is gone.
    pub fn run(&mut self, api: &mut dyn WatchApi<Object = ConfigMap>) {
        let mut backoff = std::mem::take(&mut self.backoff);
        let stop = self.stop;
        watch::list_then_watch(api, self, Policy::Resume, &mut backoff, stop);
        self.backoff = backoff;
    }

    /// Sends new content to the state thread. False when the state thread is gone.
    fn apply(&mut self, cm: Option<&ConfigMap>) -> bool {
        let Some(cm) = cm else {
            if self.last != Some(None) {
                warn!(
                    "{}: the ConfigMap does not exist (deleted?); keeping the last good config",
                    self.origin
                );
                self.last = Some(None);
            }
            return true;
        };
        let text = cm.data.get(&self.key).cloned();
        if self.last.as_ref() == Some(&text) && text.is_some() {
            return true;
        }
        let msg = match &text {
            Some(text) => match Config::parse(text.as_bytes(), &self.origin) {
                Ok(config) => Msg::Config {
                    origin: self.origin.clone(),
                    config,
                },
                Err(e) => Msg::ConfigInvalid(e),
            },
            None => Msg::ConfigInvalid(ConfigError::MissingKey {
                origin: self.origin.clone(),
                key: self.key.clone(),
            }),
        };
        self.last = Some(text);
        self.state.send(msg).is_ok()
    }
}

impl Observer<ConfigMap> for Watch<'_> {
    fn listed(&mut self, items: Vec<ConfigMap>, version: &str) -> bool {
        debug!("{}: listed at resourceVersion {version}", self.origin);
        self.apply(items.first())
    }

    fn put(&mut self, cm: ConfigMap) -> bool {
        self.apply(Some(&cm))
    }

    fn deleted(&mut self, _: ConfigMap) -> bool {
        self.apply(None)
    }

    fn failed(&mut self, _: Phase, why: &Failure<'_>) -> bool {
        let e = match why {
            Failure::Status(status) => {
                warn!(
                    "{}: watch error {} {}: {}",
                    self.origin, status.code, status.reason, status.message
                );
                return true;
            }
            Failure::Api(e) => e,
        };
        let untrusted;
        let hint = match e.status() {
            Some(401) => " (token rejected: it is re-read from its file on the next attempt)",
            Some(403) => {
                " (spookd's ServiceAccount needs get, list and watch on this ConfigMap: see the \
                 Role in manifests/base/)"
            }
            _ if bad_certificate(e) => {
                untrusted = format!(
                    " (the server's certificate is not vouched for by the CA file {}; nothing \
                     from this server is trusted)",
                    self.ca_file.display()
                );
                &untrusted
            }
            _ => "",
        };
        warn!("{}: {e}{hint}; retrying", self.origin);
        true
    }

    fn expired(&mut self, version: &str) {
        info!(
            "{}: resourceVersion {version} expired (410); listing again",
            self.origin
        );
    }
}

/// The real API client: ureq over rustls, trusting only the CA file.
pub struct HttpApi {
    opts: ApiOptions,
    client: Client,
}

impl HttpApi {
    pub fn new(opts: ApiOptions) -> Self {
        let client = Client::new(opts.conn.clone());
        HttpApi { opts, client }
    }

    fn url(&self, watch: Option<&str>) -> String {
        let o = &self.opts;
        let mut url = format!(
            "{}/api/v1/namespaces/{}/configmaps?fieldSelector=metadata.name%3D{}",
            o.conn.server, o.namespace, o.name
        );
        if let Some(version) = watch {
            url.push_str(&format!(
                "&watch=true&allowWatchBookmarks=true&timeoutSeconds={}&resourceVersion={version}",
                o.watch_timeout.as_secs().max(1)
            ));
        }
        url
    }
}

impl WatchApi for HttpApi {
    type Object = ConfigMap;

    fn list(&mut self) -> Result<(Vec<ConfigMap>, String), ApiError> {
        let url = self.url(None);
        let response = self.client.get(&url, REQUEST_TIMEOUT)?;
        let body = Client::read_body(&url, response, MAX_BODY)?;
        let list: ConfigMapList =
            serde_yaml::from_slice(&body).map_err(|source| ApiError::Decode { url, source })?;
        Ok((list.items, list.metadata.resource_version))
    }

    fn watch(&mut self, version: &str) -> Result<Events<ConfigMap>, ApiError> {
        let url = self.url(Some(version));
        let response = self.client.watch(&url, self.opts.read_timeout())?;
        let reader = response.into_body().into_reader();
        Ok(Box::new(Lines::new(reader, url, parse_event)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::watch::Status;
    use std::collections::VecDeque;

    #[test]
    fn parses_watch_events_written_as_json() {
        let cm = r#"{"type":"MODIFIED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c","namespace":"n","resourceVersion":"42","uid":"x","managedFields":[{"a":1}]},"data":{"config.yaml":"deviceMapping:\n- hosts: [\"a\"]\n  devices: []\n# caf\u00e9 \/ \t tab\n"}}}"#;
        let Event::Modified(cm) = parse_event(cm).unwrap() else {
            panic!()
        };
        assert_eq!(cm.metadata.resource_version, "42");
        assert_eq!(
            cm.data["config.yaml"],
            "deviceMapping:\n- hosts: [\"a\"]\n  devices: []\n# café / \t tab\n"
        );
        assert_eq!(
            parse_event(r#"{"type":"BOOKMARK","object":{"kind":"ConfigMap","metadata":{"resourceVersion":"77"}}}"#).unwrap(),
            Event::Bookmark("77".into())
        );
        assert_eq!(
            parse_event(r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}"#).unwrap(),
            Event::Error(Status { code: 410, reason: "Expired".into(), message: "too old resource version: 1 (5)".into() })
        );
        assert!(parse_event(r#"{"type":"WHAT","object":{}}"#).is_err());
        assert!(parse_event("not json at all {").is_err());
    }

    #[test]
    fn parses_a_large_value() {
        let big = "x".repeat(200_000);
        let line = format!(
            r#"{{"type":"ADDED","object":{{"metadata":{{"resourceVersion":"1"}},"data":{{"k":"{big}"}}}}}}"#
        );
        let Event::Added(cm) = parse_event(&line).unwrap() else {
            panic!()
        };
        assert_eq!(cm.data["k"].len(), 200_000);
    }

    /// Scripted API: each call takes the next answer; when out of answers it stops the loop.
    struct Fake {
        lists: VecDeque<Result<(Vec<ConfigMap>, String), ApiError>>,
        watches: VecDeque<Result<Vec<Result<Event, ApiError>>, ApiError>>,
        calls: Vec<String>,
        stop: Option<Sender<()>>,
    }

    impl WatchApi for Fake {
        type Object = ConfigMap;

        fn list(&mut self) -> Result<(Vec<ConfigMap>, String), ApiError> {
            self.calls.push("list".into());
            self.lists.pop_front().unwrap_or_else(|| {
                self.stop = None;
                Err(status(503))
            })
        }
        fn watch(&mut self, v: &str) -> Result<Events<ConfigMap>, ApiError> {
            self.calls.push(format!("watch {v}"));
            match self.watches.pop_front() {
                Some(Ok(events)) => Ok(Box::new(events.into_iter())),
                Some(Err(e)) => Err(e),
                None => {
                    self.stop = None;
                    Err(status(503))
                }
            }
        }
    }

    fn status(code: u16) -> ApiError {
        ApiError::Status {
            url: "u".into(),
            code,
            retry_after: Some(Duration::ZERO),
            body: String::new(),
        }
    }

    fn cm(version: &str, text: Option<&str>) -> ConfigMap {
        let mut data = BTreeMap::new();
        if let Some(t) = text {
            data.insert("config.yaml".to_string(), t.to_string());
        }
        ConfigMap {
            metadata: Meta {
                resource_version: version.into(),
                ..Meta::default()
            },
            data,
        }
    }

    const A: &str = "deviceMapping: []\n";
    const B: &str = "deviceMapping:\n- hosts: [n]\n  devices: []\n";

    /// Runs the loop until the fake runs out of answers; returns what reached the state thread.
    fn run(fake: &mut Fake) -> Vec<String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        fake.stop = Some(stop_tx);
        let mut watch = Watch::new(&options(), &tx, &stop);
        watch.backoff = Backoff::new((Duration::from_millis(1), Duration::from_secs(30)));
        watch.run(fake);
        rx.try_iter()
            .map(|m| match m {
                Msg::Config { config, .. } => format!("config {} nodes", config.nodes().count()),
                Msg::ConfigInvalid(e) => format!("invalid: {e}"),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn lists_then_watches_relists_on_410_and_resumes_after_bookmarks() {
        let mut fake = Fake {
            lists: VecDeque::from([
                Ok((vec![cm("5", Some(A))], "5".into())),
                Err(status(500)),
                Ok((vec![cm("9", Some(B))], "9".into())),
            ]),
            watches: VecDeque::from([
                Ok(vec![
                    Ok(Event::Bookmark("6".into())),
                    Ok(Event::Modified(cm("7", Some(B)))),
                    Ok(Event::Modified(cm("8", Some(B)))),
                ]),
                Ok(vec![Ok(Event::Error(Status {
                    code: 410,
                    reason: "Expired".into(),
                    message: String::new(),
                }))]),
                Err(status(410)),
            ]),
            calls: Vec::new(),
            stop: None,
        };
        let sent = run(&mut fake);
        assert_eq!(
            &fake.calls[..7],
            ["list", "watch 5", "watch 8", "list", "list", "watch 9", "list"]
        );
        // A, then B; the same B again is not re-sent (dedupe), nor after the relist.
        assert_eq!(sent, ["config 0 nodes", "config 1 nodes"]);
    }

    #[test]
    fn missing_key_is_invalid_and_deletion_keeps_the_last_config() {
        let mut fake = Fake {
            lists: VecDeque::from([Ok((vec![], "1".into()))]),
            watches: VecDeque::from([Ok(vec![
                Ok(Event::Added(cm("2", Some(A)))),
                Ok(Event::Modified(cm("3", None))),
                Ok(Event::Deleted(cm("4", None))),
                Ok(Event::Added(cm("5", Some(A)))),
            ])]),
            calls: Vec::new(),
            stop: None,
        };
        let sent = run(&mut fake);
        assert_eq!(
            sent,
            [
                "config 0 nodes".to_string(),
                "invalid: ConfigMap n/c key config.yaml: the ConfigMap has no key config.yaml"
                    .to_string(),
                // Deletion sends nothing; the re-created one is applied.
                "config 0 nodes".to_string(),
            ]
        );
        assert_eq!(&fake.calls[..3], ["list", "watch 1", "watch 5"]);
    }

    fn options() -> ApiOptions {
        ApiOptions {
            namespace: "n".into(),
            name: "c".into(),
            key: "config.yaml".into(),
            conn: Connection {
                server: "https://127.0.0.1:1".into(),
                token_file: "t".into(),
                ca_file: "c".into(),
            },
            watch_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn read_timeout_is_a_quarter_over_the_watch_timeout() {
        let o = options();
        assert_eq!(o.read_timeout(), Duration::from_secs(76));
        assert_eq!(
            HttpApi::new(o.clone()).url(Some("9")),
            "https://127.0.0.1:1/api/v1/namespaces/n/configmaps?fieldSelector=metadata.name%3Dc&watch=true&allowWatchBookmarks=true&timeoutSeconds=60&resourceVersion=9"
        );
    }
}
