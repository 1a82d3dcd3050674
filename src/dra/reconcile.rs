//! Publishing: the driver's slices and classes made what the inventory gives. The slices are
//! listed and compared with what the inventory gives at their generation: equal, nothing is
//! written. Otherwise every slice is written at the next generation (the scheduler ignores a
//! pool's older generations), then slices no longer wanted are deleted. Slices are the driver's
//! by `spec.driver`, not by name: each wanted slice overwrites the one of its name, else another
//! of the driver's left over, else is created; a name someone else's slice holds makes the server
//! name it (`generateName`). Writes name the version read, so two publishers racing (a leader
//! that lost its Lease while a call hung) cannot both win. DeviceClasses are compared and written
//! the same way, without generations.

use std::collections::hash_map::RandomState;

use log::warn;

use crate::config::dra::Inventory;
use crate::dra::api::{Object, Objects};
use crate::dra::objects::{
    self, DeviceClass, Kept, Layout, ResourceSlice, SliceSpec, Taints, POOL,
};
use crate::kube::client::ApiError;

/// Why a publish stopped.
#[derive(Debug)]
pub enum PublishError {
    Api(ApiError),
    /// The Lease was lost (or could not be renewed in time) while writing: another node may
    /// publish now, so this one stops at once.
    NoLongerLeader,
}

impl From<ApiError> for PublishError {
    fn from(e: ApiError) -> Self {
        PublishError::Api(e)
    }
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Api(e) => write!(f, "{e}"),
            PublishError::NoLongerLeader => write!(f, "this node no longer leads"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Api(e) => Some(e),
            PublishError::NoLongerLeader => None,
        }
    }
}

/// What the driver's pool should be: its devices, and which of them to taint.
#[derive(Clone, Copy)]
pub struct Wanted<'a> {
    pub driver: &'a str,
    pub inventory: &'a Inventory,
    pub taints: &'a Taints,
}

static NO_TAINTS: Taints = Taints::new();

impl<'a> Wanted<'a> {
    /// `inventory`'s devices, none tainted.
    pub fn untainted(driver: &'a str, inventory: &'a Inventory) -> Self {
        Wanted {
            driver,
            inventory,
            taints: &NO_TAINTS,
        }
    }
}

/// What a publish found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub generation: i64,
    pub slices: usize,
    pub devices: usize,
    /// Whether anything was written or deleted.
    pub changed: bool,
}

