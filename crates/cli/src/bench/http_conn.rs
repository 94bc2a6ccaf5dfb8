//! The HTTP targets: ringkv's `/v1/kv` API and etcd's v3 JSON gateway, each
//! load slot on its own keep-alive HTTP/1.1 connection (hyper's connection-level
//! client, TCP_NODELAY). HTTP/1.1 has one request in flight per connection, so
//! a connection runs exactly one slot.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::Settings;
use super::pacer::Pacer;
use super::slot::{Next, SlotSource};
use super::stats::{Outcome, Stats};
use super::workload::{Op, OpKind, key_name};

const CONTEXT_HEADER: &str = "x-ringkv-context";

/// Which HTTP API a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Ringkv,
    Etcd,
}

/// `http://host:port[/]` → `host:port`.
pub fn authority_of(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs are supported"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        anyhow::bail!("{url}: give a base URL such as http://127.0.0.1:8080");
    }
    Ok(authority.to_string())
}

pub struct HttpConn {
    authority: String,
    host: HeaderValue,
    timeout: Duration,
    link: Option<(SendRequest<Full<Bytes>>, JoinHandle<()>)>,
    authorization: Option<HeaderValue>,
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl HttpConn {
    /// `password`: sent as `Authorization: Bearer` with every request.
    pub fn new(
        authority: String,
        timeout: Duration,
        password: Option<&str>,
    ) -> anyhow::Result<HttpConn> {
        let host = HeaderValue::from_str(&authority)?;
        let authorization = password
            .map(|p| HeaderValue::from_str(&format!("Bearer {p}")))
            .transpose()?;
        Ok(HttpConn {
            authority,
            host,
            authorization,
            timeout,
            link: None,
        })
    }

    async fn connect(&mut self) -> Result<(), &'static str> {
        let stream =
            match tokio::time::timeout(self.timeout, TcpStream::connect(&self.authority)).await {
                Err(_) => return Err("timeout"),
                Ok(Err(_)) => return Err("connect"),
                Ok(Ok(stream)) => stream,
            };
        stream.set_nodelay(true).map_err(|_| "connect")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "connect")?;
        let driver = tokio::spawn(async move {
            // Ends when the server closes or the sender is dropped; errors surface on the sender.
            let _ = connection.await;
        });
        self.link = Some((sender, driver));
        Ok(())
    }

    fn reset(&mut self) {
        if let Some((_, driver)) = self.link.take() {
            driver.abort();
        }
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Response, String> {
        if self
            .link
            .as_ref()
            .is_some_and(|(sender, _)| sender.is_closed())
        {
            self.reset(); // the server closed an idle keep-alive connection
        }
        if self.link.is_none() {
            self.connect().await?;
        }
        let (sender, _) = self.link.as_mut().expect("connected above");
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => {
                self.reset();
                Err("connection".to_string())
            }
            Err(_) => {
                self.reset();
                Err("timeout".to_string())
            }
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, content_type);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        request.body(Full::new(body)).expect("a valid request")
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.reset();
    }
}

fn status_error(status: StatusCode) -> String {
    format!("http_{}", status.as_u16())
}

/// A read's result: found or not, and the causal context to write back with (ringkv).
struct Read {
    found: bool,
    context: Option<HeaderValue>,
}

