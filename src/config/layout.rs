//! The env variables an Allocate sets in a container.
//!
//! For `example.com/widget` (prefix `EXAMPLECOM_WIDGET`) and devices sorted by instanceID as DEV0,
//! DEV1, …: `<P>_DEV<n>_ID`, `<P>_DEV<n>_TYPE`, `<P>_DEV<n>_<KEY>` per env key, then
//! `<P>_NUM_DEVICES`, and un-indexed copies of DEV0 (`<P>_ID`, `<P>_TYPE`, `<P>_<KEY>`).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Device, ResourceName};

/// Most bytes of env (names and values) one container may be given by one resource. Linux
/// refuses an exec whose arguments and env pass a quarter of the stack limit (2 MiB by default),
/// and a container takes env from other resources and its own spec too.
pub const MAX_CONTAINER_ENV_BYTES: usize = 1 << 20;
/// Most bytes of env in one Allocate answer: gRPC refuses messages over 4 MiB, and the kubelet
/// would see RESOURCE_EXHAUSTED for an answer spookd thought it gave.
pub const MAX_ANSWER_ENV_BYTES: usize = 3 << 20;

/// Why an Allocate request cannot be answered with env.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request names no container.
    NoContainers,
    /// A container request named no device.
    NoDevices,
    /// A requested ID is not one of the resource's devices.
    UnknownDevice(String),
    /// An ID was requested twice, for one container or for two.
    DuplicateDevice(String),
    /// The env would be larger than a container (or the answer) may carry.
    TooLarge { bytes: usize, limit: usize },
}

/// Allocate: per container, the env for the devices it asks for. `devices` is the resource's list,
/// sorted by instanceID (as the config gives it): each ID is found by binary search, so a request
/// naming every device of a large resource costs n log n, never n².
pub fn allocate(
    resource: &ResourceName,
    devices: &[Device],
    containers: &[Vec<String>],
) -> Result<Vec<BTreeMap<String, String>>, Refusal> {
    if containers.is_empty() {
        return Err(Refusal::NoContainers);
    }
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut picks: Vec<Vec<&Device>> = Vec::with_capacity(containers.len());
    for ids in containers {
        if ids.is_empty() {
            return Err(Refusal::NoDevices);
        }
        let mut picked = Vec::with_capacity(ids.len());
        for id in ids {
            let device = devices
                .binary_search_by(|d| d.id.as_str().cmp(id))
                .map(|i| &devices[i])
                .map_err(|_| Refusal::UnknownDevice(id.clone()))?;
            if !taken.insert(id) {
                return Err(Refusal::DuplicateDevice(id.clone()));
            }
            picked.push(device);
        }
        picks.push(picked);
    }
    let mut total = 0usize;
    for picked in &picks {
        let bytes = env_bytes(resource, picked);
        if bytes > MAX_CONTAINER_ENV_BYTES {
            return Err(Refusal::TooLarge {
                bytes,
                limit: MAX_CONTAINER_ENV_BYTES,
            });
        }
        total += bytes;
        if total > MAX_ANSWER_ENV_BYTES {
            return Err(Refusal::TooLarge {
                bytes: total,
                limit: MAX_ANSWER_ENV_BYTES,
            });
        }
    }
    Ok(picks
        .iter()
        .map(|picked| render(resource, picked))
        .collect())
}

/// The bytes of names and values [`render`] would produce, counted without building them (an
/// upper bound: every `DEV<n>` is counted with the digits of the largest n).
fn env_bytes(resource: &ResourceName, devices: &[&Device]) -> usize {
    let p = prefix(resource).len();
    let index = "_DEV_".len() + devices.len().to_string().len();
    let one = |device: &Device| -> usize {
        fields(resource, device)
            .map(|(suffix, value)| p + 1 + suffix.len() + value.len())
            .sum::<usize>()
    };
    let fields_of = |device: &Device| 2 + device.env.len();
    let indexed: usize = devices.iter().map(|d| one(d) + index * fields_of(d)).sum();
    // The un-indexed copies are DEV0's: the lowest instanceID.
    let first = devices
        .iter()
        .min_by(|a, b| a.id.cmp(&b.id))
        .map_or(0, |d| one(d));
    p + "_NUM_DEVICES".len() + 20 + indexed + first
}

