//! The DRA driver's API calls over the one HTTPS client: its ResourceSlices and DeviceClasses
//! (list, create, replace at a version, delete at a version) and the ResourceClaims it prepares
//! (get). Objects are sent as YAML, which the API server takes as it takes JSON.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dra::objects::{self, DeviceClass, List, Named, ResourceSlice, MANAGED_BY};
use crate::kube::client::{ApiError, Client, Connection, Lines, Method, REQUEST_TIMEOUT};

/// Objects per page of a list. The YAML parser holds every token of a body at once, so a page
/// must stay small whatever the collection's size: a ResourceSlice holds up to 128 devices (a
/// page of 4 is about a MiB decoding), a health report Lease up to 1,500 names in one string.
const SLICE_PAGE: usize = 4;
const PAGE: usize = 16;
/// Largest page read.
const MAX_PAGE: u64 = 8 << 20;
/// Most pages read for one list (10,000 devices a resource, 256 resources: far more than needed).
const MAX_PAGES: usize = 10_000;
/// Largest single object read.
const MAX_OBJECT: u64 = 4 << 20;

/// An object with a name and a version.
pub trait Object: Serialize + DeserializeOwned {
    fn name(&self) -> &str;
    fn version(&self) -> &str;
}

impl Object for ResourceSlice {
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn version(&self) -> &str {
        &self.metadata.resource_version
    }
}

impl Object for Named {
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn version(&self) -> &str {
        &self.metadata.resource_version
    }
}

impl Object for DeviceClass {
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn version(&self) -> &str {
        &self.metadata.resource_version
    }
}

/// One driver's objects of one kind. An existing name on create, or a moved version on replace
/// or delete, is [`ApiError::Status`] 409; a missing one 404.
pub trait Objects<T> {
    /// Every object of this driver.
    fn list(&mut self) -> Result<Vec<T>, ApiError>;
    /// Every object of this driver, one at a time: what a caller keeps of each is all it holds.
    fn each(&mut self, f: &mut dyn FnMut(T)) -> Result<(), ApiError> {
        self.list()?.into_iter().for_each(f);
        Ok(())
    }
    /// The object of that name, whoever made it.
    fn get(&mut self, name: &str) -> Result<Option<T>, ApiError>;
    /// Creates the object; answers it as the server stored it (without the fields it drops).
    fn create(&mut self, object: &T) -> Result<T, ApiError>;
    /// Replaces the object at the version it names; answers it as stored.
    fn replace(&mut self, object: &T) -> Result<T, ApiError>;
    fn delete(&mut self, name: &str, version: &str) -> Result<(), ApiError>;
}

/// A collection of cluster-scoped objects over HTTPS.
pub struct HttpObjects<T> {
    client: Client,
    /// `https://server/apis/resource.k8s.io/v1/<plural>`
    base: String,
    /// `?fieldSelector=…` or `?labelSelector=…`: this driver's objects.
    selector: String,
    /// Objects per page of a list.
    page: usize,
    _kind: PhantomData<T>,
}

/// Percent-encodes a query value: everything but unreserved characters (a continue token is
/// opaque base64 with `=`, `+` and `/`).
fn escape(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl<T> HttpObjects<T> {
    /// The objects at `base` (a collection's URL) that `label_selector` selects.
    pub fn new(conn: Connection, base: String, label_selector: &str) -> Self {
        HttpObjects {
            client: Client::new(conn),
            base,
            selector: format!("?labelSelector={}", escape(label_selector)),
            page: PAGE,
            _kind: PhantomData,
        }
    }
}

impl<T> HttpObjects<T> {
    /// The ResourceSlices of `driver` (read as [`ResourceSlice`]s, or as less of them).
    pub fn slices(conn: Connection, driver: &str) -> Self {
        let base = format!("{}/apis/resource.k8s.io/v1/resourceslices", conn.server);
        HttpObjects {
            client: Client::new(conn),
            base,
            selector: format!(
                "?fieldSelector={}",
                escape(&format!("spec.driver={driver}"))
            ),
            page: SLICE_PAGE,
            _kind: PhantomData,
        }
    }
}

impl HttpObjects<DeviceClass> {
    /// The DeviceClasses spookd made for `driver` (by their labels).
    pub fn classes(conn: Connection, driver: &str) -> Self {
        let base = format!("{}/apis/resource.k8s.io/v1/deviceclasses", conn.server);
        let selector = format!(
            "{}={},{}={driver}",
            MANAGED_BY.0,
            MANAGED_BY.1,
            objects::INSTANCE_LABEL
        );
        HttpObjects {
            client: Client::new(conn),
            base,
            selector: format!("?labelSelector={}", escape(&selector)),
            page: PAGE,
            _kind: PhantomData,
        }
    }
}

/// One object, `None` if it does not exist.
fn fetch<T: DeserializeOwned>(client: &Client, url: &str) -> Result<Option<T>, ApiError> {
    let Some(response) = client.get_found(url)? else {
        return Ok(None);
    };
    let body = Client::read_body(url, response, MAX_OBJECT)?;
    decode(url, &body).map(Some)
}

fn decode<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_yaml::from_slice(body).map_err(|source| ApiError::Decode {
        url: url.to_owned(),
        source,
    })
}

impl<T: Object> HttpObjects<T> {
    /// Every object of this driver, page by page, and the list's version (to watch from).
    pub fn list_at(&mut self) -> Result<(Vec<T>, String), ApiError> {
        let mut items = Vec::new();
        let version = self.each_at(&mut |item| items.push(item))?;
        Ok((items, version))
    }

