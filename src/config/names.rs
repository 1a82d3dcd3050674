//! The checked name types: resource names, instanceIDs, node names, env keys and values, each
//! refusing at its construction what the kubelet, a container or the API would refuse later.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::bounds::MAX_ENV_VALUE;
use super::error::{invalid, InvalidValue};
use super::scope::spend_text;
use super::yaml_style::{reads_as_non_string, style_of, Style};

/// Longest device ID the kubelet accepts (`Device.ID`).
const MAX_INSTANCE_ID: usize = 63;

/// An extended resource name the kubelet accepts: `<domain>/<name>`, outside `kubernetes.io`.
/// Shared, not copied: every map keyed by device (the probes' in two threads, Leases, the views)
/// clones these, and a clone is a count, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceName(pub(super) Arc<str>);

/// A device's ID within its resource: non-empty, at most 63 characters (shared like
/// [`ResourceName`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(pub(super) Arc<str>);

/// A Kubernetes node name (an RFC 1123 subdomain).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(pub(super) String);

/// An env key a device may set: `[A-Za-z_][A-Za-z0-9_]*`, none of the generated suffixes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvKey(pub(super) String);

/// An env value: a YAML string verbatim, or a number or boolean as serde_yaml prints it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvValue(pub(super) String);

macro_rules! string_newtype {
    ($t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_newtype!(ResourceName);
string_newtype!(InstanceId);

/// Sets of instanceIDs are looked up by the kubelet's strings (Ord is the string's: consistent).
impl std::borrow::Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}
string_newtype!(NodeName);
string_newtype!(EnvKey);
string_newtype!(EnvValue);

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253 in all.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl TryFrom<String> for ResourceName {
    type Error = InvalidValue;

    /// The kubelet's `IsExtendedResourceName`: not native (no `/`, or `kubernetes.io/` inside), not
    /// `requests.`-prefixed, and `requests.<name>` a qualified name.
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        const WHAT: &str = "resourceName";
        let Some((domain, name)) = s.split_once('/') else {
            return Err(invalid(
                WHAT,
                &s,
                "must be <domain>/<name>, e.g. example.com/widget",
            ));
        };
        if !is_dns_subdomain(domain) || domain.len() + "requests.".len() > 253 {
            return Err(invalid(
                WHAT,
                &s,
                "the domain must be a DNS subdomain: lowercase letters, digits, '-' and '.'",
            ));
        }
        if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
            return Err(invalid(WHAT, &s, "the kubernetes.io domain is reserved"));
        }
        if domain.starts_with("requests.") {
            return Err(invalid(
                WHAT,
                &s,
                "the requests. prefix is reserved for quotas",
            ));
        }
        let b = name.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c));
        if !ok {
            return Err(invalid(
                WHAT,
                &s,
                "the name after '/' must be at most 63 letters, digits, '-', '_' or '.', starting \
                 and ending with a letter or digit",
            ));
        }
        Ok(ResourceName(s.into()))
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InvalidValue;

    /// It becomes an env value, a label of /metrics, a log line's word and the kubelet's device
    /// ID: no control characters (NUL, CR, LF, tab, …), no white space at either end.
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.chars().count() > MAX_INSTANCE_ID {
            return Err(invalid("instanceID", &s, "must be 1 to 63 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid(
                "instanceID",
                &s,
                "must not contain control characters (NUL, tab, CR, LF, …)",
            ));
        }
        if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
            return Err(invalid(
                "instanceID",
                &s,
                "must not start or end with white space",
            ));
        }
        Ok(InstanceId(s.into()))
    }
}

impl TryFrom<String> for NodeName {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, InvalidValue> {
        if !is_dns_subdomain(&s) {
            return Err(invalid(
                "host",
                &s,
                "node names are lowercase DNS subdomains (letters, digits, '-' and '.')",
            ));
        }
        Ok(NodeName(s))
    }
}

impl TryFrom<String> for EnvKey {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, InvalidValue> {
        const WHAT: &str = "env key";
        let b = s.as_bytes();
        let shape = !b.is_empty()
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !shape {
            return Err(invalid(WHAT, &s, "must match [A-Za-z_][A-Za-z0-9_]*"));
        }
        let indexed = s
            .strip_prefix("DEV")
            .and_then(|rest| rest.split_once('_'))
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        if matches!(s.as_str(), "ID" | "TYPE" | "NUM_DEVICES") || indexed {
            return Err(invalid(
                WHAT,
                &s,
                "ID, TYPE, NUM_DEVICES and DEV<n>_... are generated by spookd",
            ));
        }
        Ok(EnvKey(s))
    }
}