/// The resource name upper-cased, `.` removed, `/` and `-` replaced by `_`.
pub fn prefix(resource: &ResourceName) -> String {
    resource
        .as_str()
        .chars()
        .filter(|c| *c != '.')
        .map(|c| match c {
            '/' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// The env for one container given `devices`; they are sorted here by instanceID, whatever order
/// the kubelet asked in.
pub fn render(resource: &ResourceName, devices: &[&Device]) -> BTreeMap<String, String> {
    let p = prefix(resource);
    let mut sorted = devices.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut env = BTreeMap::new();
    for (n, device) in sorted.iter().enumerate() {
        for (suffix, value) in fields(resource, device) {
            env.insert(format!("{p}_DEV{n}_{suffix}"), value.to_owned());
            if n == 0 {
                env.insert(format!("{p}_{suffix}"), value.to_owned());
            }
        }
    }
    env.insert(format!("{p}_NUM_DEVICES"), sorted.len().to_string());
    env
}

/// Every name an Allocate of `resource` can set in some container, for a resource of `count`
/// devices whose env keys are `keys` (any device may be DEV<n>, so every key goes with every n).
pub fn possible_names(resource: &ResourceName, count: usize, keys: &[&str]) -> Vec<String> {
    let p = prefix(resource);
    let mut names = vec![format!("{p}_NUM_DEVICES")];
    for suffix in ["ID", "TYPE"].iter().chain(keys) {
        names.push(format!("{p}_{suffix}"));
        names.extend((0..count).map(|n| format!("{p}_DEV{n}_{suffix}")));
    }
    names
}

/// What one resource can set, for the collision check: its device count and every env key any
/// of its devices sets.
#[derive(Clone, Debug, Default)]
pub struct Shape<'a> {
    pub count: usize,
    pub keys: BTreeSet<&'a str>,
}

impl Shape<'_> {
    /// Whether `tail` can follow `<prefix>_` in a name this resource sets: `NUM_DEVICES`, `ID`,
    /// `TYPE`, a key, or `DEV<n>_` (n below the count, written as Allocate writes it) and one of
    /// those but `NUM_DEVICES`.
    fn sets(&self, tail: &str) -> bool {
        let field = |t: &str| t == "ID" || t == "TYPE" || self.keys.contains(t);
        tail == "NUM_DEVICES" || field(tail) || self.dev(tail).is_some_and(|(_, rest)| field(rest))
    }

    /// `DEV<n>_rest` with n a canonical index below the count: (n, rest).
    fn dev<'t>(&self, tail: &'t str) -> Option<(usize, &'t str)> {
        let (n, rest) = tail.strip_prefix("DEV")?.split_once('_')?;
        let canonical = !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && (n == "0" || !n.starts_with('0'));
        let n: usize = n.parse().ok().filter(|_| canonical)?;
        (n < self.count).then_some((n, rest))
    }
}

