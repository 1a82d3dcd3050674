//! The Event calls spookd makes, as a trait so the recorder's tests give it a fake: create an
//! Event, count a repeat in its series, and read the ConfigMap's UID to refer to it.

use serde::Deserialize;

use crate::kube::client::{ApiError, Client, Connection, Method, REQUEST_TIMEOUT};

/// The Event calls; the real one speaks HTTPS.
pub trait EventApi {
    /// Creates the Event `body` (JSON) in `namespace`.
    fn create(&mut self, namespace: &str, body: &str) -> Result<(), ApiError>;
    /// Sets the series of Event `namespace/name`; 404 if it is gone.
    fn series(
        &mut self,
        namespace: &str,
        name: &str,
        count: u32,
        last: &str,
    ) -> Result<(), ApiError>;
    /// The UID of ConfigMap `namespace/name`.
    fn configmap_uid(&mut self, namespace: &str, name: &str) -> Result<String, ApiError>;
}

/// Events over HTTPS.
pub struct HttpEventApi {
    client: Client,
}

impl HttpEventApi {
    pub fn new(conn: Connection) -> Self {
        HttpEventApi {
            client: Client::new(conn),
        }
    }

    fn base(&self, namespace: &str) -> String {
        format!(
            "{}/apis/events.k8s.io/v1/namespaces/{namespace}/events",
            self.client.conn.server
        )
    }
}

#[derive(Deserialize)]
struct UidOnly {
    metadata: UidMeta,
}

#[derive(Deserialize)]
struct UidMeta {
    #[serde(default)]
    uid: String,
}

impl EventApi for HttpEventApi {
    fn create(&mut self, namespace: &str, body: &str) -> Result<(), ApiError> {
        let url = self.base(namespace);
        self.client
            .send(Method::Post, &url, "application/json", body)
            .map(drop)
    }

    fn series(
        &mut self,
        namespace: &str,
        name: &str,
        count: u32,
        last: &str,
    ) -> Result<(), ApiError> {
        let url = format!("{}/{name}", self.base(namespace));
        // Numbers and an RFC 3339 time: nothing to escape.
        let body = format!(r#"{{"series":{{"count":{count},"lastObservedTime":"{last}"}}}}"#);
        self.client
            .patch(&url, "application/merge-patch+json", &body)
            .map(drop)
    }

    fn configmap_uid(&mut self, namespace: &str, name: &str) -> Result<String, ApiError> {
        let url = format!(
            "{}/api/v1/namespaces/{namespace}/configmaps/{name}",
            self.client.conn.server
        );
        let response = self.client.get(&url, REQUEST_TIMEOUT)?;
        let body = Client::read_body(&url, response, 4 << 20)?;
        let cm: UidOnly = serde_yaml::from_slice(&body).map_err(|source| ApiError::Decode {
            url: url.clone(),
            source,
        })?;
        Ok(cm.metadata.uid)
    }
}
