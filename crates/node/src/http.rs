//! The HTTP API (DESIGN §8): keys, buckets, cluster view, metrics, health.
//! Every error is a JSON body `{"error": code, "message": sentence}`.
//! Helpers return `Result<_, Response>` so a handler can answer an error
//! with `?`-like early returns (hence `result_large_err` is allowed).
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::percent_decode_str;
use ringkv_core::bucket::BucketProps;
use ringkv_core::causality::{Object, VersionVector, decode_context, try_encode_context};
use ringkv_core::membership::Liveness;
use ringkv_core::message::{ClientOp, ClientReply, OpError};
use serde::Serialize;
use serde_json::json;

use crate::node::{LeaveRefusal, Node, now_ms};

pub const CONTEXT_HEADER: &str = "x-ringkv-context";
/// On a PUT: the value expires this many seconds after it is written.
pub const TTL_HEADER: &str = "x-ringkv-ttl";
/// On a read of one value that expires: when, in ms since the Unix epoch.
pub const EXPIRES_HEADER: &str = "x-ringkv-expires-ms";
const MAX_IN_FLIGHT_REQUESTS: usize = 4096;

pub fn router(node: Arc<Node>) -> Router {
    let body_limit = node.config.max_value_bytes;
    Router::new()
        .route("/v1/kv/{bucket}/{*key}", get(kv).put(kv).delete(kv))
        .route("/v1/buckets/{bucket}", put(put_bucket).get(get_bucket))
        .route("/v1/buckets/{bucket}/keys", get(list_keys))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/members/{name}/leave", post(leave))
        .route("/v1/cluster/members/{name}/remove", post(remove))
        .route("/v1/preflist/{bucket}/{*key}", get(preflist))
        .route("/v1/backup", get(backup))
        .route(
            "/v1/restore",
            post(restore).layer(DefaultBodyLimit::disable()),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            require_password,
        ))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_IN_FLIGHT_REQUESTS,
        ))
        .with_state(node)
}

/// With `--client-password-file`, a request to the routes above must carry
/// the password: `Authorization: Bearer PASSWORD`, or Basic with any user
/// name (`curl -u :PASSWORD`). Else 401, before anything is read or done.
async fn require_password(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(password) = &node.client_password else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            if let Some(token) = v.strip_prefix("Bearer ") {
                return Some(token.as_bytes().to_vec());
            }
            let basic = STANDARD.decode(v.strip_prefix("Basic ")?).ok()?;
            let colon = basic.iter().position(|b| *b == b':')?;
            Some(basic[colon + 1..].to_vec())
        });
    if given.is_some_and(|given| password.matches(&given)) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this node requires the client password: Authorization: Bearer PASSWORD",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ringkv\""),
    );
    response
}

pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": code, "message": message.into() });
    (status, axum::Json(body)).into_response()
}

fn op_error(e: &OpError) -> Response {
    let (status, code) = match e {
        OpError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
        OpError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        OpError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        OpError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        OpError::TooManySiblings { .. } => (StatusCode::CONFLICT, "too_many_siblings"),
        OpError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    error(status, code, e.to_string())
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

#[derive(Default)]
struct KvQuery {
    r: Option<u32>,
    pr: Option<u32>,
    w: Option<u32>,
    pw: Option<u32>,
    timeout_ms: Option<u64>,
}

fn parse_query(raw: Option<&str>) -> Result<KvQuery, Response> {
    let mut query = KvQuery::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || {
            bad_request(format!(
                "query parameter {name} must be a positive integer, got {value:?}"
            ))
        };
        match name {
            "r" => query.r = Some(value.parse().map_err(|_| bad())?),
            "w" => query.w = Some(value.parse().map_err(|_| bad())?),
            "pr" => query.pr = Some(value.parse().map_err(|_| bad())?),
            "pw" => query.pw = Some(value.parse().map_err(|_| bad())?),
            "timeout_ms" => query.timeout_ms = Some(value.parse().map_err(|_| bad())?),
            _ => {
                return Err(bad_request(format!(
                    "unknown query parameter {name:?} (known: r, pr, w, pw, timeout_ms)"
                )));
            }
        }
    }
    Ok(query)
}

/// Bucket and key from the raw path `/v1/kv/{bucket}/{key...}`; the key
/// is percent-decoded to arbitrary bytes (a `/` may be literal or %2F).
fn bucket_and_key(uri: &Uri) -> Result<(String, Vec<u8>), Response> {
    let rest = uri.path().strip_prefix("/v1/kv/").unwrap_or_default();
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket = percent_decode_str(bucket)
        .decode_utf8()
        .map_err(|_| bad_request("bucket name is not valid UTF-8"))?
        .into_owned();
    let key: Vec<u8> = percent_decode_str(key).collect();
    Ok((bucket, key))
}

fn context_from(headers: &HeaderMap) -> Result<VersionVector, Response> {
    match headers.get(CONTEXT_HEADER) {
        None => Ok(VersionVector::new()),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| bad_request("X-Ringkv-Context is not a valid context token"))?;
            if text.is_empty() {
                return Ok(VersionVector::new());
            }
            decode_context(text).map_err(|e| bad_request(format!("X-Ringkv-Context: {e}")))
        }
    }
}

