//! A blocking Rust client for ringkv's HTTP API (DESIGN §8). The CLI uses
//! it; applications may too. Keys are arbitrary bytes (percent-encoded in
//! the path); contexts are opaque tokens to hand back on the next write.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode, utf8_percent_encode};
use serde::Deserialize;

pub const CONTEXT_HEADER: &str = "x-ringkv-context";
/// Largest response body the client reads (siblings of large values add up).
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024 * 1024;
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    /// The server answered with an error body `{"error", "message"}`.
    #[error("{status} {code}: {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    pub value: Vec<u8>,
    pub content_type: String,
    pub modified_ms: u64,
    /// When the value expires (ms since the Unix epoch), if it does.
    pub expires_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetResult {
    Found {
        value: Vec<u8>,
        content_type: String,
        context: String,
        /// When the value expires (ms since the Unix epoch), if it does.
        expires_ms: Option<u64>,
    },
    Siblings {
        siblings: Vec<Sibling>,
        context: String,
    },
    /// Absent or deleted; the context is known when the key was deleted.
    NotFound { context: Option<String> },
}

#[derive(Deserialize)]
struct SiblingsBody {
    context: String,
    siblings: Vec<SiblingJson>,
}

#[derive(Deserialize)]
struct SiblingJson {
    value_base64: String,
    content_type: String,
    modified_ms: u64,
    #[serde(default)]
    expires_ms: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

/// A bucket's keys (`Client::keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListing {
    pub keys: Vec<Vec<u8>>,
    /// Members that did not answer: keys only they hold are not listed.
    pub missing_members: Vec<String>,
    /// Why the listing stopped before its end, if it did.
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(url: &str) -> Self {
        Self::with_password(url, None)
    }

    /// A client that gives `password` (the nodes' `--client-password-file`)
    /// with every request, as `Authorization: Bearer`.
    pub fn with_password(url: &str, password: Option<&str>) -> Self {
        Self::build(url, password, None)
    }