/// Makes the driver's slices and classes what `inventory` gives (see the module doc). `floor` is
/// the highest generation this publisher wrote before: a pool whose slices were all deleted
/// meanwhile must not go back to an older generation.
///
/// `lead` is asked before every write: it renews the Lease when due and says whether this node
/// still leads, so a publish of many slices neither starves the Lease nor goes on after losing it.
pub fn reconcile(
    slices: &mut dyn Objects<ResourceSlice>,
    classes: &mut dyn Objects<DeviceClass>,
    wanted: &Wanted<'_>,
    floor: i64,
    kept: &mut Kept,
    lead: &mut dyn FnMut() -> bool,
) -> Result<Published, PublishError> {
    let Wanted {
        driver,
        inventory,
        taints,
    } = *wanted;
    let mut changed = reconcile_classes(classes, driver, inventory, kept, lead)?;
    // Compared by digests of what the server keeps (`Kept::digest`), one slice at a time, both
    // what is read (a page at a time) and what is wanted (built from the layout): a publish never
    // holds the pool, read or written.
    let keys = RandomState::new();
    let kept_now = *kept;
    let ours = objects::labels(driver);
    let mut observed: Vec<Seen> = Vec::new();
    slices.each(&mut |s| {
        if s.spec.driver != driver {
            return;
        }
        // Names do not matter (a slice may have had to take another, below); labels must be
        // there.
        let labelled = (ours.iter()).all(|(k, v)| s.metadata.labels.get(k) == Some(v));
        observed.push(Seen {
            generation: (s.spec.pool.name == POOL).then_some(s.spec.pool.generation),
            digests: labelled.then(|| Digests::of(&kept_now, &s.spec, &keys)),
            name: s.metadata.name,
            version: s.metadata.resource_version,
        });
    })?;
    let current = (observed.iter())
        .filter_map(|s| s.generation)
        .max()
        .unwrap_or(0)
        .max(floor);
    let layout = Layout::new(driver, inventory);
    let wanted_at = |generation: i64| -> Vec<Digests> {
        (0..layout.len())
            .map(|n| Digests::of(&kept_now, &layout.slice(n, generation, taints).spec, &keys))
            .collect()
    };
    // The same slices, as multisets of digests (`whole`: taints too, else without).
    let same = |want: &[Digests], whole: bool| {
        let pick = |d: &Digests| if whole { d.whole } else { d.untainted };
        let mut seen: Vec<Option<u64>> = (observed.iter())
            .map(|o| o.digests.as_ref().map(pick))
            .collect();
        let mut want: Vec<Option<u64>> = want.iter().map(|d| Some(pick(d))).collect();
        seen.sort_unstable();
        want.sort_unstable();
        seen == want
    };
    let want = wanted_at(current);
    let published = |changed| Published {
        generation: current,
        slices: layout.len(),
        devices: inventory.devices().len(),
        changed,
    };
    if same(&want, true) {
        return Ok(published(changed));
    }
    // Only taints differ: each slice whose taints changed is replaced at the same generation
    // (the pool's devices are the same; KEP-5055 needs no new generation for this).
    if same(&want, false) {
        for (n, w) in want.iter().enumerate() {
            let Some(old) = (observed.iter())
                .find(|o| o.digests.as_ref().map(|d| d.untainted) == Some(w.untainted))
            else {
                continue;
            };
            if old.digests.as_ref().map(|d| d.whole) == Some(w.whole) {
                continue;
            }
            if !lead() {
                return Err(PublishError::NoLongerLeader);
            }
            let mut slice = layout.slice(n, current, taints);
            slice.metadata.name = old.name.clone();
            slice.metadata.resource_version = old.version.clone();
            let stored = slices.replace(&slice)?;
            kept.learn_slice(&slice.spec, &stored.spec);
        }
        return Ok(published(true));
    }
    drop(want);
    // A hostile or broken server's i64::MAX must not overflow.
    let generation = current.saturating_add(1);
    // Each wanted slice overwrites one of ours: the one of its name, else any other left.
    let mut reuse: Vec<Option<usize>> = (0..layout.len())
        .map(|n| {
            let name = layout.name(n);
            observed.iter().position(|o| o.name == name)
        })
        .collect();
    let mut spare: Vec<usize> = (0..observed.len())
        .filter(|i| !reuse.contains(&Some(*i)))
        .rev()
        .collect();
    for r in reuse.iter_mut().filter(|r| r.is_none()) {
        *r = spare.pop();
    }
    for (n, old) in reuse.iter().enumerate() {
        if !lead() {
            return Err(PublishError::NoLongerLeader);
        }
        // Built, written and dropped: one slice's JSON at a time.
        let mut slice = layout.slice(n, generation, taints);
        match old.map(|i| &observed[i]) {
            Some(old) => {
                slice.metadata.name = old.name.clone();
                slice.metadata.resource_version = old.version.clone();
                let stored = slices.replace(&slice)?;
                kept.learn_slice(&slice.spec, &stored.spec);
            }
            None => match slices.create(&slice) {
                // The name is taken: by a publisher of this driver racing this one (it
                // was not listed), whose slices the next attempt lists; or by another
                // driver's slice, or one someone wrote by hand: the server names ours.
                Err(e) if e.status() == Some(409) => {
                    match slices.get(&slice.metadata.name)? {
                        Some(other) if other.spec.driver != driver => {}
                        _ => return Err(e.into()),
                    }
                    warn!(
                        "a ResourceSlice {} exists that is not {driver}'s; publishing under a \
                         name the API server gives",
                        slice.metadata.name
                    );
                    slice.metadata.generate_name = format!("{}-", slice.metadata.name);
                    slice.metadata.name.clear();
                    slices.create(&slice)?;
                }
                other => {
                    let stored = other?;
                    kept.learn_slice(&slice.spec, &stored.spec);
                }
            },
        }
    }
    for old in spare.iter().map(|&i| &observed[i]) {
        if !lead() {
            return Err(PublishError::NoLongerLeader);
        }
        slices.delete(&old.name, &old.version)?;
    }
    changed = true;
    Ok(Published {
        generation,
        slices: layout.len(),
        devices: inventory.devices().len(),
        changed,
    })
}