/// The context token, or None when the clock has more entries than a
/// token may carry (then the answer has no context and a later write is a
/// blind write: it becomes a sibling, nothing is lost).
fn context_token(context: &VersionVector) -> Option<String> {
    match try_encode_context(context) {
        Ok(token) => Some(token),
        Err(e) => {
            tracing::warn!(entries = context.len(), error = %e, "context too large to hand out");
            None
        }
    }
}

/// The TTL a write asks for (`X-Ringkv-Ttl`, whole seconds), in ms.
fn ttl_from(headers: &HeaderMap) -> Result<Option<u64>, Response> {
    let Some(value) = headers.get(TTL_HEADER) else {
        return Ok(None);
    };
    let seconds = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|&seconds| seconds >= 1)
        .ok_or_else(|| bad_request("X-Ringkv-Ttl must be a whole number of seconds, at least 1"))?;
    // Past the largest TTL, `Node::execute` refuses it with the limit.
    Ok(Some(seconds.saturating_mul(1000)))
}

fn insert_context(response: &mut Response, context: &VersionVector) {
    if let Some(token) = context_token(context) {
        let value = HeaderValue::from_str(&token).expect("base64url is a valid header value");
        response.headers_mut().insert(CONTEXT_HEADER, value);
    }
}

async fn kv(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (bucket, key) = match bucket_and_key(&uri) {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let query = match parse_query(raw_query.as_deref()) {
        Ok(query) => query,
        Err(response) => return response,
    };
    let timeout_ms = query.timeout_ms.unwrap_or(node.config.request_timeout_ms);
    // axum routes HEAD to the GET handler: it is a read, answered without a body.
    let op = if method == Method::GET || method == Method::HEAD {
        if query.w.is_some() || query.pw.is_some() {
            return bad_request("w and pw apply to writes; use r for reads");
        }
        if headers.contains_key(TTL_HEADER) {
            return bad_request("X-Ringkv-Ttl applies to writes");
        }
        ClientOp::Get {
            bucket,
            key,
            r: query.r,
            pr: query.pr,
            timeout_ms,
        }
    } else {
        if query.r.is_some() || query.pr.is_some() {
            return bad_request("r and pr apply to reads; use w and pw for writes");
        }
        let context = match context_from(&headers) {
            Ok(context) => context,
            Err(response) => return response,
        };
        let ttl_ms = match ttl_from(&headers) {
            Ok(ttl_ms) => ttl_ms,
            Err(response) => return response,
        };
        let value = if method == Method::PUT {
            match body {
                Ok(body) => Some(body.to_vec()),
                Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!(
                            "value exceeds max-value-bytes ({})",
                            node.config.max_value_bytes
                        ),
                    );
                }
                Err(rejection) => return bad_request(rejection.body_text()),
            }
        } else if method == Method::DELETE {
            None
        } else {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not a method of /v1/kv"),
            );
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        ClientOp::Put {
            bucket,
            key,
            value,
            content_type,
            context,
            w: query.w,
            pw: query.pw,
            timeout_ms,
        }
        .with_ttl(ttl_ms)
    };
    match node.execute(op, true).await {
        ClientReply::Failed(e) => op_error(&e),
        ClientReply::Written { context } => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            insert_context(&mut response, &context);
            response
        }
        ClientReply::Found { object: None } => {
            error(StatusCode::NOT_FOUND, "not_found", "key not found")
        }
        ClientReply::Found {
            object: Some(bytes),
        } => match Object::decode(&bytes) {
            Ok(object) => found(&object),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        },
    }
}

#[derive(Serialize)]
struct SiblingJson {
    value_base64: String,
    content_type: String,
    modified_ms: u64,
    /// When the value expires (ms since the Unix epoch); null: never.
    expires_ms: Option<u64>,
}

