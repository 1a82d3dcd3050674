//! The publishing tests' API server: objects in memory with its optimistic concurrency, counting
//! writes, and the inventories they publish.

use std::collections::BTreeMap;

use crate::config::dra::Inventory;
use crate::config::Config;
use crate::dra::api::{Object, Objects};
use crate::dra::objects::{DeviceClass, ResourceSlice};
use crate::kube::client::ApiError;

/// Objects in memory with the server's optimistic concurrency; counts writes.
pub(super) struct Memory<T> {
    pub(super) objects: BTreeMap<String, (u64, T)>,
    pub(super) version: u64,
    pub(super) writes: usize,
    /// As a server with the newer feature gates off: drops their fields on write.
    pub(super) gates_off: bool,
}

impl<T> Default for Memory<T> {
    fn default() -> Self {
        Memory {
            objects: BTreeMap::new(),
            version: 0,
            writes: 0,
            gates_off: false,
        }
    }
}

pub(super) fn status(code: u16) -> ApiError {
    ApiError::Status {
        url: "memory".into(),
        code,
        retry_after: None,
        body: String::new(),
    }
}

pub(super) trait Versioned: Clone {
    fn set_version(&mut self, v: String);
    /// As the API server does: a create with no name but a `generateName` gets the prefix
    /// and a suffix.
    fn generate_name(&mut self, suffix: u64);
    /// Drops the fields a server with the newer gates off drops.
    fn drop_gated(&mut self) {}
}
impl Versioned for ResourceSlice {
    fn set_version(&mut self, v: String) {
        self.metadata.resource_version = v;
    }
    fn generate_name(&mut self, suffix: u64) {
        let m = &mut self.metadata;
        if m.name.is_empty() && !m.generate_name.is_empty() {
            m.name = format!("{}{suffix:05}", std::mem::take(&mut m.generate_name));
        }
    }
    fn drop_gated(&mut self) {
        self.spec.devices.iter_mut().for_each(|d| d.taints.clear());
    }
}
impl Versioned for DeviceClass {
    fn set_version(&mut self, v: String) {
        self.metadata.resource_version = v;
    }
    fn generate_name(&mut self, _: u64) {}
    fn drop_gated(&mut self) {
        self.spec.extended_resource_name = None;
    }
}

impl<T: Object + Versioned> Memory<T> {
    /// Writes `o` at the next version, as a server with these gates stores it; answers what it
    /// stored.
    fn store(&mut self, mut o: T) -> T {
        self.version += 1;
        self.writes += 1;
        o.set_version(self.version.to_string());
        if self.gates_off {
            o.drop_gated();
        }
        self.objects
            .insert(o.name().to_owned(), (self.version, o.clone()));
        o
    }
}

impl<T: Object + Versioned> Objects<T> for Memory<T> {
    fn list(&mut self) -> Result<Vec<T>, ApiError> {
        Ok(self.objects.values().map(|(_, o)| o.clone()).collect())
    }
    fn get(&mut self, name: &str) -> Result<Option<T>, ApiError> {
        Ok(self.objects.get(name).map(|(_, o)| o.clone()))
    }
    fn create(&mut self, o: &T) -> Result<T, ApiError> {
        let mut o = o.clone();
        o.generate_name(self.version + 1);
        if self.objects.contains_key(o.name()) {
            return Err(status(409));
        }
        Ok(self.store(o))
    }
    fn replace(&mut self, o: &T) -> Result<T, ApiError> {
        match self.objects.get(o.name()) {
            None => return Err(status(404)),
            Some((v, _)) if v.to_string() != o.version() => return Err(status(409)),
            _ => {}
        }
        Ok(self.store(o.clone()))
    }
    fn delete(&mut self, name: &str, version: &str) -> Result<(), ApiError> {
        match self.objects.get(name) {
            None => Ok(()),
            Some((v, _)) if v.to_string() != version => Err(status(409)),
            _ => {
                self.writes += 1;
                self.objects.remove(name);
                Ok(())
            }
        }
    }
}

pub(super) fn inventory(yaml: &str) -> Inventory {
    Inventory::new(&Config::parse(yaml.as_bytes(), "t").unwrap(), "t").unwrap()
}

pub(super) const TWO_SETS: &str = "deviceMapping:
  - hosts: [a, b]
    devices:
      - {resourceName: a.io/x, instanceID: '1'}
      - {resourceName: a.io/x, instanceID: '2'}
  - hosts: [c]
    devices:
      - {resourceName: a.io/y, instanceID: '1'}
";