async fn read(
    conn: &mut HttpConn,
    api: Api,
    settings: &Settings,
    key: &str,
) -> Result<Read, String> {
    match api {
        Api::Ringkv => {
            let path = format!("/v1/kv/{}/{key}", settings.bucket);
            let response = conn
                .send(conn.request(Method::GET, &path, Bytes::new(), "application/octet-stream"))
                .await?;
            let context = response.headers.get(CONTEXT_HEADER).cloned();
            match response.status {
                StatusCode::OK | StatusCode::MULTIPLE_CHOICES => Ok(Read {
                    found: true,
                    context,
                }),
                StatusCode::NOT_FOUND => Ok(Read {
                    found: false,
                    context,
                }),
                status => Err(status_error(status)),
            }
        }
        Api::Etcd => {
            let body = format!(r#"{{"key":"{}"}}"#, BASE64.encode(etcd_key(settings, key)));
            let response = conn
                .send(conn.request(
                    Method::POST,
                    "/v3/kv/range",
                    body.into(),
                    "application/json",
                ))
                .await?;
            if response.status != StatusCode::OK {
                return Err(status_error(response.status));
            }
            let reply: serde_json::Value =
                serde_json::from_slice(&response.body).map_err(|_| "etcd_bad_reply".to_string())?;
            let found = reply["kvs"].as_array().is_some_and(|kvs| !kvs.is_empty());
            Ok(Read {
                found,
                context: None,
            })
        }
    }
}

async fn write(
    conn: &mut HttpConn,
    api: Api,
    settings: &Settings,
    key: &str,
    context: Option<HeaderValue>,
) -> Result<(), String> {
    let response = match api {
        Api::Ringkv => {
            let path = format!("/v1/kv/{}/{key}", settings.bucket);
            let mut request = conn.request(
                Method::PUT,
                &path,
                settings.value.clone(),
                "application/octet-stream",
            );
            if let Some(context) = context {
                request.headers_mut().insert(CONTEXT_HEADER, context);
            }
            conn.send(request).await?
        }
        Api::Etcd => {
            let body = format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                BASE64.encode(etcd_key(settings, key)),
                settings.value_base64
            );
            conn.send(conn.request(Method::POST, "/v3/kv/put", body.into(), "application/json"))
                .await?
        }
    };
    if response.status.is_success() {
        Ok(())
    } else {
        Err(status_error(response.status))
    }
}

fn etcd_key(settings: &Settings, key: &str) -> String {
    format!("{}/{key}", settings.bucket)
}

async fn execute(conn: &mut HttpConn, api: Api, settings: &Settings, op: Op) -> Outcome {
    let key = key_name(op.key);
    let result = match op.kind {
        OpKind::Read => read(conn, api, settings, &key).await.map(|r| Outcome {
            not_found: !r.found,
            ..Outcome::default()
        }),
        OpKind::Update => write(conn, api, settings, &key, None)
            .await
            .map(|()| Outcome::default()),
        OpKind::ReadModifyWrite => {
            async {
                let started = Instant::now();
                let seen = read(conn, api, settings, &key).await?;
                let read_step = started.elapsed();
                let started = Instant::now();
                write(conn, api, settings, &key, seen.context).await?;
                Ok::<_, String>(Outcome {
                    read_step: Some(read_step),
                    write_step: Some(started.elapsed()),
                    not_found: !seen.found,
                    error: None,
                })
            }
            .await
        }
    };
    result.unwrap_or_else(Outcome::failed)
}

/// Runs one slot on one connection until its source stops.
pub async fn run_http(
    mut conn: HttpConn,
    api: Api,
    mut source: SlotSource,
    settings: &Settings,
) -> Stats {
    let mut stats = Stats::new(settings.slow);
    let mut pacer = Pacer::new();
    loop {
        let issued = match source.next(Instant::now()) {
            Next::Stop => break,
            Next::Wait(at) => {
                pacer.sleep_until(at).await;
                continue;
            }
            Next::Issue(issued) => issued,
        };
        let outcome = execute(&mut conn, api, settings, issued.op).await;
        let cannot_connect = outcome.error.as_deref() == Some("connect");
        settings.count_completed(&issued);
        stats.finish(&issued, Instant::now(), outcome);
        if cannot_connect {
            // Do not spin on a refused connection; the deadline still ends the run.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stats.late_unsent = source.late_unsent();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_reduce_to_their_authority() {
        assert_eq!(
            authority_of("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            authority_of("http://127.0.0.1:2379/").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(authority_of("https://127.0.0.1:8080").is_err());
        assert!(authority_of("http://127.0.0.1:8080/v1").is_err());
        assert!(authority_of("http://").is_err());
    }
}