fn found(object: &Object) -> Response {
    let live: Vec<_> = object.live_siblings_at(now_ms()).collect();
    let mut response = match live.as_slice() {
        [] => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "key not found (deleted or expired)",
        ),
        [one] => {
            let mut response =
                (StatusCode::OK, one.value.clone().unwrap_or_default()).into_response();
            let content_type = HeaderValue::from_str(&one.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            if let Some(expires_ms) = one.expires_ms {
                response
                    .headers_mut()
                    .insert(EXPIRES_HEADER, HeaderValue::from(expires_ms));
            }
            response
        }
        many => {
            let siblings: Vec<SiblingJson> = many
                .iter()
                .map(|s| SiblingJson {
                    value_base64: STANDARD.encode(s.value.as_deref().unwrap_or_default()),
                    content_type: s.content_type.clone(),
                    modified_ms: s.modified_ms,
                    expires_ms: s.expires_ms,
                })
                .collect();
            let body = json!({ "context": context_token(object.clock()), "siblings": siblings });
            (StatusCode::MULTIPLE_CHOICES, axum::Json(body)).into_response()
        }
    };
    insert_context(&mut response, object.clock());
    response
}

async fn get_bucket(State(node): State<Arc<Node>>, Path(bucket): Path<String>) -> Response {
    if let Err(e) = ringkv_core::bucket::validate_bucket_name(&bucket) {
        return bad_request(e.to_string());
    }
    axum::Json(node.bucket_props(&bucket)).into_response()
}

/// `GET /v1/buckets/{bucket}/keys`: the bucket's keys, streamed as they
/// are found (`listing`). Reads every copy of every key of the bucket: an
/// operator's tool, as Riak's list keys.
async fn list_keys(State(node): State<Arc<Node>>, Path(bucket): Path<String>) -> Response {
    if let Err(e) = ringkv_core::bucket::validate_bucket_name(&bucket) {
        return bad_request(e.to_string());
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::listing::keys_body(node, bucket),
    )
        .into_response()
}