/// What a publish keeps of a slice of the driver's it read.
struct Seen {
    name: String,
    version: String,
    /// Its generation, if it is in spookd's pool.
    generation: Option<i64>,
    /// `None` for a slice without spookd's labels: it matches no wanted slice.
    digests: Option<Digests>,
}

/// A slice's spec as compared ([`Kept::digest`]), with its taints and without.
struct Digests {
    whole: u64,
    untainted: u64,
}

impl Digests {
    fn of(kept: &Kept, spec: &SliceSpec, keys: &RandomState) -> Self {
        Digests {
            whole: kept.digest(spec, true, keys),
            untainted: kept.digest(spec, false, keys),
        }
    }
}

fn reconcile_classes(
    api: &mut dyn Objects<DeviceClass>,
    driver: &str,
    inventory: &Inventory,
    kept: &mut Kept,
    lead: &mut dyn FnMut() -> bool,
) -> Result<bool, PublishError> {
    let observed = api.list()?;
    let want = objects::classes(driver, inventory);
    let mut changed = false;
    for class in &want {
        if !lead() {
            return Err(PublishError::NoLongerLeader);
        }
        match observed
            .iter()
            .find(|o| o.metadata.name == class.metadata.name)
        {
            Some(old) if kept.same_class(&old.spec, &class.spec) => {}
            Some(old) => {
                let mut class = class.clone();
                class.metadata.resource_version = old.metadata.resource_version.clone();
                let stored = api.replace(&class)?;
                kept.learn_class(&class.spec, &stored.spec);
                changed = true;
            }
            None => match api.create(class) {
                Ok(stored) => {
                    kept.learn_class(&class.spec, &stored.spec);
                    changed = true;
                }
                // Someone else's class of that name (not labelled ours): theirs to keep.
                Err(e) if e.status() == Some(409) => warn!(
                    "a DeviceClass {} exists that spookd did not make; leaving it as it is",
                    class.metadata.name
                ),
                Err(e) => return Err(e.into()),
            },
        }
    }
    for old in &observed {
        if !want.iter().any(|w| w.metadata.name == old.metadata.name) {
            if !lead() {
                return Err(PublishError::NoLongerLeader);
            }
            api.delete(old.name(), old.version())?;
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dra::test_support::*;

    /// Every class serves its resource by name to pods that ask in `resources.limits`. A server
    /// with the gate off drops the field: each class is written once, the drop is learnt from
    /// what the server stored, and nothing is rewritten after. A server that keeps it gets an
    /// older class (written without the field) updated.
    #[test]
    fn classes_serve_extended_resources_by_what_the_server_keeps() {
        let inv = inventory(TWO_SETS);
        let want: Vec<(String, Option<String>)> = vec![
            ("x.a.io".into(), Some("a.io/x".into())),
            ("y.a.io".into(), Some("a.io/y".into())),
        ];
        let stored = |c: &Memory<DeviceClass>| -> Vec<(String, Option<String>)> {
            (c.objects.values())
                .map(|(_, c)| {
                    (
                        c.metadata.name.clone(),
                        c.spec.extended_resource_name.clone(),
                    )
                })
                .collect()
        };
        // Gates on: kept, and learnt so.
        let (mut slices, mut classes) = (Memory::default(), Memory::default());
        let mut kept = Kept::default();
        reconcile(
            &mut slices,
            &mut classes,
            &Wanted::untainted("d.io", &inv),
            0,
            &mut kept,
            &mut || true,
        )
        .unwrap();
        assert_eq!(stored(&classes), want);
        assert_eq!(kept.extended_resource_name, Some(true));
        assert!(kept.dropped().is_empty());
        // An older spookd's class, without the field, is updated on a server that keeps it.
        for (_, c) in classes.objects.values_mut() {
            c.spec.extended_resource_name = None;
        }
        let p = reconcile(
            &mut slices,
            &mut classes,
            &Wanted::untainted("d.io", &inv),
            0,
            &mut kept,
            &mut || true,
        );
        assert!(p.unwrap().changed);
        assert_eq!(stored(&classes), want);
        assert_eq!(classes.writes, 4);

        // Gates off: written once each, then compared by what the server keeps.
        let (mut slices, mut classes) = (Memory::default(), Memory::<DeviceClass>::default());
        classes.gates_off = true;
        let mut kept = Kept::default();
        for _ in 0..5 {
            reconcile(
                &mut slices,
                &mut classes,
                &Wanted::untainted("d.io", &inv),
                0,
                &mut kept,
                &mut || true,
            )
            .unwrap();
        }
        assert_eq!(classes.writes, 2);
        assert_eq!(
            stored(&classes),
            [("x.a.io".to_owned(), None), ("y.a.io".to_owned(), None)]
        );
        assert_eq!(kept.dropped(), ["DeviceClass extendedResourceName"]);
        // A later change of a class's selector (another driver name) is still written.
        let p = reconcile(
            &mut slices,
            &mut classes,
            &Wanted::untainted("e.io", &inv),
            0,
            &mut kept,
            &mut || true,
        );
        assert!(p.unwrap().changed);
        assert_eq!(classes.writes, 4);
    }

    const PROBED: &str = "deviceMapping:
  - hosts: [a, b]
    devices:
      - {resourceName: a.io/x, instanceID: '1', healthCheck: {tcp: '127.0.0.1:9'}}
      - {resourceName: a.io/x, instanceID: '2'}
  - hosts: [c]
    devices:
      - {resourceName: a.io/y, instanceID: '1'}
";

    /// A stored slice's name, generation, and (device, taint value) pairs.
    type SliceTaints = (String, i64, Vec<(String, String)>);

    /// The taints of each stored slice's devices.
    fn tainted(slices: &Memory<ResourceSlice>) -> Vec<SliceTaints> {
        (slices.objects.values())
            .map(|(_, s)| {
                let t = (s.spec.devices.iter())
                    .flat_map(|d| d.taints.iter().map(|t| (d.name.clone(), t.value.clone())))
                    .collect();
                (s.metadata.name.clone(), s.spec.pool.generation, t)
            })
            .collect()
    }

    /// A device turning Unhealthy is tainted NoSchedule in its slice, at the same generation and
    /// with no other slice written; healthy again, the taint goes the same way.
    #[test]
    fn taints_change_in_place_without_a_new_generation() {
        let inv = inventory(PROBED);
        let (mut slices, mut classes) = (Memory::default(), Memory::default());
        let mut kept = Kept::default();
        let mut publish = |slices: &mut Memory<ResourceSlice>, taints: &Taints| {
            let wanted = Wanted {
                driver: "d.io",
                inventory: &inv,
                taints,
            };
            reconcile(slices, &mut classes, &wanted, 0, &mut kept, &mut || true).unwrap()
        };
        publish(&mut slices, &Taints::new());
        assert_eq!(slices.writes, 2);
        let off = Taints::from([(
            "x-a-io-1".to_owned(),
            "connect to 127.0.0.1:9: Connection refused (os error 111)".to_owned(),
        )]);
        let p = publish(&mut slices, &off);
        assert_eq!((p.generation, p.changed), (1, true));
        assert_eq!(slices.writes, 3);
        let value = "connect-to-127.0.0.1-9-Connection-refused-os-error-111";
        assert_eq!(
            tainted(&slices),
            [
                (
                    "d.io-0".to_owned(),
                    1,
                    vec![("x-a-io-1".to_owned(), value.to_owned())]
                ),
                ("d.io-1".to_owned(), 1, vec![]),
            ]
        );
        let taint = &slices.objects["d.io-0"].1.spec.devices[0].taints[0];
        assert_eq!(
            (taint.key.as_str(), taint.effect.as_str()),
            ("d.io/unhealthy", "NoSchedule")
        );
        // The same again: nothing written, even with a server-set timeAdded.
        for (_, s) in slices.objects.values_mut() {
            for t in s.spec.devices.iter_mut().flat_map(|d| d.taints.iter_mut()) {
                t.time_added = Some("2026-12-07T10:00:00Z".into());
            }
        }
        publish(&mut slices, &off);
        assert_eq!(slices.writes, 3);
        publish(&mut slices, &Taints::new());
        assert_eq!(slices.writes, 4);
        assert_eq!(tainted(&slices)[0], ("d.io-0".to_owned(), 1, vec![]));
    }

    /// A server with the taints gate off drops them: learnt from the first write, and compared
    /// without them after (no rewrite loop), while a real change is still published.
    #[test]
    fn a_server_that_drops_taints_is_not_rewritten() {
        let inv = inventory(PROBED);
        let (mut slices, mut classes) = (Memory::<ResourceSlice>::default(), Memory::default());
        slices.gates_off = true;
        let off = Taints::from([("x-a-io-1".to_owned(), "refused".to_owned())]);
        let wanted = Wanted {
            driver: "d.io",
            inventory: &inv,
            taints: &off,
        };
        let mut kept = Kept::default();
        for _ in 0..5 {
            reconcile(
                &mut slices,
                &mut classes,
                &wanted,
                0,
                &mut kept,
                &mut || true,
            )
            .unwrap();
        }
        assert_eq!(slices.writes, 2);
        assert_eq!(kept.dropped(), ["ResourceSlice device taints"]);
        let fewer = inventory("deviceMapping:\n  - hosts: [c]\n    devices:\n      - {resourceName: a.io/y, instanceID: '1'}\n");
        let p = reconcile(
            &mut slices,
            &mut classes,
            &Wanted::untainted("d.io", &fewer),
            0,
            &mut kept,
            &mut || true,
        );
        assert_eq!(p.unwrap().generation, 2);
    }

    /// A host set with a probed device is cut into slices of 64 (the API's limit for a slice
    /// holding a tainted device), whatever the health: the layout never changes with it.
    #[test]
    fn slices_that_may_hold_a_tainted_device_hold_at_most_64() {
        let mut yaml = String::from("deviceMapping:\n  - hosts: [a]\n    devices:\n");
        yaml.push_str("      - {resourceName: a.io/x, instanceID: '000', healthCheck: {tcp: '127.0.0.1:9'}}\n");
        for i in 1..130 {
            yaml.push_str(&format!(
                "      - {{resourceName: a.io/x, instanceID: '{i:03}'}}\n"
            ));
        }
        yaml.push_str("  - hosts: [b]\n    devices:\n");
        for i in 0..130 {
            yaml.push_str(&format!(
                "      - {{resourceName: a.io/y, instanceID: '{i:03}'}}\n"
            ));
        }
        let inv = inventory(&yaml);
        let sizes: Vec<usize> = objects::slices("d.io", &inv, 1, &Taints::new())
            .iter()
            .map(|s| s.spec.devices.len())
            .collect();
        assert_eq!(sizes, [64, 64, 2, 128, 2]);
        let all: Taints = inv
            .devices()
            .iter()
            .map(|d| (d.name.clone(), "x".to_owned()))
            .collect();
        let tainted = objects::slices("d.io", &inv, 1, &all);
        assert_eq!(
            tainted
                .iter()
                .map(|s| s.spec.devices.len())
                .collect::<Vec<_>>(),
            sizes
        );
    }

    /// One publish of `inventory` for driver d.io, untainted, as a leader that stays one and has
    /// learnt nothing of the server yet.
    fn publish(
        slices: &mut dyn Objects<ResourceSlice>,
        classes: &mut dyn Objects<DeviceClass>,
        inventory: &Inventory,
        floor: i64,
    ) -> Result<Published, PublishError> {
        let wanted = Wanted::untainted("d.io", inventory);
        reconcile(
            slices,
            classes,
            &wanted,
            floor,
            &mut Kept::default(),
            &mut || true,
        )
    }

    #[test]
    fn publishes_once_then_only_what_changed() {
        let (mut slices, mut classes) = (Memory::default(), Memory::default());
        let inv = inventory(TWO_SETS);
        let p = publish(&mut slices, &mut classes, &inv, 0).unwrap();
        assert_eq!(
            (p.generation, p.slices, p.devices, p.changed),
            (1, 2, 3, true)
        );
        assert_eq!(slices.writes, 2);
        assert_eq!(classes.writes, 2);
        // Up to date: nothing written.
        let p = publish(&mut slices, &mut classes, &inv, 0).unwrap();
        assert_eq!((p.generation, p.changed), (1, false));
        assert_eq!(slices.writes, 2);
        // Device 2 moves to host c, resource a.io/y goes: generation 2, one slice, the other
        // deleted, a.io/y's class deleted.
        let moved = inventory(
            "deviceMapping:
  - hosts: [a, b]
    devices:
      - {resourceName: a.io/x, instanceID: '1'}
  - hosts: [c]
    devices:
      - {resourceName: a.io/x, instanceID: '2'}
",
        );
        let p = publish(&mut slices, &mut classes, &moved, 0).unwrap();
        assert_eq!((p.generation, p.slices, p.changed), (2, 2, true));
        let now: Vec<(String, i64, Vec<String>)> = slices
            .objects
            .values()
            .map(|(_, s)| {
                (
                    s.metadata.name.clone(),
                    s.spec.pool.generation,
                    s.spec.devices.iter().map(|d| d.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            now,
            [
                ("d.io-0".to_owned(), 2, vec!["x-a-io-1".to_owned()]),
                ("d.io-1".to_owned(), 2, vec!["x-a-io-2".to_owned()]),
            ]
        );
        let names: Vec<&String> = classes.objects.keys().collect();
        assert_eq!(names, ["x.a.io"]);
        // Someone deletes a slice: the next publish repairs it at a new generation.
        slices.objects.remove("d.io-1");
        let p = publish(&mut slices, &mut classes, &moved, 0).unwrap();
        assert_eq!((p.generation, p.changed), (3, true));
        assert_eq!(slices.objects.len(), 2);
        // Every slice deleted: the generation goes on from the highest this publisher wrote.
        slices.objects.clear();
        let p = publish(&mut slices, &mut classes, &moved, 3).unwrap();
        assert_eq!(p.generation, 4);
    }

    /// The pool read back is taken one slice at a time (a page at a time from the API) and kept
    /// as digests: `list`, which would hold it whole, is never called. What the server adds (a
    /// taint's `timeAdded`) is not a difference; an edited attribute or a lost label is.
    #[test]
    fn the_pool_read_back_is_compared_one_slice_at_a_time() {
        struct OneAtATime(Memory<ResourceSlice>);
        impl Objects<ResourceSlice> for OneAtATime {
            fn list(&mut self) -> Result<Vec<ResourceSlice>, ApiError> {
                panic!("the whole pool was read at once")
            }
            fn each(&mut self, f: &mut dyn FnMut(ResourceSlice)) -> Result<(), ApiError> {
                self.0.objects.values().for_each(|(_, o)| f(o.clone()));
                Ok(())
            }
            fn get(&mut self, name: &str) -> Result<Option<ResourceSlice>, ApiError> {
                self.0.get(name)
            }
            fn create(&mut self, o: &ResourceSlice) -> Result<ResourceSlice, ApiError> {
                self.0.create(o)
            }
            fn replace(&mut self, o: &ResourceSlice) -> Result<ResourceSlice, ApiError> {
                self.0.replace(o)
            }
            fn delete(&mut self, name: &str, version: &str) -> Result<(), ApiError> {
                self.0.delete(name, version)
            }
        }
        let (mut slices, mut classes) = (OneAtATime(Memory::default()), Memory::default());
        let inv = inventory(TWO_SETS);
        let taints = Taints::from([("x-a-io-1".to_owned(), "off".to_owned())]);
        let mut kept = Kept::default();
        let mut publish = |slices: &mut OneAtATime| {
            let wanted = Wanted {
                driver: "d.io",
                inventory: &inv,
                taints: &taints,
            };
            reconcile(slices, &mut classes, &wanted, 0, &mut kept, &mut || true).unwrap()
        };
        assert_eq!((publish(&mut slices).generation, slices.0.writes), (1, 2));
        // The server stamps the taint: no difference.
        for (_, s) in slices.0.objects.values_mut() {
            for t in s.spec.devices.iter_mut().flat_map(|d| &mut d.taints) {
                t.time_added = Some("2026-12-07T12:00:00Z".into());
            }
        }
        let p = publish(&mut slices);
        assert_eq!((p.generation, p.changed, slices.0.writes), (1, false, 2));
        // Someone edits an attribute: a new generation, every slice written.
        let (_, s) = slices.0.objects.get_mut("d.io-1").unwrap();
        s.spec.devices[0].attributes.clear();
        let p = publish(&mut slices);
        assert_eq!((p.generation, p.changed, slices.0.writes), (2, true, 4));
        // A slice loses spookd's labels: written again.
        let (_, s) = slices.0.objects.get_mut("d.io-0").unwrap();
        s.metadata.labels.clear();
        let p = publish(&mut slices);
        assert_eq!((p.generation, slices.0.writes), (3, 6));
        let p = publish(&mut slices);
        assert_eq!((p.generation, p.changed, slices.0.writes), (3, false, 6));
        let stored: Vec<ResourceSlice> = (slices.0.objects.values())
            .map(|(_, s)| {
                let mut s = s.clone();
                s.metadata.resource_version.clear();
                s
            })
            .collect();
        assert_eq!(stored, objects::slices("d.io", &inv, 3, &taints));
    }

    /// A slice of another driver (or one written by hand) named as ours would be: ours is
    /// published under a name the server gives, once, and kept at later publishes.
    #[test]
    fn a_foreign_slice_with_our_name_does_not_block_publishing() {
        let (mut slices, mut classes) = (Memory::default(), Memory::default());
        let inv = inventory(TWO_SETS);
        let mut foreign = objects::slices("other.io", &inv, 7, &Taints::new()).remove(0);
        foreign.metadata.name = "d.io-0".into();
        slices.create(&foreign).unwrap();
        let p = publish(&mut slices, &mut classes, &inv, 0).unwrap();
        assert_eq!((p.generation, p.slices, p.changed), (1, 2, true));
        let of = |slices: &Memory<ResourceSlice>| -> Vec<(String, String, i64)> {
            (slices.objects.values())
                .map(|(_, s)| {
                    let m = &s.metadata;
                    (
                        m.name.clone(),
                        s.spec.driver.clone(),
                        s.spec.pool.generation,
                    )
                })
                .collect()
        };
        let published = [
            ("d.io-0".to_owned(), "other.io".to_owned(), 7),
            ("d.io-0-00002".to_owned(), "d.io".to_owned(), 1),
            ("d.io-1".to_owned(), "d.io".to_owned(), 1),
        ];
        assert_eq!(of(&slices), published);
        assert_eq!(
            slices.objects["d.io-0-00002"].1.spec,
            objects::slices("d.io", &inv, 1, &Taints::new())[0].spec
        );
        // Up to date under that name: nothing written.
        let writes = slices.writes;
        let p = publish(&mut slices, &mut classes, &inv, 0).unwrap();
        assert_eq!((p.generation, p.changed, slices.writes), (1, false, writes));
        // A change rewrites the slice under the name it has: no new name, nothing deleted.
        let fewer = inventory(
            "deviceMapping:
  - hosts: [a, b]
    devices:
      - {resourceName: a.io/x, instanceID: '1'}
  - hosts: [c]
    devices:
      - {resourceName: a.io/y, instanceID: '1'}
",
        );
        let p = publish(&mut slices, &mut classes, &fewer, 0).unwrap();
        assert_eq!((p.generation, p.slices, p.changed), (2, 2, true));
        let names: Vec<(String, String, i64)> = of(&slices);
        assert_eq!(
            names,
            [
                ("d.io-0".to_owned(), "other.io".to_owned(), 7),
                ("d.io-0-00002".to_owned(), "d.io".to_owned(), 2),
                ("d.io-1".to_owned(), "d.io".to_owned(), 2),
            ]
        );
        assert_eq!(slices.writes, writes + 2);
    }

    /// A publisher of this driver racing this one (a leader that lost its Lease mid-call)
    /// creates a slice between this one's list and its create: that 409 is not a foreign slice.
    /// The publish fails and the next one lists again, never two slices with the same devices.
    #[test]
    fn a_racing_publisher_of_our_driver_is_not_taken_for_a_foreign_slice() {
        struct Racing {
            inner: Memory<ResourceSlice>,
            other: Option<ResourceSlice>,
        }
        impl Objects<ResourceSlice> for Racing {
            fn list(&mut self) -> Result<Vec<ResourceSlice>, ApiError> {
                self.inner.list()
            }
            fn get(&mut self, name: &str) -> Result<Option<ResourceSlice>, ApiError> {
                self.inner.get(name)
            }
            fn create(&mut self, o: &ResourceSlice) -> Result<ResourceSlice, ApiError> {
                if let Some(other) = self.other.take() {
                    self.inner.create(&other).unwrap();
                }
                self.inner.create(o)
            }
            fn replace(&mut self, o: &ResourceSlice) -> Result<ResourceSlice, ApiError> {
                self.inner.replace(o)
            }
            fn delete(&mut self, name: &str, version: &str) -> Result<(), ApiError> {
                self.inner.delete(name, version)
            }
        }
        let inv = inventory(TWO_SETS);
        let other = objects::slices("d.io", &inv, 1, &Taints::new()).remove(0);
        let mut slices = Racing {
            inner: Memory::default(),
            other: Some(other),
        };
        let mut classes = Memory::default();
        let e = publish(&mut slices, &mut classes, &inv, 0).unwrap_err();
        assert!(
            matches!(&e, PublishError::Api(a) if a.status() == Some(409)),
            "{e}"
        );
        let names: Vec<&String> = slices.inner.objects.keys().collect();
        assert_eq!(names, ["d.io-0"]);
        // The next publish lists the other publisher's slice and takes it over.
        let p = publish(&mut slices, &mut classes, &inv, 0).unwrap();
        assert_eq!((p.generation, p.slices), (2, 2));
        let names: Vec<&String> = slices.inner.objects.keys().collect();
        assert_eq!(names, ["d.io-0", "d.io-1"]);
    }

    #[test]
    fn a_publish_stops_at_once_when_the_lease_is_lost() {
        let (mut slices, mut classes) = (Memory::default(), Memory::default());
        let inv = inventory(TWO_SETS);
        let mut asked = 0;
        let mut lead = || {
            asked += 1;
            asked <= 3
        };
        let e = reconcile(
            &mut slices,
            &mut classes,
            &Wanted::untainted("d.io", &inv),
            0,
            &mut Kept::default(),
            &mut lead,
        )
        .unwrap_err();
        assert!(matches!(e, PublishError::NoLongerLeader), "{e}");
        // Two classes written, then one slice; the second slice never.
        assert_eq!((classes.writes, slices.writes), (2, 1));
    }

    #[test]
    fn a_huge_generation_from_the_server_does_not_overflow() {
        let (mut slices, mut classes) = (Memory::default(), Memory::default());
        let inv = inventory(TWO_SETS);
        let mut s = objects::slices("d.io", &inv, i64::MAX, &Taints::new()).remove(0);
        s.spec.devices.clear();
        slices.create(&s).unwrap();
        let p = publish(&mut slices, &mut classes, &inv, 0).unwrap();
        assert_eq!(p.generation, i64::MAX);
    }
}
