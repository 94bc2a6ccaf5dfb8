//! Peer transport: one persistent TCP connection per peer address,
//! multiplexed by request id, with a bounded send queue, per-request
//! timeouts and reconnection with backoff; and the server side that
//! answers peers' requests. Frames are `ringkv_wire::frame`. With a cluster
//! secret, every connection starts with the mutual challenge-response of
//! `ringkv_wire::auth`, and a peer that fails it is cut off before its
//! first frame is read. With peer TLS (`crate::tls`), each connection is a
//! mutual-TLS session first (the challenge-response, if any, runs inside
//! it), and a plain connection to a TLS port is told so and closed.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::RngCore;
use ringkv_core::message::{PeerRequest, PeerResponse};
use ringkv_wire::auth::{ANSWER_BYTES, AuthError, CHALLENGE_BYTES, MAGIC, Nonce, PROOF_BYTES};
use ringkv_wire::{
    ClusterKey, Frame, Unreadable, decode_frame, encode_frame, peer_codec, unreadable,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use crate::tls::{self, PeerTls, TLS_REQUIRED};

const SEND_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long an accepted connection may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// Requests of one peer connection served at once; more wait in TCP.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("peer is unreachable")]
    Unreachable,
    #[error("connection to peer was lost")]
    Disconnected,
    #[error("peer did not answer in time")]
    Timeout,
    #[error("send queue to peer is full")]
    Overloaded,
    #[error("peer and this node do not share a cluster secret")]
    Unauthenticated,
    #[error(
        "TLS with the peer failed: one side does not use peer TLS, or does not trust the other's certificate (see both logs)"
    )]
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Unknown,
    Up,
    Down,
    /// Down because the last connection failed authentication.
    Refused,
    /// Down because the last connection failed TLS: a handshake refused
    /// either way, or one side without TLS.
    TlsFailed,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<PeerResponse>>>;

struct Link {
    state: AtomicU8,
    next_id: AtomicU64,
    pending: Pending,
    queue: mpsc::Sender<(u64, PeerRequest)>,
}

impl Link {
    fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            1 => LinkState::Up,
            2 => LinkState::Down,
            3 => LinkState::Refused,
            4 => LinkState::TlsFailed,
            _ => LinkState::Unknown,
        }
    }

    fn set(&self, liveness: LinkState) {
        let v = match liveness {
            LinkState::Unknown => 0,
            LinkState::Up => 1,
            LinkState::Down => 2,
            LinkState::Refused => 3,
            LinkState::TlsFailed => 4,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    fn fail_pending(&self) {
        // Dropping the senders tells every waiter the connection is gone.
        self.pending.lock().expect("pending lock").clear();
    }
}

/// Connections to peers, created on first use and kept for the life of the node.
pub struct Peers {
    links: Mutex<HashMap<String, Arc<Link>>>,
    max_frame_bytes: usize,
    security: Security,
}

/// How peer connections are protected: the cluster secret's key, when
/// they must authenticate, and TLS, when they must use it.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub key: Option<ClusterKey>,
    pub tls: Option<PeerTls>,
}

impl Peers {
    pub fn new(max_frame_bytes: usize, security: Security) -> Arc<Self> {
        Arc::new(Peers {
            links: Mutex::new(HashMap::new()),
            max_frame_bytes,
            security,
        })
    }

    fn link(&self, addr: &str) -> Arc<Link> {
        let mut links = self.links.lock().expect("links lock");
        if let Some(link) = links.get(addr) {
            return link.clone();
        }
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let link = Arc::new(Link {
            state: AtomicU8::new(0),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            queue: tx,
        });
        links.insert(addr.to_string(), link.clone());
        tokio::spawn(run_link(
            addr.to_string(),
            link.clone(),
            rx,
            self.max_frame_bytes,
            self.security.clone(),
        ));
        link
    }

    /// The connection to `addr` is down (its last attempt failed or it
    /// closed, and it waits to reconnect): a request now would fail at once.
    pub fn is_down(&self, addr: &str) -> bool {
        self.links
            .lock()
            .expect("links lock")
            .get(addr)
            .is_some_and(|link| {
                matches!(
                    link.state(),
                    LinkState::Down | LinkState::Refused | LinkState::TlsFailed
                )
            })
    }