    /// A client for `https://` nodes (`--client-tls-cert-file`) that trusts
    /// the CA certificates in `ca_pem` (PEM) instead of the public roots,
    /// and shows `identity` (certificate chain, private key; PEM) to nodes
    /// that ask for a client certificate.
    pub fn with_tls(
        url: &str,
        password: Option<&str>,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Transport {
            url: url.to_string(),
            reason,
        };
        let certificates = |pem: &[u8], what: &str| {
            let mut found = Vec::new();
            for item in ureq::tls::parse_pem(pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => found.push(cert),
                    Ok(_) => {}
                    Err(e) => return Err(bad(format!("{what}: {e}"))),
                }
            }
            if found.is_empty() {
                return Err(bad(format!("{what}: no certificate (PEM)")));
            }
            Ok(found)
        };
        let roots = certificates(ca_pem, "CA certificate")?;
        let mut tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)));
        if let Some((cert_pem, key_pem)) = identity {
            let chain = certificates(cert_pem, "client certificate")?;
            let key = ureq::tls::PrivateKey::from_pem(key_pem)
                .map_err(|e| bad(format!("client key: {e}")))?;
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        }
        Ok(Self::build(url, password, Some(tls.build())))
    }

    fn build(url: &str, password: Option<&str>, tls: Option<ureq::tls::TlsConfig>) -> Self {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)));
        if let Some(tls) = tls {
            config = config.tls_config(tls);
        }
        if let Some(password) = password {
            let value = ureq::http::HeaderValue::from_str(&format!("Bearer {password}"));
            if let Ok(value) = value {
                config = config.middleware(
                    move |mut request: ureq::http::Request<ureq::SendBody>,
                          next: ureq::middleware::MiddlewareNext| {
                        request
                            .headers_mut()
                            .insert(ureq::http::header::AUTHORIZATION, value.clone());
                        next.handle(request)
                    },
                );
            }
        }
        let agent: ureq::Agent = config.build().into();
        Client {
            base: url.trim_end_matches('/').to_string(),
            agent,
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn key_url(&self, bucket: &str, key: &[u8], query: &[(&str, String)]) -> String {
        let mut url = format!(
            "{}/v1/kv/{}/{}",
            self.base,
            utf8_percent_encode(bucket, UNRESERVED),
            percent_encode(key, UNRESERVED)
        );
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            url.push('=');
            url.push_str(value);
        }
        url
    }

    fn transport(&self, e: ureq::Error) -> ClientError {
        ClientError::Transport {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    pub fn get(&self, bucket: &str, key: &[u8], r: Option<u32>) -> Result<GetResult, ClientError> {
        let query: Vec<(&str, String)> = r.map(|r| ("r", r.to_string())).into_iter().collect();
        let mut response = self
            .agent
            .get(&self.key_url(bucket, key, &query))
            .call()
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let context = header(CONTEXT_HEADER);
        let content_type = header("content-type").unwrap_or_default();
        let expires_ms = match header("x-ringkv-expires-ms") {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                ClientError::Protocol(format!("X-Ringkv-Expires-Ms is not a number: {text}"))
            })?),
        };
        let body = read_body(&mut response)?;
        match status {
            200 => Ok(GetResult::Found {
                value: body,
                content_type,
                context: context
                    .ok_or_else(|| ClientError::Protocol("200 without a context header".into()))?,
                expires_ms,
            }),
            300 => {
                let parsed: SiblingsBody = serde_json::from_slice(&body)
                    .map_err(|e| ClientError::Protocol(format!("siblings body: {e}")))?;
                let siblings = parsed
                    .siblings
                    .into_iter()
                    .map(|s| {
                        Ok(Sibling {
                            value: STANDARD.decode(s.value_base64).map_err(|e| {
                                ClientError::Protocol(format!("sibling value: {e}"))
                            })?,
                            content_type: s.content_type,
                            modified_ms: s.modified_ms,
                            expires_ms: s.expires_ms,
                        })
                    })
                    .collect::<Result<_, ClientError>>()?;
                Ok(GetResult::Siblings {
                    siblings,
                    context: parsed.context,
                })
            }
            404 if context.is_some() || is_not_found(&body) => Ok(GetResult::NotFound { context }),
            _ => Err(server_error(status, &body)),
        }
    }

    /// Writes a value; returns the context covering the new version.
    pub fn put(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        content_type: &str,
        context: Option<&str>,
        w: Option<u32>,
    ) -> Result<String, ClientError> {
        self.put_with_ttl(bucket, key, value, content_type, context, w, None)
    }

    /// [`put`](Self::put) of a value that expires `ttl_seconds` after it is
    /// written (`X-Ringkv-Ttl`), if given.
    #[allow(clippy::too_many_arguments)]
    pub fn put_with_ttl(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        content_type: &str,
        context: Option<&str>,
        w: Option<u32>,
        ttl_seconds: Option<u64>,
    ) -> Result<String, ClientError> {
        let query: Vec<(&str, String)> = w.map(|w| ("w", w.to_string())).into_iter().collect();
        let mut request = self
            .agent
            .put(&self.key_url(bucket, key, &query))
            .header("content-type", content_type);
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context);
        }
        if let Some(ttl) = ttl_seconds {
            request = request.header("x-ringkv-ttl", ttl.to_string());
        }
        let mut response = request.send(value).map_err(|e| self.transport(e))?;
        written(&mut response)
    }

    pub fn delete(
        &self,
        bucket: &str,
        key: &[u8],
        context: Option<&str>,
        w: Option<u32>,
    ) -> Result<String, ClientError> {
        let query: Vec<(&str, String)> = w.map(|w| ("w", w.to_string())).into_iter().collect();
        let mut request = self.agent.delete(&self.key_url(bucket, key, &query));
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context);
        }
        let mut response = request.call().map_err(|e| self.transport(e))?;
        written(&mut response)
    }

    /// `GET /v1/cluster` as JSON.
    /// `GET /v1/buckets/{bucket}/keys`: the bucket's live keys (in no
    /// particular order), read from every member; a listing that names
    /// missing members or an error is still returned, to be judged by the
    /// caller.
    pub fn keys(&self, bucket: &str) -> Result<KeyListing, ClientError> {
        let body = self.get_ok(&format!(
            "{}/v1/buckets/{}/keys",
            self.base,
            utf8_percent_encode(bucket, UNRESERVED)
        ))?;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Key {
            Text(String),
            Binary { base64: String },
        }
        #[derive(Deserialize)]
        struct Body {
            keys: Vec<Key>,
            missing_members: Vec<String>,
            error: Option<String>,
        }
        let body: Body = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("key listing: {e}")))?;
        let keys = body
            .keys
            .into_iter()
            .map(|key| match key {
                Key::Text(text) => Ok(text.into_bytes()),
                Key::Binary { base64 } => STANDARD
                    .decode(base64)
                    .map_err(|e| ClientError::Protocol(format!("key listing: {e}"))),
            })
            .collect::<Result<_, _>>()?;
        Ok(KeyListing {
            keys,
            missing_members: body.missing_members,
            error: body.error,
        })
    }

    pub fn cluster_status(&self) -> Result<serde_json::Value, ClientError> {
        let body = self.get_ok(&format!("{}/v1/cluster", self.base))?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("cluster body: {e}")))
    }

    /// The body of a GET of `url` that must answer 200.
    fn get_ok(&self, url: &str) -> Result<Vec<u8>, ClientError> {
        let mut response = self.agent.get(url).call().map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = read_body(&mut response)?;
        if status != 200 {
            return Err(server_error(status, &body));
        }
        Ok(body)
    }

    /// `POST /v1/cluster/members/{name}/leave`: asks member `name` to leave;
    /// answers the new layout as JSON (`layout_version`, `member`).
    pub fn leave(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.membership_change(name, "leave")
    }

    /// `POST /v1/cluster/members/{name}/remove`: takes a member that is gone
    /// for good out of the cluster, without a handoff.
    pub fn remove(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.membership_change(name, "remove")
    }

    fn membership_change(
        &self,
        name: &str,
        change: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!(
            "{}/v1/cluster/members/{}/{change}",
            self.base,
            utf8_percent_encode(name, UNRESERVED)
        );
        let mut response = self
            .agent
            .post(&url)
            .send_empty()
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = read_body(&mut response)?;
        if status != 202 {
            return Err(server_error(status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("{change} body: {e}")))
    }

    /// `PUT /v1/buckets/{bucket}` with a JSON body such as `{"n":3,"r":2,"w":2,"conflict":"siblings"}`.
    pub fn set_bucket(&self, bucket: &str, props: &serde_json::Value) -> Result<(), ClientError> {
        let url = format!(
            "{}/v1/buckets/{}",
            self.base,
            utf8_percent_encode(bucket, UNRESERVED)
        );
        let mut response = self
            .agent
            .put(&url)
            .header("content-type", "application/json")
            .send(props.to_string().as_bytes())
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = read_body(&mut response)?;
        if status != 204 {
            return Err(server_error(status, &body));
        }
        Ok(())
    }

    /// `GET /v1/backup`: the whole cluster's data as a backup file, copied
    /// into `out` as it arrives, with no time limit. With `partial`, members
    /// that do not answer are skipped (the file's summary names them).
    /// Returns the bytes copied; the caller checks that they make a whole
    /// backup (a node that fails midway ends the stream with an error record).
    pub fn backup(&self, partial: bool, out: &mut dyn std::io::Write) -> Result<u64, ClientError> {
        let query = if partial { "?partial=true" } else { "" };
        let mut response = self
            .agent
            .get(&format!("{}/v1/backup{query}", self.base))
            .config()
            .timeout_global(None)
            .build()
            .call()
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = read_body(&mut response)?;
            return Err(server_error(status, &body));
        }
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut reader, out)
            .map_err(|e| ClientError::Protocol(format!("copying the backup: {e}")))
    }

    /// `POST /v1/restore` with a backup file as the body, with no time
    /// limit: the HTTP status and the node's JSON report (also sent with
    /// the error statuses 400 and 503).
    pub fn restore(
        &self,
        body: &mut dyn std::io::Read,
    ) -> Result<(u16, serde_json::Value), ClientError> {
        let mut response = self
            .agent
            .post(&format!("{}/v1/restore", self.base))
            .config()
            .timeout_global(None)
            .build()
            .header("content-type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(body))
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = read_body(&mut response)?;
        match serde_json::from_slice(&body) {
            Ok(report) => Ok((status, report)),
            Err(_) => Err(server_error(status, &body)),
        }
    }
}

fn read_body(response: &mut ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ClientError> {
    response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| ClientError::Protocol(format!("reading the body: {e}")))
}

fn written(response: &mut ureq::http::Response<ureq::Body>) -> Result<String, ClientError> {
    let status = response.status().as_u16();
    let context = response
        .headers()
        .get(CONTEXT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_body(response)?;
    match (status, context) {
        (204, Some(context)) => Ok(context),
        (204, None) => Err(ClientError::Protocol("204 without a context header".into())),
        _ => Err(server_error(status, &body)),
    }
}

fn is_not_found(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body).is_ok_and(|e| e.error == "not_found")
}

fn server_error(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Server {
            status,
            code: e.error,
            message: e.message,
        },
        Err(_) => ClientError::Server {
            status,
            code: "unknown".into(),
            message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        },
    }
}
