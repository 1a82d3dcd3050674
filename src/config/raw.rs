//! Stage one: the YAML as written, through serde. Each leaf is already a checked type, so
//! serde_yaml reports a bad value with its path and line; the lists and env maps refuse here what
//! YAML would read silently (a missing list as empty, a key written twice as the last).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::bounds::{MAX_DEVICE_ENV_BYTES, MAX_ENV_KEYS};
use super::error::{invalid, InvalidValue};
use super::scope::spend;
use super::{Env, EnvKey, EnvValue, HealthCheck, InstanceId, NodeName, ResourceName};
use crate::time::parse_duration;

/// The YAML as written. Leaves are checked types; the rules across entries wait for stage two
/// (`check.rs`), which needs the whole config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    #[serde(deserialize_with = "mapping_list")]
    pub(super) device_mapping: Vec<RawMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMapping {
    #[serde(deserialize_with = "host_list")]
    pub(super) hosts: Vec<NodeName>,
    #[serde(deserialize_with = "device_list")]
    pub(super) devices: Vec<RawDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDevice {
    pub(super) resource_name: ResourceName,
    #[serde(rename = "instanceID")]
    pub(super) instance_id: InstanceId,
    #[serde(default, deserialize_with = "unique_keys")]
    pub(super) env: Env,
    #[serde(default)]
    pub(super) health_check: Option<HealthCheck>,
}

/// A `deviceMapping` item up to its devices, parsed apart from them (`pieces.rs`): `devices:`
/// with nothing after it yet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHead {
    #[serde(deserialize_with = "host_list")]
    pub(super) hosts: Vec<NodeName>,
    #[allow(dead_code)]
    devices: Nothing,
}

/// A value that must be null: what a key with nothing after it is.
#[derive(Debug)]
struct Nothing;

impl<'de> Deserialize<'de> for Nothing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Nothing;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("nothing")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Nothing, E> {
                Ok(Nothing)
            }
        }
        d.deserialize_any(V)
    }
}

/// The pieces a config is parsed in (`pieces.rs`), each a list of what its part of the config
/// holds, read as the whole config reads it (the same visitors, so the same bounds are spent).
#[derive(Debug)]
pub(super) struct Mappings(pub(super) Vec<RawMapping>);
#[derive(Debug)]
pub(super) struct Heads(pub(super) Vec<RawHead>);
#[derive(Debug)]
pub(super) struct Devices(pub(super) Vec<RawDevice>);

impl<'de> Deserialize<'de> for Mappings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        mapping_list(d).map(Mappings)
    }
}

impl<'de> Deserialize<'de> for Heads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        explicit_list(d, "mappings").map(Heads)
    }
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        device_list(d).map(Devices)
    }
}

/// `healthCheck` as written; `tcp` is required, the rest have Kubernetes-probe-like defaults.
///
/// `tcp` takes an IP address, not a name: resolving a name blocks in the C library with no
/// timeout we control, and one hanging lookup would stall every other device's probe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHealthCheck {
    tcp: TcpTarget,
    interval: Option<ProbeDuration>,
    timeout: Option<ProbeDuration>,
    failure_threshold: Option<Threshold>,
    success_threshold: Option<Threshold>,
}

/// `IP:PORT` (`[IPv6]:PORT`), port not 0.
#[derive(Debug)]
struct TcpTarget(SocketAddr);

/// A duration written as the CLI takes it (`500ms`, `10s`, `1m`), at least 10 ms.
#[derive(Debug)]
struct ProbeDuration(Duration);

/// A count of at least 1.
#[derive(Debug)]
struct Threshold(u32);

impl RawHealthCheck {
    /// The rule across fields: a probe must end before the next is due.
    fn check(self) -> Result<HealthCheck, InvalidValue> {
        let interval = self.interval.map_or(HealthCheck::DEFAULT_INTERVAL, |d| d.0);
        let timeout = self.timeout.map_or(HealthCheck::DEFAULT_TIMEOUT, |d| d.0);
        if interval < HealthCheck::MIN_INTERVAL {
            return Err(invalid(
                "healthCheck.interval",
                &format!("{interval:?}"),
                "must be at least 100ms",
            ));
        }
        if interval > HealthCheck::MAX_INTERVAL {
            return Err(invalid(
                "healthCheck.interval",
                &format!("{interval:?}"),
                "must be at most 1h",
            ));
        }
        if timeout > interval {
            return Err(invalid(
                "healthCheck.timeout",
                &format!("{timeout:?}"),
                "must not be longer than the interval",
            ));
        }
        Ok(HealthCheck {
            tcp: self.tcp.0,
            interval,
            timeout,
            failure_threshold: self
                .failure_threshold
                .map_or(HealthCheck::DEFAULT_FAILURE_THRESHOLD, |t| t.0),
            success_threshold: self
                .success_threshold
                .map_or(HealthCheck::DEFAULT_SUCCESS_THRESHOLD, |t| t.0),
        })
    }
}