    /// Sends a request and waits for its answer at most `timeout`.
    pub async fn request(
        &self,
        addr: &str,
        body: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let link = self.link(addr);
        match link.state() {
            LinkState::Down => return Err(PeerError::Unreachable),
            LinkState::Refused => return Err(PeerError::Unauthenticated),
            LinkState::TlsFailed => return Err(PeerError::Tls),
            LinkState::Up | LinkState::Unknown => {}
        }
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        link.pending.lock().expect("pending lock").insert(id, tx);
        if link.queue.try_send((id, body)).is_err() {
            link.pending.lock().expect("pending lock").remove(&id);
            return Err(PeerError::Overloaded);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(PeerError::Disconnected),
            Err(_) => {
                link.pending.lock().expect("pending lock").remove(&id);
                Err(PeerError::Timeout)
            }
        }
    }
}

/// How a connection attempt ended.
enum Session {
    /// The connection was up, then closed: reconnect at once.
    Ended,
    /// It never came up: wait, then try again.
    Failed(LinkState),
}

async fn run_link(
    addr: String,
    link: Arc<Link>,
    mut queue: mpsc::Receiver<(u64, PeerRequest)>,
    max_frame_bytes: usize,
    security: Security,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let (key, link, queue) = (security.key.as_ref(), &link, &mut queue);
                match &security.tls {
                    None => {
                        let split = TcpStream::into_split;
                        session(stream, split, &addr, key, link, queue, max_frame_bytes).await
                    }
                    Some(peer_tls) => {
                        let changes = peer_tls.trust_changes();
                        match tls_connect(peer_tls, &addr, stream).await {
                            Ok(stream) => {
                                let split = tokio::io::split;
                                let session = session(
                                    stream,
                                    split,
                                    &addr,
                                    key,
                                    link,
                                    queue,
                                    max_frame_bytes,
                                );
                                until_trust_changes(changes, session, || {
                                    info!(peer = %addr, "peer TLS trust changed; connecting again");
                                    Session::Ended
                                })
                                .await
                            }
                            Err(state) => Session::Failed(state),
                        }
                    }
                }
            }
            _ => Session::Failed(LinkState::Down),
        };
        match session {
            Session::Ended => {
                link.set(LinkState::Down);
                link.fail_pending();
                if queue.is_closed() {
                    return;
                }
                backoff = BACKOFF_MIN;
                continue;
            }
            Session::Failed(state) => link.set(state),
        }
        // Nobody waits for requests queued while connecting failed.
        while queue.try_recv().is_ok() {}
        link.fail_pending();
        if queue.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The connector's TLS handshake with the peer at `addr`.