    /// Every object of this driver, one page decoded at a time, each given to `f`; answers the
    /// list's version.
    fn each_at(&mut self, f: &mut dyn FnMut(T)) -> Result<String, ApiError> {
        let mut version = String::new();
        let mut next = String::new();
        for _ in 0..MAX_PAGES {
            let mut url = format!("{}{}&limit={}", self.base, self.selector, self.page);
            if !next.is_empty() {
                url.push_str(&format!("&continue={}", escape(&next)));
            }
            let response = self.client.get(&url, REQUEST_TIMEOUT)?;
            let body = Client::read_body(&url, response, MAX_PAGE)?;
            let page = decode::<List<T>>(&url, &body)?;
            page.items.into_iter().for_each(&mut *f);
            if version.is_empty() {
                version = page.metadata.resource_version;
            }
            if page.metadata.next.is_empty() {
                return Ok(version);
            }
            next = page.metadata.next;
        }
        Err(ApiError::Read {
            url: self.base.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {MAX_PAGES} pages"),
            ),
        })
    }

    /// A watch of this driver's objects from `version`, for `timeout` (a silent connection is
    /// dropped after that plus a quarter).
    pub fn watch_from(
        &mut self,
        version: &str,
        timeout: std::time::Duration,
    ) -> Result<crate::kube::watch::Events<T>, ApiError>
    where
        T: crate::kube::watch::Versioned + 'static,
    {
        let url = format!(
            "{}{}&watch=true&allowWatchBookmarks=true&timeoutSeconds={}&resourceVersion={}",
            self.base,
            self.selector,
            timeout.as_secs().max(1),
            escape(version)
        );
        let read_timeout = timeout
            .saturating_add(timeout / 4)
            .saturating_add(std::time::Duration::from_secs(1));
        let response = self.client.watch(&url, read_timeout)?;
        let reader: Box<dyn std::io::Read + Send> = Box::new(response.into_body().into_reader());
        Ok(Box::new(Lines::new(
            reader,
            url,
            crate::kube::watch::parse_event::<T>,
        )))
    }
}

impl<T: Object> Objects<T> for HttpObjects<T> {
    fn list(&mut self) -> Result<Vec<T>, ApiError> {
        self.list_at().map(|(items, _)| items)
    }

    fn each(&mut self, f: &mut dyn FnMut(T)) -> Result<(), ApiError> {
        self.each_at(f).map(drop)
    }

    fn get(&mut self, name: &str) -> Result<Option<T>, ApiError> {
        fetch(&self.client, &format!("{}/{name}", self.base))
    }

    fn create(&mut self, object: &T) -> Result<T, ApiError> {
        let body = serde_yaml::to_string(object).unwrap_or_default();
        let response = self
            .client
            .send(Method::Post, &self.base, "application/yaml", &body)?;
        let body = Client::read_body(&self.base, response, MAX_OBJECT)?;
        decode(&self.base, &body)
    }

    fn replace(&mut self, object: &T) -> Result<T, ApiError> {
        let url = format!("{}/{}", self.base, object.name());
        let body = serde_yaml::to_string(object).unwrap_or_default();
        let response = self
            .client
            .send(Method::Put, &url, "application/yaml", &body)?;
        let body = Client::read_body(&url, response, MAX_OBJECT)?;
        decode(&url, &body)
    }

    fn delete(&mut self, name: &str, version: &str) -> Result<(), ApiError> {
        let url = format!("{}/{name}", self.base);
        // Versions are decimal numbers as the server wrote them; anything else is not sent.
        let version = if version.bytes().all(|b| b.is_ascii_alphanumeric()) {
            version
        } else {
            ""
        };
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"DeleteOptions","preconditions":{{"resourceVersion":"{version}"}}}}"#
        );
        match self
            .client
            .send(Method::Delete, &url, "application/json", &body)
        {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// A ResourceClaim, as much as preparing it needs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ResourceClaim {
    #[serde(default)]
    pub metadata: ClaimMeta,
    #[serde(default)]
    pub status: ClaimStatus,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ClaimMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The annotation the scheduler sets on the claim it makes for a pod's extended resources
/// (KEP-5004): one request per (container, resource).
pub const EXTENDED_RESOURCE_CLAIM: &str = "resource.kubernetes.io/extended-resource-claim";

impl ResourceClaim {
    /// Whether the scheduler made this claim for a pod's extended resources: each container then
    /// has requests of its own, and must get only their devices' env.
    pub fn for_extended_resources(&self) -> bool {
        self.metadata
            .annotations
            .get(EXTENDED_RESOURCE_CLAIM)
            .is_some_and(|v| v == "true")
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ClaimStatus {
    #[serde(default)]
    pub allocation: Option<Allocation>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Allocation {
    #[serde(default)]
    pub devices: AllocatedDevices,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct AllocatedDevices {
    #[serde(default)]
    pub results: Vec<AllocationResult>,
}

/// One device given to one request of the claim.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct AllocationResult {
    #[serde(default)]
    pub request: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub device: String,
}

/// Reading ResourceClaims.
pub trait Claims {
    /// The claim `namespace/name`; `None` if it does not exist.
    fn get(&mut self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, ApiError>;
}

pub struct HttpClaims {
    client: Client,
}

impl HttpClaims {
    pub fn new(conn: Connection) -> Self {
        HttpClaims {
            client: Client::new(conn),
        }
    }
}

impl Claims for HttpClaims {
    fn get(&mut self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, ApiError> {
        let url = format!(
            "{}/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}",
            self.client.conn.server
        );
        fetch(&self.client, &url)
    }
}