impl TryFrom<String> for EnvValue {
    type Error = InvalidValue;

    /// What a container runtime takes: no NUL (env strings are C strings), and short enough that
    /// exec does not fail (see [`MAX_ENV_VALUE`]).
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        if s.contains('\0') {
            return Err(invalid(
                "env value",
                &s,
                "contains a NUL character, which no container env can hold",
            ));
        }
        if s.len() > MAX_ENV_VALUE {
            return Err(InvalidValue {
                what: "env value",
                value: format!("{}…", s.chars().take(32).collect::<String>()),
                rule: "is longer than 32 KiB",
            });
        }
        Ok(EnvValue(s))
    }
}

/// Deserializes a checked string type from a YAML string only.
macro_rules! deserialize_via_string {
    ($t:ident) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                spend_text(s.len()).map_err(de::Error::custom)?;
                $t::try_from(s).map_err(de::Error::custom)
            }
        }
    };
}
deserialize_via_string!(ResourceName);
deserialize_via_string!(NodeName);
deserialize_via_string!(EnvKey);

/// The scalar's text as written, refused when unquoted and any YAML reader could take it for
/// something other than a string: `0001` is the integer 1 to many, and turning it back into "1"
/// would silently name another device. Decided from the scalar's style, not from its text alone.
impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InstanceId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted string, e.g. instanceID: \"0001\"")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<InstanceId, E> {
                if s.is_empty() {
                    return Err(E::custom(
                        "instanceID is empty: a device needs an ID of 1 to 63 characters",
                    ));
                }
                match reads_as_non_string(s).filter(|_| style_of(s) == Style::Plain) {
                    Some(kind) => Err(E::custom(format!(
                        "instanceID {s} must be a quoted string (YAML readers may take it for \
                         {kind}): write instanceID: \"{s}\""
                    ))),
                    None => self.visit_str(s),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<InstanceId, E> {
                spend_text(s.len()).map_err(E::custom)?;
                InstanceId::try_from(s.to_owned()).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The scalar's text as written, quoted or not (`0x1F` stays `0x1F`, `1.50` stays `1.50`: YAML
/// readers differ on what such values mean, the text does not); an unquoted null (`~`, nothing)
/// is refused, and so are lists and maps.
impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<EnvValue, E> {
                if reads_as_non_string(s) == Some("null") && style_of(s) == Style::Plain {
                    return Err(E::custom(
                        "the env value is null (nothing, ~ or null), expected a string, number or \
                         boolean: write \"\" for an empty value",
                    ));
                }
                self.visit_str(s)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EnvValue, E> {
                spend_text(s.len()).map_err(E::custom)?;
                EnvValue::try_from(s.to_owned()).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::MAX_ENV_KEYS;

    #[test]
    fn instance_ids_a_container_or_metrics_would_choke_on_are_refused() {
        for bad in [
            "\"a\\rb\"",
            "\"a\\nb\"",
            "\"a\\tb\"",
            "\"a\\u0000b\"",
            "\" \"",
            "\" x\"",
            "\"x \"",
            "\"\\u007f\"",
        ] {
            let e = err(&device_with_id(bad));
            assert!(e.contains("invalid instanceID"), "{bad}: {e}");
        }
        assert!(parse(&device_with_id("\"a b\"")).is_ok());
        assert!(parse(&device_with_id("\"é-1\"")).is_ok());
    }

    #[test]
    fn instance_id_length() {
        let ok = "x".repeat(63);
        assert!(InstanceId::try_from(ok).is_ok());
        assert!(InstanceId::try_from("x".repeat(64)).is_err());
        assert!(InstanceId::try_from(String::new()).is_err());
    }

    #[test]
    fn resource_names() {
        for good in [
            "example.com/widget",
            "skao.int/signal-generator",
            "a.io/x_y.z",
            "a/b",
            "nvidia.com/gpu",
        ] {
            assert!(ResourceName::try_from(good.to_owned()).is_ok(), "{good}");
        }
        for bad in [
            "widget",
            "Example.com/widget",
            "example.com/",
            "/widget",
            "example.com/-widget",
            "example.com/widget-",
            "example.com/wid get",
            "example.com/a/b",
            "kubernetes.io/widget",
            "node.kubernetes.io/widget",
            "requests.example.com/widget",
            "exa_mple.com/widget",
            "-a.com/widget",
        ] {
            assert!(ResourceName::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        let long = format!("a.io/{}", "x".repeat(64));
        assert!(ResourceName::try_from(long).is_err());
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: kubernetes.io/x\n        instanceID: \"1\"\n");
        assert_eq!(
            e,
            "test.yaml: deviceMapping[0].devices[0]: invalid resourceName \"kubernetes.io/x\": the \
             kubernetes.io domain is reserved at line 4 column 9"
        );
    }

    #[test]
    fn env_keys() {
        for good in [
            "IP",
            "_x",
            "port2",
            "DEV",
            "DEVICE_ID",
            "DEVx_1",
            "ID2",
            "DEV_1",
        ] {
            assert!(EnvKey::try_from(good.to_owned()).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1IP",
            "I-P",
            "ID",
            "TYPE",
            "NUM_DEVICES",
            "DEV0_X",
            "DEV12_",
            "É",
        ] {
            assert!(EnvKey::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_values() {
        let c = parse(&device_with_env(
            "{S: \"0010\", N: 0010, F: 1.50, B: true, Q: \"1.50\", Y: yes, H: 0x1F, O: 0o17, BIG: 123456789012345678901234567890, E: 1e3}",
        ))
        .unwrap();
        let d = &c.for_node(&node("a"))[&ResourceName::try_from("a.io/x".to_owned()).unwrap()][0];
        let env: Vec<(&str, &str)> = d
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            // Every value exactly as written: YAML readers differ on what 0x1F or 1.50 mean.
            [
                ("B", "true"),
                ("BIG", "123456789012345678901234567890"),
                ("E", "1e3"),
                ("F", "1.50"),
                ("H", "0x1F"),
                ("N", "0010"),
                ("O", "0o17"),
                ("Q", "1.50"),
                ("S", "0010"),
                ("Y", "yes")
            ]
        );
        for bad in ["~", "null", "", "[1, 2]", "{a: b}"] {
            let e = err(&device_with_env(&format!("{{K: {bad}}}")));
            assert!(
                e.contains("expected a string, number or boolean"),
                "{bad}: {e}"
            );
            assert!(
                e.contains("deviceMapping[0].devices[0].env.K"),
                "{bad}: {e}"
            );
        }
        let e = err(&device_with_env("{K: ~}"));
        assert!(e.contains("the env value is null (nothing, ~ or null), expected a string, number or boolean: write \"\" for an empty value"), "{e}");
        let e = err(&device_with_id("!!null"));
        assert!(
            e.contains("instanceID is empty: a device needs an ID of 1 to 63 characters"),
            "{e}"
        );
        // Quoted, a null word is a string.
        assert!(parse(&device_with_env("{K: \"~\", L: ''}")).is_ok());
    }

    #[test]
    fn env_values_a_container_cannot_take_are_refused() {
        let e = err(&device_with_env("{K: \"a\\0b\"}"));
        assert!(e.contains("contains a NUL character"), "{e}");
        assert!(e.contains("deviceMapping[0].devices[0].env.K"), "{e}");
        let e = err(&device_with_env(&format!(
            "{{K: {}}}",
            "x".repeat(MAX_ENV_VALUE + 1)
        )));
        assert!(e.contains("is longer than 32 KiB"), "{e}");
        assert!(parse(&device_with_env(&format!(
            "{{K: {}}}",
            "x".repeat(MAX_ENV_VALUE)
        )))
        .is_ok());
        let many: Vec<String> = (0..=MAX_ENV_KEYS).map(|i| format!("K{i}: v")).collect();
        let e = err(&device_with_env(&format!("{{{}}}", many.join(", "))));
        assert!(e.contains("more than 128 env keys on one device"), "{e}");
        let big: Vec<String> = (0..3)
            .map(|i| format!("K{i}: {}", "x".repeat(30_000)))
            .collect();
        let e = err(&device_with_env(&format!("{{{}}}", big.join(", "))));
        assert!(e.contains("take more than 65536 bytes"), "{e}");
    }

    #[test]
    fn host_names_are_checked() {
        let e = err("deviceMapping:\n  - hosts: [Lab1]\n    devices: []\n");
        assert_eq!(
            e,
            "test.yaml: deviceMapping[0].hosts: invalid host \"Lab1\": node names are lowercase DNS \
             subdomains (letters, digits, '-' and '.') at line 2 column 12"
        );
    }
}