/// A name both resources could set in one container, where `second`'s prefix is `first`'s
/// followed by `_X` (`x` is X): every name either sets is `<prefix>_` and a tail, so a shared name
/// is a tail of `first`'s that starts with `X_` and goes on with a tail of `second`'s. Found from
/// `first`'s keys alone, never by listing names: a resource of 50,000 devices and many keys has
/// billions (one test compares this with listing them, on small shapes).
pub fn shared_name(prefix: &str, first: &Shape<'_>, x: &str, second: &Shape<'_>) -> Option<String> {
    let x_ = format!("{x}_");
    // Tails of `first` without an index: NUM_DEVICES, ID, TYPE and its keys.
    let plain = ["NUM_DEVICES", "ID", "TYPE"]
        .into_iter()
        .chain(first.keys.iter().copied());
    for tail in plain {
        if tail.strip_prefix(&x_).is_some_and(|rest| second.sets(rest)) {
            return Some(format!("{prefix}_{tail}"));
        }
    }
    // Indexed tails of `first`, DEV<n>_<field>: X is DEV<n> itself (then DEV<n>_ID is both's), or
    // DEV<n>_R and a key of `first` is R_ and a tail of `second`'s.
    let (n, r) = match first.dev(&x_) {
        Some((n, "")) => return Some(format!("{prefix}_DEV{n}_ID")),
        Some((n, r)) => (n, r),
        None => return None,
    };
    first
        .keys
        .iter()
        .find(|k| k.strip_prefix(r).is_some_and(|rest| second.sets(rest)))
        .map(|k| format!("{prefix}_DEV{n}_{k}"))
}