/// A list that must be written as one: `key:` with nothing (or only comments) after it is null
/// to YAML, which serde_yaml would read as an empty list; only an explicit `[]` is empty.
fn explicit_list<'de, D, T>(d: D, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(&'static str, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of {}", self.0)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                spend(self.0 == "devices").map_err(de::Error::custom)?;
                out.push(item);
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
            Err(E::custom(format!(
                "no {} (nothing, or only comments, after the key): write [] to mean none",
                self.0
            )))
        }
    }
    d.deserialize_any(V(what, std::marker::PhantomData))
}

fn mapping_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawMapping>, D::Error> {
    explicit_list(d, "mappings")
}

fn host_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeName>, D::Error> {
    explicit_list(d, "hosts")
}

fn device_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawDevice>, D::Error> {
    explicit_list(d, "devices")
}

/// An env map that refuses a key written twice (serde_yaml would silently keep the last).
fn unique_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Env, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Env;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of env keys to values")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(EnvKey, EnvValue)> = Vec::new();
            let mut bytes = 0usize;
            while let Some((k, v)) = map.next_entry::<EnvKey, EnvValue>()? {
                spend(false).map_err(de::Error::custom)?;
                bytes += k.as_str().len() + v.as_str().len();
                if out.len() == MAX_ENV_KEYS {
                    return Err(de::Error::custom(format!(
                        "more than {MAX_ENV_KEYS} env keys on one device"
                    )));
                }
                if bytes > MAX_DEVICE_ENV_BYTES {
                    return Err(de::Error::custom(format!(
                        "the device's env keys and values take more than {MAX_DEVICE_ENV_BYTES} \
                         bytes (a container's env is set at exec, which Linux bounds)"
                    )));
                }
                out.push((k, v));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(pair) = out.windows(2).find(|pair| pair[0].0 == pair[1].0) {
                return Err(de::Error::custom(format!(
                    "env key {} is written twice",
                    pair[0].0
                )));
            }
            Ok(Env(out.into()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Env::default())
        }
    }
    d.deserialize_any(V)
}

/// Through `RawHealthCheck`, so serde_yaml places a cross-field error at the healthCheck.
impl<'de> Deserialize<'de> for HealthCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawHealthCheck::deserialize(d)?
            .check()
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for TcpTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WHAT: &str = "healthCheck.tcp";
        let s = String::deserialize(d)?;
        let addr: SocketAddr = s.parse().map_err(|_| {
            de::Error::custom(invalid(
                WHAT,
                &s,
                "must be IP:PORT, e.g. 10.0.10.215:5025 or [fd00::1]:5025 (an address, not a \
                 name: lookups could stall every probe)",
            ))
        })?;
        if addr.port() == 0 {
            return Err(de::Error::custom(invalid(WHAT, &s, "port 0 is not a port")));
        }
        Ok(TcpTarget(addr))
    }
}