async fn put_bucket(
    State(node): State<Arc<Node>>,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Response {
    let props: BucketProps = match serde_json::from_slice(&body) {
        Ok(props) => props,
        Err(e) => return bad_request(format!("bucket properties: {e}")),
    };
    match node.set_bucket(&bucket, props) {
        Ok(()) => {
            let gossip = node.clone();
            tokio::spawn(async move { gossip.announce().await });
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => op_error(&e),
    }
}

#[derive(Serialize)]
struct MemberJson {
    name: String,
    id: String,
    peer_addr: String,
    http_addr: String,
    resp_addr: String,
    state: ringkv_core::ring::MemberState,
    liveness: &'static str,
    phi: f64,
    last_heard_ms_ago: Option<u64>,
    partitions_owned: usize,
}

async fn cluster(State(node): State<Arc<Node>>) -> Response {
    let layout = node.layout();
    let members: Vec<MemberJson> = layout
        .members()
        .iter()
        .map(|m| {
            let view = node.peer_view(m.id);
            MemberJson {
                name: m.name.clone(),
                id: format!("{:016x}", m.id),
                peer_addr: m.peer_addr.clone(),
                http_addr: m.http_addr.clone(),
                resp_addr: m.resp_addr.clone(),
                state: m.state,
                liveness: view.liveness.as_str(),
                phi: (view.phi * 100.0).round() / 100.0,
                last_heard_ms_ago: view.last_heard_ms_ago,
                partitions_owned: layout.partitions_owned(m.id),
            }
        })
        .collect();
    axum::Json(json!({
        "node": node.me.name,
        "node_id": format!("{:016x}", node.id),
        "layout_version": layout.version(),
        "partitions": layout.partitions(),
        "hints_pending": node.hints_pending(),
        "handoff_pending": node.metrics.handoff_pending.get(),
        "handoff_holders": node.holder_count(),
        "members": members,
    }))
    .into_response()
}

async fn leave(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    membership_change(node.ask_to_leave(&name).await, &name)
}

async fn remove(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    membership_change(node.ask_to_remove(&name).await, &name)
}

fn membership_change(outcome: Result<u64, LeaveRefusal>, name: &str) -> Response {
    match outcome {
        Ok(version) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "member": name, "layout_version": version })),
        )
            .into_response(),
        Err(LeaveRefusal::NoSuchMember) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no member is named {name:?}"),
        ),
        Err(LeaveRefusal::Running) => error(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "{name} is this node or is up: ask it to leave (cluster leave), which hands its data off first"
            ),
        ),
        Err(LeaveRefusal::Layout(e)) => error(StatusCode::CONFLICT, "conflict", e.to_string()),
        Err(LeaveRefusal::Store(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot persist the layout: {e}"),
        ),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let stats = node.store_stats();
    node.metrics.group_commit_batches.set(stats.commits as i64);
    node.metrics.group_commit_jobs.set(stats.jobs as i64);
    node.metrics.hints_pending.set(node.hints_pending() as i64);
    node.metrics.handoff_holders.set(node.holder_count() as i64);
    node.metrics.tree_keys.set(node.tree_keys() as i64);
    node.metrics
        .local_storage_failing
        .set(i64::from(node.local_writes_failing()));
    let layout = node.layout();
    for member in layout.members().iter().filter(|m| m.id != node.id) {
        let liveness = node.peer_view(member.id).liveness;
        let up = matches!(liveness, Liveness::Up | Liveness::Suspect);
        node.metrics
            .peer_up
            .get_or_create(&crate::metrics::PeerLabels {
                peer: member.name.clone(),
            })
            .set(i64::from(up));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/preflist/{bucket}/{key}`: where a key lives (as Riak's
/// `preflist` or Cassandra's `nodetool getendpoints`): its partition, its
/// primaries, and the replicas a request would use now (fallbacks standing
/// in for primaries this node sees down).
async fn preflist(State(node): State<Arc<Node>>, uri: Uri) -> Response {
    let path = uri.path().replacen("/v1/preflist/", "/v1/kv/", 1);
    let (bucket, key) = match bucket_and_key(&path.parse().unwrap_or_default()) {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    if let Err(e) = ringkv_core::bucket::validate_bucket_name(&bucket)
        .and(ringkv_core::bucket::validate_key(&key))
    {
        return bad_request(e.to_string());
    }
    let layout = node.layout();
    let n = (node.bucket_props(&bucket).n as usize)
        .min(layout.valid_members())
        .max(1);
    let partition = ringkv_core::ring::partition_of(
        ringkv_core::ring::key_hash(bucket.as_bytes(), &key),
        layout.partitions(),
    );
    let name = |id: u64| {
        layout
            .member(id)
            .map_or_else(|| format!("{id:016x}"), |m| m.name.clone())
    };
    let preference = layout.preference_list(partition, n);
    let plan: Vec<serde_json::Value> = node
        .replica_plan(&layout, partition, n)
        .into_iter()
        .map(|r| json!({ "node": name(r.node), "hint_for": r.hint_for.map(name) }))
        .collect();
    axum::Json(json!({
        "partition": partition,
        "primaries": preference.primaries.iter().map(|id| name(*id)).collect::<Vec<_>>(),
        "replicas_now": plan,
    }))
    .into_response()
}

/// `GET /v1/backup[?partial=true]`: the whole cluster's data as a backup
/// file (`backup` module), streamed as it is read.
async fn backup(State(node): State<Arc<Node>>, RawQuery(query): RawQuery) -> Response {
    let mut partial = false;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("partial", "true" | "1") => partial = true,
            ("partial", "false" | "0") => partial = false,
            _ => {
                return bad_request(format!(
                    "unknown query parameter {pair:?} (known: partial=true|false)"
                ));
            }
        }
    }
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ringkv.backup\"",
            ),
        ],
        crate::backup::backup_body(node, partial),
    )
        .into_response()
}

/// `POST /v1/restore` with a backup file as the body: merges every object
/// into its replicas, creates the buckets not configured here, and answers
/// with a JSON report (400 if the file is not a whole, valid backup; 503
/// if some objects reached fewer than W replicas). What was merged before
/// a bad record stays: restoring again is safe.
async fn restore(State(node): State<Arc<Node>>, body: axum::body::Body) -> Response {
    let (report, format_error) = crate::backup::restore(node, body).await;
    if let Some(e) = format_error {
        let body = json!({ "error": "bad_backup", "message": e.to_string(), "report": report });
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    if report.objects_failed > 0 || !report.complete {
        let message = format!(
            "{} objects could not be restored to W replicas; restoring the file again is safe",
            report.objects_failed
        );
        let body = json!({ "error": "unavailable", "message": message, "report": report });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(report).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_core::causality::Dot;

    #[test]
    fn a_clock_too_large_for_a_token_is_left_out_instead_of_panicking() {
        let small: VersionVector = (1..=3)
            .map(|r| Dot {
                replica: r,
                counter: 1,
            })
            .collect();
        assert!(context_token(&small).is_some());
        let huge: VersionVector = (1..=2000)
            .map(|r| Dot {
                replica: r,
                counter: 1,
            })
            .collect();
        assert_eq!(context_token(&huge), None);
        let mut response = StatusCode::OK.into_response();
        insert_context(&mut response, &huge);
        assert!(response.headers().get(CONTEXT_HEADER).is_none());
    }
}