/// A device's (suffix, value) pairs: ID, TYPE and its env keys.
fn fields<'a>(
    resource: &'a ResourceName,
    device: &'a Device,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    [("ID", device.id.as_str()), ("TYPE", resource.as_str())]
        .into_iter()
        .chain(device.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EnvKey, EnvValue, InstanceId, NodeName};

    fn devices(yaml: &str) -> (ResourceName, Vec<Device>) {
        let c = Config::parse(yaml.as_bytes(), "t").unwrap();
        let mut n = c.for_node(&NodeName::try_from("a".to_owned()).unwrap());
        let (r, d) = n.pop_first().unwrap();
        (r, d.to_vec())
    }

    fn pairs(env: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    proptest::proptest! {
        /// For any valid resource, devices and env: every generated name is distinct (the count
        /// is exact), DEV<n> follow instanceID order whatever order the kubelet asked in, and the
        /// un-indexed names copy DEV0.
        #[test]
        fn layout_invariants(
            domain in "[a-z][a-z0-9]{0,8}(\\.[a-z][a-z0-9-]{0,6}[a-z0-9])?",
            name in "[A-Za-z0-9]([A-Za-z0-9._-]{0,12}[A-Za-z0-9])?",
            ids in proptest::collection::btree_set("[A-Za-z0-9._:/-]{1,12}", 1..6),
            vars in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,8}", "[ -~]{0,10}", 0..4),
            rotate in 0usize..6,
        ) {
            let resource = ResourceName::try_from(format!("{domain}/{name}")).unwrap();
            let vars: BTreeMap<EnvKey, EnvValue> = vars
                .into_iter()
                .filter_map(|(k, v)| Some((EnvKey::try_from(k).ok()?, EnvValue::try_from(v).ok()?)))
                .collect();
            let devices: Vec<Device> = ids
                .iter()
                .map(|id| Device { id: InstanceId::try_from(id.clone()).unwrap(), env: vars.clone().into(), health_check: None })
                .collect();
            let mut asked: Vec<&Device> = devices.iter().collect();
            let r = rotate % asked.len();
            asked.rotate_left(r);
            let out = render(&resource, &asked);
            let p = prefix(&resource);
            let n = devices.len();
            proptest::prop_assert_eq!(out.len(), n * (2 + vars.len()) + 1 + 2 + vars.len());
            proptest::prop_assert_eq!(&out[&format!("{p}_NUM_DEVICES")], &n.to_string());
            // `devices` is in instanceID order (from a BTreeSet).
            for (i, d) in devices.iter().enumerate() {
                proptest::prop_assert_eq!(&out[&format!("{p}_DEV{i}_ID")], d.id.as_str());
                proptest::prop_assert_eq!(&out[&format!("{p}_DEV{i}_TYPE")], resource.as_str());
                for (k, v) in &d.env {
                    proptest::prop_assert_eq!(&out[&format!("{p}_DEV{i}_{k}")], v.as_str());
                    proptest::prop_assert_eq!(&out[&format!("{p}_{k}")], v.as_str());
                }
            }
            proptest::prop_assert_eq!(&out[&format!("{p}_ID")], devices[0].id.as_str());
            // The names the config check compares across resources cover every name set here.
            let keys: Vec<&str> = vars.keys().map(|k| k.as_str()).collect();
            let possible: BTreeSet<String> = possible_names(&resource, n, &keys).into_iter().collect();
            for name in out.keys() {
                proptest::prop_assert!(possible.contains(name), "{name} missing from possible_names");
            }
            proptest::prop_assert!(p.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The collision check without listing names agrees with listing them.
        #[test]
        fn shared_name_agrees_with_listing_every_name(
            x in "(DEV(0|1|2|10|01)(_[A-Z]{1,2}){0,2}|[A-Z]{1,2}(_DEV[0-2])?(_[A-Z]{1,2})?)",
            count_f in 0usize..4,
            count_g in 1usize..4,
            keys_f in proptest::collection::btree_set("(ID_|A_|DEV0_)?[A-Z]{1,2}(_ID|_TYPE|_NUM_DEVICES|_DEV[0-2]_ID|_[A-Z])?", 0..5),
            keys_g in proptest::collection::btree_set("[A-Z]{1,2}(_[A-Z])?", 0..3),
        ) {
            let keys_f: BTreeSet<String> = keys_f.into_iter()
                .filter(|k| EnvKey::try_from(k.clone()).is_ok())
                .collect();
            let keys_g: BTreeSet<String> = keys_g.into_iter()
                .filter(|k| EnvKey::try_from(k.clone()).is_ok())
                .collect();
            let first = ResourceName::try_from("a.io/x".to_owned()).unwrap();
            let p = prefix(&first);
            let kf: Vec<&str> = keys_f.iter().map(String::as_str).collect();
            let kg: Vec<&str> = keys_g.iter().map(String::as_str).collect();
            let names_f: BTreeSet<String> = possible_names(&first, count_f, &kf).into_iter().collect();
            // `second`'s names, built from its prefix directly (X need not come from a real name).
            let second_prefix = format!("{p}_{x}");
            let mut names_g = BTreeSet::from([format!("{second_prefix}_NUM_DEVICES")]);
            for field in ["ID", "TYPE"].iter().chain(&kg) {
                names_g.insert(format!("{second_prefix}_{field}"));
                for m in 0..count_g {
                    names_g.insert(format!("{second_prefix}_DEV{m}_{field}"));
                }
            }
            let listed = names_f.intersection(&names_g).next().cloned();
            let shape_f = Shape { count: count_f, keys: kf.iter().copied().collect() };
            let shape_g = Shape { count: count_g, keys: kg.iter().copied().collect() };
            let found = shared_name(&p, &shape_f, &x, &shape_g);
            proptest::prop_assert_eq!(listed.is_some(), found.is_some(), "listed {:?}, found {:?}", listed, found);
            if let Some(name) = found {
                proptest::prop_assert!(names_f.contains(&name) && names_g.contains(&name), "{}", name);
            }
        }
    }

    #[test]
    fn allocate_refuses_what_no_container_or_kubelet_would_take() {
        // 20 devices of 60 KiB of env each (one value behind an alias): 1.2 MiB for one
        // container, past the bound.
        let value = "v".repeat(30 << 10);
        let mut yaml = format!("deviceMapping:\n- hosts: [a]\n  devices:\n  - {{resourceName: a.io/x, instanceID: \"00\", env: {{A: &V {value}, B: *V}}}}\n");
        for i in 1..20 {
            yaml.push_str(&format!(
                "  - {{resourceName: a.io/x, instanceID: \"{i:02}\", env: {{A: *V, B: *V}}}}\n"
            ));
        }
        let (r, d) = devices(&yaml);
        let ids: Vec<String> = d.iter().map(|d| d.id.to_string()).collect();
        match allocate(&r, &d, std::slice::from_ref(&ids)) {
            Err(Refusal::TooLarge { bytes, limit }) => {
                assert_eq!(limit, MAX_CONTAINER_ENV_BYTES);
                assert!(bytes > limit);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Split over containers of a few devices each, every container fits, and the answer too.
        let few: Vec<Vec<String>> = ids.chunks(5).map(<[String]>::to_vec).collect();
        let envs = allocate(&r, &d, &few).unwrap();
        assert_eq!(envs.len(), 4);
        // The counted size is never below what is rendered.
        for (ids, env) in few.iter().zip(&envs) {
            let picked: Vec<&Device> = d
                .iter()
                .filter(|x| ids.contains(&x.id.to_string()))
                .collect();
            let rendered: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(env_bytes(&r, &picked) >= rendered);
        }
        assert_eq!(allocate(&r, &d, &[]), Err(Refusal::NoContainers));
        assert_eq!(allocate(&r, &d, &[vec![]]), Err(Refusal::NoDevices));
        let two = vec![
            vec!["00".to_owned()],
            vec!["01".to_owned(), "00".to_owned()],
        ];
        assert_eq!(
            allocate(&r, &d, &two),
            Err(Refusal::DuplicateDevice("00".to_owned()))
        );
        assert_eq!(
            allocate(&r, &d, &[vec!["zz".to_owned()]]),
            Err(Refusal::UnknownDevice("zz".to_owned()))
        );
    }

    #[test]
    fn prefixes() {
        let p = |s: &str| prefix(&ResourceName::try_from(s.to_owned()).unwrap());
        assert_eq!(p("example.com/widget"), "EXAMPLECOM_WIDGET");
        assert_eq!(p("skao.int/signal-generator"), "SKAOINT_SIGNAL_GENERATOR");
        assert_eq!(p("a-b.io/x.y_z"), "A_BIO_XY_Z");
    }

    #[test]
    fn seed_example_exact() {
        let (r, d) = devices(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - resourceName: example.com/widget\n    instanceID: \"0001\"\n    env: {IP: 192.168.0.200, PORT: 12345}\n",
        );
        let env = render(&r, &[&d[0]]);
        assert_eq!(
            pairs(&env),
            [
                ("EXAMPLECOM_WIDGET_DEV0_ID", "0001"),
                ("EXAMPLECOM_WIDGET_DEV0_IP", "192.168.0.200"),
                ("EXAMPLECOM_WIDGET_DEV0_PORT", "12345"),
                ("EXAMPLECOM_WIDGET_DEV0_TYPE", "example.com/widget"),
                ("EXAMPLECOM_WIDGET_ID", "0001"),
                ("EXAMPLECOM_WIDGET_IP", "192.168.0.200"),
                ("EXAMPLECOM_WIDGET_NUM_DEVICES", "1"),
                ("EXAMPLECOM_WIDGET_PORT", "12345"),
                ("EXAMPLECOM_WIDGET_TYPE", "example.com/widget"),
            ]
        );
    }

    #[test]
    fn several_devices_are_indexed_in_instance_id_order() {
        let (r, d) = devices(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - {resourceName: a.io/x, instanceID: b, env: {K: vb}}\n  - {resourceName: a.io/x, instanceID: a}\n",
        );
        // Asked in reverse order; DEV0 is still the smaller instanceID.
        let env = render(&r, &[&d[1], &d[0]]);
        assert_eq!(
            pairs(&env),
            [
                ("AIO_X_DEV0_ID", "a"),
                ("AIO_X_DEV0_TYPE", "a.io/x"),
                ("AIO_X_DEV1_ID", "b"),
                ("AIO_X_DEV1_K", "vb"),
                ("AIO_X_DEV1_TYPE", "a.io/x"),
                ("AIO_X_ID", "a"),
                ("AIO_X_NUM_DEVICES", "2"),
                ("AIO_X_TYPE", "a.io/x"),
            ]
        );
    }
}