impl<'de> Deserialize<'de> for ProbeDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ProbeDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 10s or 1m")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ProbeDuration, E> {
                match parse_duration(s) {
                    Some(d) if d >= HealthCheck::MIN_TIMEOUT => Ok(ProbeDuration(d)),
                    Some(_) => Err(E::custom(invalid("duration", s, "must be at least 10ms"))),
                    None => Err(E::custom(invalid(
                        "duration",
                        s,
                        "write a number and a unit (ms, s, m, h), e.g. 500ms, 10s, 1m30s",
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ProbeDuration, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write {v}s or {v}ms"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ProbeDuration, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write {v}s or {v}ms"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ProbeDuration, E> {
                Err(E::custom(format!("a duration needs a unit: write {v}s")))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if n == 0 {
            return Err(de::Error::custom(invalid(
                "threshold",
                "0",
                "must be at least 1",
            )));
        }
        Ok(Threshold(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::{Config, ConfigError};

    #[test]
    fn unknown_fields_are_refused_with_position() {
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices: []\n    host: [b]\n");
        assert_eq!(
            e,
            "test.yaml: deviceMapping[0]: unknown field `host`, expected `hosts` or `devices` at \
             line 4 column 5"
        );
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceId: \"1\"\n");
        assert!(e.contains("unknown field `instanceId`"), "{e}");
    }

    #[test]
    fn lists_must_be_written_out() {
        // Only comments after the key is null to YAML, not an empty list: refused.
        let e = err("deviceMapping:\n  # - hosts: [a]\n  #   devices: []\n");
        assert!(
            e.contains(
                "no mappings (nothing, or only comments, after the key): write [] to mean none"
            ),
            "{e}"
        );
        let e = err("deviceMapping: ~\n");
        assert!(e.contains("no mappings"), "{e}");
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n");
        assert!(e.contains("deviceMapping[0].devices: no devices"), "{e}");
        let e = err("deviceMapping:\n  - hosts:\n    devices: []\n");
        assert!(e.contains("deviceMapping[0].hosts: no hosts"), "{e}");
        // Written out, empty is fine.
        assert!(parse("deviceMapping:\n  - hosts: [a]\n    devices: []\n").is_ok());
    }

    #[test]
    fn duplicate_env_keys_are_refused() {
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: \"1\"\n        env: {K: a, K: b}\n");
        assert!(e.contains("env key K is written twice"), "{e}");
        assert!(e.contains("deviceMapping[0].devices[0].env"), "{e}");
    }

    #[test]
    fn missing_required_fields() {
        assert!(err("{}").contains("missing field `deviceMapping`"));
        assert!(err("deviceMapping:\n  - devices: []\n").contains("missing field `hosts`"));
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n");
        assert!(e.contains("missing field `instanceID`"), "{e}");
    }

    fn probe(health_check: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - resourceName: a.io/x\n    instanceID: \"1\"\n    healthCheck: {health_check}\n"
        ))
    }

    fn check_of(c: &Config) -> Option<HealthCheck> {
        c.for_node(&node("a")).pop_first().unwrap().1[0].health_check
    }

    #[test]
    fn health_checks_with_defaults_and_every_field() {
        let c = probe(r#"{tcp: "127.0.0.1:5025"}"#).unwrap();
        assert_eq!(
            check_of(&c),
            Some(HealthCheck {
                tcp: "127.0.0.1:5025".parse().unwrap(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                failure_threshold: 3,
                success_threshold: 1,
            })
        );
        let c = probe(r#"{tcp: "[::1]:80", interval: 1m30s, timeout: 250ms, failureThreshold: 5, successThreshold: 2}"#).unwrap();
        assert_eq!(
            check_of(&c),
            Some(HealthCheck {
                tcp: "[::1]:80".parse().unwrap(),
                interval: Duration::from_secs(90),
                timeout: Duration::from_millis(250),
                failure_threshold: 5,
                success_threshold: 2,
            })
        );
        let devices = parse(SEED).unwrap().for_node(&node("lab1-host1"));
        assert!(devices
            .values()
            .flat_map(|d| d.iter())
            .all(|d| d.health_check.is_none()));
    }

    #[test]
    fn bad_health_checks_are_refused_where_they_are() {
        // serde_yaml places field errors at the field, cross-field ones at the device.
        let at = "deviceMapping[0].devices[0]";
        for (text, wanted) in [
            (r#"{}"#, "missing field `tcp`"),
            (r#"{tcp: "lab-scope.local:5025"}"#, "an address, not a name"),
            (r#"{tcp: "127.0.0.1"}"#, "must be IP:PORT"),
            (r#"{tcp: "127.0.0.1:0"}"#, "port 0 is not a port"),
            (r#"{tcp: "127.0.0.1:70000"}"#, "must be IP:PORT"),
            (
                r#"{tcp: "127.0.0.1:1", interval: 10}"#,
                "a duration needs a unit: write 10s or 10ms",
            ),
            (
                r#"{tcp: "127.0.0.1:1", interval: 10 s}"#,
                "write a number and a unit",
            ),
            (
                r#"{tcp: "127.0.0.1:1", timeout: 5ms}"#,
                "must be at least 10ms",
            ),
            (
                r#"{tcp: "127.0.0.1:1", interval: 50ms, timeout: 20ms}"#,
                "interval \"50ms\": must be at least 100ms",
            ),
            (
                r#"{tcp: "127.0.0.1:1", interval: 1s, timeout: 2s}"#,
                "must not be longer than the interval",
            ),
            // Aborted the probe thread (Instant overflow) while `check` called it valid.
            (
                r#"{tcp: "127.0.0.1:1", interval: 5000000000000000h}"#,
                "must be at most 1h",
            ),
            (
                r#"{tcp: "127.0.0.1:1", interval: 61m}"#,
                "must be at most 1h",
            ),
            (
                r#"{tcp: "127.0.0.1:1", failureThreshold: 0}"#,
                "must be at least 1",
            ),
            (
                r#"{tcp: "127.0.0.1:1", successThreshold: -1}"#,
                "expected u32",
            ),
            (r#"{tcp: "127.0.0.1:1", http: "/"}"#, "unknown field `http`"),
        ] {
            let e = probe(text).expect_err(text).to_string();
            assert!(e.contains(wanted), "{text}: {e}");
            assert!(e.contains(at) && e.contains("healthCheck"), "{text}: {e}");
            assert!(e.contains("line 6") || e.contains("line 4"), "{text}: {e}");
        }
    }
}
