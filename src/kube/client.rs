//! The Kubernetes API over plain HTTPS: how to reach and trust the server, and its errors.
//!
//! ureq over rustls (ring), trusting only the CA file, re-read on every request like the token, so
//! rotated service-account credentials are picked up. Every API user goes through it: the
//! ConfigMap source, the Leases, the pruning of stale resources.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::text::Cut;

/// Connecting and a whole non-watch request must finish within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach and trust the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// `https://host:port`, no trailing slash.
    pub server: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

/// Why a request to the API server failed.
#[derive(Debug)]
pub enum ApiError {
    /// The token file could not be read.
    Token { path: PathBuf, source: io::Error },
    /// The CA file could not be read or holds no certificate.
    Ca { path: PathBuf, source: io::Error },
    /// Connecting, TLS (including an untrusted server certificate), or reading failed.
    Transport { url: String, source: ureq::Error },
    /// The server answered with an error status.
    Status {
        url: String,
        code: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    /// The response was not what the API returns.
    Decode {
        url: String,
        source: serde_yaml::Error,
    },
    /// Reading the response (or the watch stream) failed.
    Read { url: String, source: io::Error },
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Token { path, source } => {
                write!(f, "cannot read the token file {}: {source}", path.display())
            }
            ApiError::Ca { path, source } => {
                write!(f, "cannot load the CA file {}: {source}", path.display())
            }
            ApiError::Transport { url, source } => write!(f, "{url}: {source}"),
            ApiError::Status {
                url, code, body, ..
            } => write!(f, "{url}: HTTP {code}: {}", Cut(body.trim())),
            ApiError::Decode { url, source } => {
                write!(f, "{url}: unexpected response: {}", Cut(source))
            }
            ApiError::Read { url, source } => write!(f, "{url}: reading the response: {source}"),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::Token { source, .. }
            | ApiError::Ca { source, .. }
            | ApiError::Read { source, .. } => Some(source),
            ApiError::Transport { source, .. } => Some(source),
            ApiError::Decode { source, .. } => Some(source),
            ApiError::Status { .. } => None,
        }
    }
}