async fn tls_connect(
    peer_tls: &PeerTls,
    addr: &str,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, LinkState> {
    let Some(name) = tls::server_name(addr) else {
        warn!(peer = %addr, "no TLS server name in the peer address");
        return Err(LinkState::TlsFailed);
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, peer_tls.connector().connect(name, stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        // A certificate refused either way, or the connection closed
        // during the handshake: a plain node hangs up on what it cannot
        // read as a frame.
        Ok(Err(e)) => {
            warn!(peer = %addr, error = %e, "TLS handshake with the peer failed");
            Err(LinkState::TlsFailed)
        }
        Err(_) => Err(LinkState::Down),
    }
}

/// One connection to a peer, from authentication (with a cluster secret)
/// until it closes.
async fn session<S, R, W>(
    mut stream: S,
    split: fn(S) -> (R, W),
    addr: &str,
    key: Option<&ClusterKey>,
    link: &Link,
    queue: &mut mpsc::Receiver<(u64, PeerRequest)>,
    max_frame_bytes: usize,
) -> Session
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Some(key) = key {
        match authenticate_to(&mut stream, key).await {
            Ok(()) => {}
            // Nothing in time: a peer without a secret, or just a slow
            // one; retried like an unreachable peer.
            Err(e @ (AuthError::NoChallenge | AuthError::NoAnswer)) => {
                warn!(peer = %addr, error = %e, "peer authentication failed");
                return Session::Failed(LinkState::Down);
            }
            Err(e) => {
                warn!(peer = %addr, error = %e, "peer authentication failed");
                return Session::Failed(LinkState::Refused);
            }
        }
    }
    link.set(LinkState::Up);
    let (read, write) = split(stream);
    let reason = drive_connection(read, write, link, queue, max_frame_bytes).await;
    debug!(peer = %addr, %reason, "peer connection closed");
    match link.state() {
        // It wants a secret, or TLS: retry as after a failed connect.
        state @ (LinkState::Refused | LinkState::TlsFailed) => Session::Failed(state),
        _ => Session::Ended,
    }
}

fn nonce() -> Nonce {
    let mut nonce = [0; 32];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

/// The connector's side of the handshake (`ringkv_wire::auth`).
async fn authenticate_to<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
) -> Result<(), AuthError> {
    let mut challenge = [0; CHALLENGE_BYTES];
    // A node without a secret sends no challenge: the read times out.
    match tokio::time::timeout(CONNECT_TIMEOUT, stream.read_exact(&mut challenge)).await {
        Ok(Ok(_)) => {}
        _ => return Err(AuthError::NoChallenge),
    }
    let mine = nonce();
    let proof = key.prove(&challenge, &mine)?;
    let mut answer = [0; ANSWER_BYTES];
    let exchange = async {
        stream.write_all(&proof).await?;
        stream.read_exact(&mut answer).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
        Ok(Ok(_)) => key.check_answer(&challenge, &mine, &answer),
        // An acceptor that hangs up on the proof holds another secret.
        Ok(Err(_)) => Err(AuthError::WrongSecret),
        Err(_) => Err(AuthError::NoAnswer),
    }
}

/// Closes a connection that failed authentication so that the peer still
/// reads the challenge (a node without a secret then says so): half-close,
/// then drop what the peer sends for a moment (closing with unread bytes
/// would reset the connection and lose the challenge).
async fn hang_up<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let _ = stream.shutdown().await;
    let mut sink = [0; 4096];
    let drain = async {
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// The acceptor's side of the handshake (`ringkv_wire::auth`).
async fn authenticate_from<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
) -> Result<(), AuthError> {
    let mine = nonce();
    let exchange = async {
        stream.write_all(&ClusterKey::challenge(&mine)).await.ok()?;
        let mut proof = [0; PROOF_BYTES];
        stream.read_exact(&mut proof).await.ok()?;
        Some(proof)
    };
    let Ok(Some(proof)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await else {
        return Err(AuthError::NoProof);
    };
    let answer = key.answer(&mine, &proof)?;
    stream
        .write_all(&answer)
        .await
        .map_err(|_| AuthError::WrongSecret)
}

async fn drive_connection<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    read: R,
    write: W,
    link: &Link,
    queue: &mut mpsc::Receiver<(u64, PeerRequest)>,
    max_frame_bytes: usize,
) -> String {
    let mut reader = FramedRead::new(read, peer_codec(max_frame_bytes));
    let mut writer = FramedWrite::new(write, peer_codec(max_frame_bytes));
    let send = async {
        while let Some((id, body)) = queue.recv().await {
            let mut next = Some((id, body));
            // Write everything queued, then flush once.
            while let Some((id, body)) = next.take() {
                match encode_frame(&Frame::Request { id, body }) {
                    Ok(bytes) if bytes.len() > max_frame_bytes => {
                        warn!(
                            bytes = bytes.len(),
                            "peer request larger than max-frame-bytes; not sent"
                        );
                        link.pending.lock().expect("pending lock").remove(&id);
                    }
                    Ok(bytes) => {
                        if let Err(e) = writer.feed(bytes).await {
                            return format!("write failed: {e}");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot encode peer request");
                        link.pending.lock().expect("pending lock").remove(&id);
                    }
                }
                next = queue.try_recv().ok();
            }
            if let Err(e) = SinkExt::<bytes::Bytes>::flush(&mut writer).await {
                return format!("write failed: {e}");
            }
        }
        "node shutting down".to_string()
    };
    let receive = async {
        loop {
            match reader.next().await {
                None => return "peer closed the connection".to_string(),
                Some(Err(_)) if reader.read_buffer().starts_with(MAGIC) => {
                    warn!("the peer requires a cluster secret; this node has none");
                    link.set(LinkState::Refused);
                    return "peer requires a cluster secret".to_string();
                }
                Some(Err(_)) if reader.read_buffer().starts_with(TLS_REQUIRED) => {
                    warn!("the peer requires peer TLS; this node has none");
                    link.set(LinkState::TlsFailed);
                    return "peer requires TLS".to_string();
                }
                // With TLS 1.3 the acceptor checks our certificate after
                // our side of the handshake is done: its refusal arrives
                // as an alert on the first read.
                Some(Err(e)) if tls::is_tls_refusal(&e) => {
                    warn!(error = %e, "the peer refused this node's TLS certificate");
                    link.set(LinkState::TlsFailed);
                    return format!("TLS refused: {e}");
                }
                Some(Err(e)) => return format!("read failed: {e}"),
                Some(Ok(bytes)) => match decode_frame(&bytes) {
                    Ok(Frame::Response { id, body }) => {
                        if let Some(waiter) = link.pending.lock().expect("pending lock").remove(&id)
                        {
                            let _ = waiter.send(body);
                        }
                    }
                    Ok(Frame::Request { .. }) => {
                        return "peer sent a request on a client connection".into();
                    }
                    Err(e) => match unreadable(&bytes) {
                        // Fails its own request only.
                        Some(Unreadable::Response { id }) => {
                            warn!(error = %e, "a peer's response cannot be read (a newer version?)");
                            if let Some(waiter) =
                                link.pending.lock().expect("pending lock").remove(&id)
                            {
                                let _ = waiter.send(PeerResponse::Refused {
                                    message: format!("unreadable response: {e}"),
                                });
                            }
                        }
                        _ => return format!("bad frame from peer: {e}"),
                    },
                },
            }
        }
    };
    tokio::select! {
        reason = send => reason,
        reason = receive => reason,
    }
}

pub type Handler =
    Arc<dyn Fn(PeerRequest) -> Pin<Box<dyn Future<Output = PeerResponse> + Send>> + Send + Sync>;

/// Accepts peer connections and answers their requests with `handler`.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    max_frame_bytes: usize,
    connections: Arc<Semaphore>,
    security: Security,
) {
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let security = security.clone();
                tokio::spawn(async move {
                    let key = security.key.as_ref();
                    let reason = match &security.tls {
                        None => {
                            let split = TcpStream::into_split;
                            accepted(stream, split, remote, key, handler, max_frame_bytes).await
                        }
                        Some(peer_tls) => {
                            let changes = peer_tls.trust_changes();
                            match tls_accept(peer_tls, stream, remote).await {
                                Ok(stream) => {
                                    let split = tokio::io::split;
                                    let serving = accepted(
                                        stream,
                                        split,
                                        remote,
                                        key,
                                        handler,
                                        max_frame_bytes,
                                    );
                                    until_trust_changes(changes, serving, || {
                                        "peer TLS trust changed".to_string()
                                    })
                                    .await
                                }
                                Err(reason) => reason,
                            }
                        }
                    };
                    debug!(%remote, %reason, "peer connection ended");
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs a TLS connection's `work` until it ends, or until the CA or CRL
/// files change (`changes`, taken before the handshake): then the
/// connection is dropped, to be made again under the new trust, so that a
/// revoked certificate loses the connections it already has.
async fn until_trust_changes<T>(
    mut changes: watch::Receiver<u64>,
    work: impl Future<Output = T>,
    changed: impl FnOnce() -> T,
) -> T {
    tokio::select! {
        done = work => done,
        Ok(()) = changes.changed() => changed(),
    }
}

/// The acceptor's TLS handshake. A connector that does not start one is
/// told that this port wants TLS, then hung up on.
async fn tls_accept(
    peer_tls: &PeerTls,
    stream: TcpStream,
    remote: SocketAddr,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if tls::looks_like_tls(first[0]) => {}
        Ok(Ok(1)) => {
            warn!(%remote, "a peer connected without TLS; this node requires peer TLS");
            let mut stream = stream;
            let _ = stream.write_all(TLS_REQUIRED).await;
            hang_up(stream).await;
            return Err("no TLS".into());
        }
        _ => return Err("nothing received".into()),
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, peer_tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => {
            warn!(%remote, error = %e, "peer failed the TLS handshake; connection closed");
            Err(format!("TLS handshake failed: {e}"))
        }
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

/// Serves one accepted connection, after authentication (with a cluster
/// secret).
async fn accepted<S, R, W>(
    mut stream: S,
    split: fn(S) -> (R, W),
    remote: SocketAddr,
    key: Option<&ClusterKey>,
    handler: Handler,
    max_frame_bytes: usize,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if let Some(key) = key
        && let Err(e) = authenticate_from(&mut stream, key).await
    {
        warn!(%remote, error = %e, "peer failed authentication; connection closed");
        hang_up(stream).await;
        return format!("authentication failed: {e}");
    }
    let (read, write) = split(stream);
    serve_connection(read, write, handler, max_frame_bytes).await
}

async fn serve_connection<R, W>(
    read: R,
    write: W,
    handler: Handler,
    max_frame_bytes: usize,
) -> String
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = FramedRead::new(read, peer_codec(max_frame_bytes));
    let mut writer = FramedWrite::new(write, peer_codec(max_frame_bytes));
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(MAX_IN_FLIGHT_PER_CONNECTION);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let write_loop = async move {
        while let Some(bytes) = rx.recv().await {
            if writer.feed(bytes).await.is_err() {
                return;
            }
            while let Ok(bytes) = rx.try_recv() {
                if writer.feed(bytes).await.is_err() {
                    return;
                }
            }
            if SinkExt::<bytes::Bytes>::flush(&mut writer).await.is_err() {
                return;
            }
        }
    };
    let read_loop = async move {
        loop {
            let bytes = match reader.next().await {
                None => return "closed by peer".to_string(),
                Some(Err(e)) => return format!("read failed: {e}"),
                Some(Ok(bytes)) => bytes,
            };
            let (id, body) = match decode_frame(&bytes) {
                Ok(Frame::Request { id, body }) => (id, body),
                Ok(Frame::Response { .. }) => {
                    return "peer sent a response on a server connection".into();
                }
                Err(e) => {
                    let Some(Unreadable::Request { id }) = unreadable(&bytes) else {
                        warn!(error = %e, "bad frame from peer; closing the connection");
                        return format!("bad frame: {e}");
                    };
                    warn!(error = %e, "refused a request this node cannot read (from a newer version?)");
                    let refused = encode_frame(&Frame::Response {
                        id,
                        body: PeerResponse::Refused {
                            message: format!(
                                "the peer cannot read this request (it may run an older version of ringkv): {e}"
                            ),
                        },
                    });
                    if let Ok(bytes) = refused
                        && tx.send(bytes).await.is_err()
                    {
                        return "write failed".into();
                    }
                    continue;
                }
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return "shutting down".into();
            };
            let handler = handler.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let body = handler(body).await;
                let encoded = encode_frame(&Frame::Response { id, body }).and_then(|bytes| {
                    if bytes.len() > max_frame_bytes {
                        encode_frame(&Frame::Response {
                            id,
                            body: PeerResponse::Refused {
                                message: format!(
                                    "response of {} bytes exceeds max-frame-bytes",
                                    bytes.len()
                                ),
                            },
                        })
                    } else {
                        Ok(bytes)
                    }
                });
                match encoded {
                    Ok(bytes) => {
                        let _ = tx.send(bytes).await;
                    }
                    Err(e) => warn!(error = %e, "cannot encode peer response"),
                }
                drop(permit);
            });
        }
    };
    tokio::select! {
        reason = read_loop => reason,
        () = write_loop => "write failed".to_string(),
    }
}