impl ApiError {
    /// The HTTP status of a [`ApiError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Whether the TLS handshake failed on the server's certificate. ureq reports rustls' error
/// directly or inside an io::Error (and its error has no `source()` chain to walk).
pub fn bad_certificate(e: &ApiError) -> bool {
    let ApiError::Transport { source, .. } = e else {
        return false;
    };
    let tls = match source {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(io) => io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(tls, Some(rustls::Error::InvalidCertificate(_)))
}

/// The HTTP methods spookd uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// Requests to the API server as the token file's holder.
pub struct Client {
    pub conn: Connection,
}

impl Client {
    pub fn new(conn: Connection) -> Self {
        Client { conn }
    }

    /// An agent trusting only the CA file (re-read each time, so a rotated CA is picked up).
    /// `global` bounds the whole call, body included (a server dripping a byte a minute must not
    /// hold a caller for hours); a watch has none, only its per-read timeout.
    fn agent(
        &self,
        read_timeout: Option<Duration>,
        global: Option<Duration>,
    ) -> Result<ureq::Agent, ApiError> {
        let path = &self.conn.ca_file;
        let ca_err = |source| ApiError::Ca {
            path: path.clone(),
            source,
        };
        let pem = std::fs::read(path).map_err(ca_err)?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(ca_err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no PEM certificate in it",
            )));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        Ok(ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .proxy(None)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(REQUEST_TIMEOUT))
            .timeout_recv_response(Some(REQUEST_TIMEOUT))
            .timeout_per_read(read_timeout)
            .timeout_global(global)
            .build()
            .new_agent())
    }

    /// GET `url`, the whole answer within `read_timeout` (at least [`REQUEST_TIMEOUT`]); a
    /// non-2xx status is an error.
    pub fn get(
        &self,
        url: &str,
        read_timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let global = read_timeout.max(REQUEST_TIMEOUT);
        self.request(Method::Get, url, read_timeout, Some(global), None)
    }

    /// GET `url` within [`REQUEST_TIMEOUT`]; `None` if there is no such object (404).
    pub fn get_found(
        &self,
        url: &str,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>, ApiError> {
        match self.get(url, REQUEST_TIMEOUT) {
            Ok(response) => Ok(Some(response)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GET a watch `url`: a stream with no overall deadline, each read within `read_timeout`.
    pub fn watch(
        &self,
        url: &str,
        read_timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        self.request(Method::Get, url, read_timeout, None, None)
    }

    /// PATCH `url` with `body` of `content_type`; a non-2xx status is an error.
    pub fn patch(
        &self,
        url: &str,
        content_type: &str,
        body: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        self.send(Method::Patch, url, content_type, body)
    }

    /// `method` on `url` with a JSON (or `content_type`) body; a non-2xx status is an error.
    pub fn send(
        &self,
        method: Method,
        url: &str,
        content_type: &str,
        body: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        self.request(
            method,
            url,
            REQUEST_TIMEOUT,
            Some(REQUEST_TIMEOUT),
            Some((content_type, body)),
        )
    }

    /// Reads a whole response body of at most `limit` bytes.
    pub fn read_body(
        url: &str,
        response: ureq::http::Response<ureq::Body>,
        limit: u64,
    ) -> Result<Vec<u8>, ApiError> {
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(limit)
            .read_to_end(&mut body)
            .map_err(|source| ApiError::Read {
                url: url.to_owned(),
                source,
            })?;
        Ok(body)
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        read_timeout: Duration,
        global: Option<Duration>,
        body: Option<(&str, &str)>,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let token_file = &self.conn.token_file;
        let token = std::fs::read_to_string(token_file).map_err(|source| ApiError::Token {
            path: token_file.clone(),
            source,
        })?;
        let agent = self.agent(Some(read_timeout), global)?;
        let authorization = format!("Bearer {}", token.trim());
        let with_body = |b: ureq::RequestBuilder<ureq::typestate::WithBody>| {
            let (content_type, body) = body.unwrap_or(("application/json", ""));
            b.header("Authorization", &authorization)
                .header("Accept", "application/json")
                .header("Content-Type", content_type)
                .send(body)
        };
        let sent = match method {
            Method::Get => agent
                .get(url)
                .header("Authorization", &authorization)
                .header("Accept", "application/json")
                .call(),
            Method::Post => with_body(agent.post(url)),
            Method::Put => with_body(agent.put(url)),
            Method::Patch => with_body(agent.patch(url)),
            Method::Delete => with_body(agent.delete(url).force_send_body()),
        };
        let response = sent.map_err(|source| ApiError::Transport {
            url: url.to_owned(),
            source,
        })?;
        let code = response.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = String::new();
        let _ = response
            .into_body()
            .into_reader()
            .take(4096)
            .read_to_string(&mut body);
        Err(ApiError::Status {
            url: url.to_owned(),
            code,
            retry_after,
            body,
        })
    }
}

/// Largest single watch event (a ConfigMap is at most 1 MiB of data, JSON-escaped).
const MAX_LINE: u64 = 4 << 20;

/// The events of a watch response, one JSON object a line, each parsed by `parse`.
pub struct Lines<R, T> {
    reader: BufReader<R>,
    url: String,
    done: bool,
    parse: fn(&str) -> Result<T, serde_yaml::Error>,
}

impl<R: Read, T> Lines<R, T> {
    pub fn new(reader: R, url: String, parse: fn(&str) -> Result<T, serde_yaml::Error>) -> Self {
        Lines {
            reader: BufReader::new(reader),
            url,
            done: false,
            parse,
        }
    }
}

impl<R: Read, T> Iterator for Lines<R, T> {
    type Item = Result<T, ApiError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let mut line = Vec::new();
            let read = (&mut self.reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line);
            let n = match read {
                Ok(n) => n,
                Err(source) => {
                    self.done = true;
                    return Some(Err(ApiError::Read {
                        url: self.url.clone(),
                        source,
                    }));
                }
            };
            if n == 0 {
                self.done = true;
                return None;
            }
            if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
                self.done = true;
                let source = io::Error::new(io::ErrorKind::InvalidData, "event over 4 MiB");
                return Some(Err(ApiError::Read {
                    url: self.url.clone(),
                    source,
                }));
            }
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            return Some((self.parse)(&text).map_err(|source| {
                self.done = true;
                ApiError::Decode {
                    url: self.url.clone(),
                    source,
                }
            }));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API server (or a proxy before it) answering a huge error body or a huge string where
    /// an object goes: the error shown is cut, its status and location kept.
    #[test]
    fn an_answer_quoted_in_an_error_is_cut() {
        let url = "https://127.0.0.1:6443/api/v1/configmaps".to_owned();
        let body = format!("{{\"message\": \"{}\"}}", "y".repeat(500_000));
        let status = ApiError::Status {
            url: url.clone(),
            code: 500,
            retry_after: None,
            body: body.clone(),
        }
        .to_string();
        assert!(
            status.len() <= url.len() + 20 + crate::text::MAX_MESSAGE,
            "{}",
            status.len()
        );
        assert!(
            status.starts_with(&format!("{url}: HTTP 500: {{\"message\": \"yyy")),
            "{status}"
        );
        assert!(status.ends_with("yyy\"}"), "{status}");
        let source = serde_yaml::from_str::<Vec<String>>(&format!("\"{}\"", "z".repeat(500_000)))
            .unwrap_err();
        let decode = ApiError::Decode {
            url: url.clone(),
            source,
        }
        .to_string();
        assert!(
            decode.len() <= url.len() + 30 + crate::text::MAX_MESSAGE,
            "{}",
            decode.len()
        );
        assert!(
            decode.starts_with(&format!(
                "{url}: unexpected response: invalid type: string \"zzz"
            )),
            "{decode}"
        );
        assert!(decode.contains(" bytes cut]… "), "{decode}");
    }
}
