//! TLS. On peer connections (`--peer-tls-cert-file`, `--peer-tls-key-file`,
//! `--peer-tls-ca-file`), as etcd's peer TLS: every member has a
//! certificate signed by the cluster's CA and both sides of each
//! connection check the other's (mutual TLS). The connector also checks
//! that the acceptor's certificate names the host it dialled (an IP
//! address or a DNS name in its subject alternative names), as any TLS
//! client does. On the client ports (`--client-tls-cert-file`,
//! `--client-tls-key-file`): HTTPS and RESP over TLS, as etcd's client
//! URLs and Redis's `tls-port`, with the node's certificate only (clients
//! authenticate with the password, or with certificates of the client CA
//! when `--client-tls-ca-file` is set). rustls with the `ring` provider;
//! TLS 1.3 and 1.2. Every file is read again when it changes (checked at
//! each handshake), so certificates and CAs change without a restart.
//! Certificates are revoked with a CRL of the CA (`--peer-tls-crl-file`,
//! `--client-tls-crl-file`, as etcd's `--peer-crl-file`; `ringkv cert
//! revoke` writes one), read again when it changes too. When the CA or
//! CRL file of peer TLS changes, every peer connection is dropped and made
//! again under the new trust (a node checks the files every second), so a
//! revoked member is cut off at once, not only from new connections. When
//! those of client TLS change, each open client connection's certificate
//! is checked again, and the connections it no longer passes are closed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a plain peer connection to a TLS port is told before it is closed
/// (as `ringkv_wire::auth::MAGIC` tells a node without the secret): read as
/// a frame length it exceeds any limit, so the plain side can say why.
pub const TLS_REQUIRED: &[u8; 8] = b"RKTLSON\n";

/// The first byte of a TLS record that carries a handshake (ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether the first byte a connector sent can begin a TLS handshake.
pub fn looks_like_tls(first: u8) -> bool {
    first == TLS_HANDSHAKE_RECORD
}

/// The connector and acceptor of a node whose peer connections use TLS.
/// Both are built again when the CA or CRL file changes (see [`Trusting`]).
#[derive(Clone)]
pub struct PeerTls(Arc<Trusting<(TlsConnector, TlsAcceptor)>>);

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    /// Loads this node's certificate chain and key, the CA that signs
    /// every member's certificate, and the CA's revocation list if any
    /// (PEM files).
    pub fn load(cert: &Path, key: &Path, ca: &Path, crl: Option<&Path>) -> anyhow::Result<PeerTls> {
        let provider = provider();
        let files = Arc::new(CertFiles::load(cert, key, provider.clone())?);
        let build = move |trust: Trust| {
            let roots = trust.roots.expect("peer TLS always has a CA file");
            let mut accepting =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let mut connecting =
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
            if !trust.crls.is_empty() {
                accepting = accepting
                    .with_crls(trust.crls.clone())
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
                connecting = connecting
                    .with_crls(trust.crls)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .with_client_cert_verifier(
                    accepting
                        .build()
                        .context("while building the peer certificate verifier")?,
                )
                .with_cert_resolver(files.clone());
            let client = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .with_webpki_verifier(
                    connecting
                        .build()
                        .context("while building the peer certificate verifier")?,
                )
                .with_client_cert_resolver(files.clone());
            Ok((
                TlsConnector::from(Arc::new(client)),
                TlsAcceptor::from(Arc::new(server)),
            ))
        };
        Ok(PeerTls(Arc::new(Trusting::load(Some(ca), crl, build)?)))
    }

    pub fn connector(&self) -> TlsConnector {
        self.0.current().0
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.0.current().1
    }

    /// Changes whenever the CA or CRL file was read anew: a connection made
    /// before under the old trust is to be dropped (the transport does).
    /// Take it before the handshake, so that no change is missed.
    pub fn trust_changes(&self) -> watch::Receiver<u64> {
        self.0.generation.subscribe()
    }

    /// Reads the CA and CRL files again if they changed (every second, so
    /// that a revocation takes effect without waiting for a handshake).
    pub async fn watch_files(self) {
        self.0.watch_files().await
    }
}

/// The acceptor of the client ports (HTTP and RESP), built again when the
/// client CA or CRL file changes.
#[derive(Clone)]
pub struct ClientAcceptor(Arc<Trusting<ClientTrust>>);

/// The TLS configuration of the client ports, and the verifier of client
/// certificates when they are asked for.
#[derive(Clone)]
struct ClientTrust {
    acceptor: TlsAcceptor,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientAcceptor {
    pub fn acceptor(&self) -> TlsAcceptor {
        self.0.current().acceptor
    }

    /// Whether the client certificate `chain` (as the client showed it)
    /// passes the current CA and CRL files.
    fn trusts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some(verifier) = self.0.current().verifier else {
            return true;
        };
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .is_ok()
    }

    /// Reads the CA and CRL files again if they changed (every second), so
    /// that open connections are checked against a new CRL at once.
    pub async fn watch_files(self) {
        self.0.watch_files().await
    }
}

/// What the CA file and the CRL file give the verifiers.
struct Trust {
    roots: Option<Arc<RootCertStore>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

type Build<T> = dyn Fn(Trust) -> anyhow::Result<T> + Send + Sync;

/// What is built from a CA file and a CRL file (the verifiers, so the
/// whole TLS configuration), built again when either file changes: checked
/// at each handshake, as the certificate and key are, so that a new CA or
/// CRL needs no restart (put both CAs in the file while members move to
/// the new one). A file that cannot be used leaves the previous build in
/// use.
struct Trusting<T> {
    ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    build: Box<Build<T>>,
    loaded: Mutex<([Option<SystemTime>; 2], T)>,
    /// Counts the builds since the first.
    generation: watch::Sender<u64>,
}

impl<T: Clone> Trusting<T> {
    fn load(
        ca: Option<&Path>,
        crl: Option<&Path>,
        build: impl Fn(Trust) -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Trusting<T>> {
        let stamps = [ca.and_then(stamp), crl.and_then(stamp)];
        let built = build(trust(ca, crl)?)?;
        Ok(Trusting {
            ca: ca.map(Path::to_path_buf),
            crl: crl.map(Path::to_path_buf),
            build: Box::new(build),
            loaded: Mutex::new((stamps, built)),
            generation: watch::Sender::new(0),
        })
    }

    async fn watch_files(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let _ = self.current();
        }
    }

    fn current(&self) -> T {
        let mut loaded = self.loaded.lock().expect("CA lock");
        if self.ca.is_some() || self.crl.is_some() {
            let stamps = [
                self.ca.as_deref().and_then(stamp),
                self.crl.as_deref().and_then(stamp),
            ];
            if stamps != loaded.0 {
                match trust(self.ca.as_deref(), self.crl.as_deref()).and_then(&self.build) {
                    Ok(built) => {
                        info!("TLS CA file changed; reloaded (CA and CRL files)");
                        *loaded = (stamps, built);
                        self.generation.send_modify(|g| *g += 1);
                    }
                    Err(e) => {
                        // Not tried again until a file changes again.
                        loaded.0 = stamps;
                        warn!(error = %e, "TLS CA file changed but cannot be used; keeping the previous CA and CRL");
                    }
                }
            }
        }
        loaded.1.clone()
    }
}

/// Reads the CA file and the CRL file.
fn trust(ca: Option<&Path>, crl: Option<&Path>) -> anyhow::Result<Trust> {
    let roots = ca.map(roots).transpose()?;
    let crls = match (crl, ca) {
        (Some(crl), Some(ca)) => revocation_lists(crl, ca)?,
        _ => Vec::new(),
    };
    Ok(Trust { roots, crls })
}

/// A node's certificate and key, read from their files again when either
/// file changes (checked at each handshake, as etcd does), so that a
/// certificate is renewed by replacing the files, without a restart. A
/// new pair that cannot be loaded, or whose key does not match (say, the
/// certificate is replaced and the key not yet), leaves the previous one
/// in use until both are right.
#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: [Option<SystemTime>; 2],
    key: Arc<CertifiedKey>,
}

impl CertFiles {
    fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> anyhow::Result<CertFiles> {
        let stamps = stamps(cert, key);
        let certified = certified_key(cert, key, &provider)?;
        Ok(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            loaded: Mutex::new(Loaded {
                stamps,
                key: Arc::new(certified),
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let stamps = stamps(&self.cert, &self.key);
        let mut loaded = self.loaded.lock().expect("certificate lock");
        if stamps != loaded.stamps {
            match certified_key(&self.cert, &self.key, &self.provider) {
                Ok(certified) => {
                    info!(cert = %self.cert.display(), "TLS certificate changed; reloaded");
                    loaded.key = Arc::new(certified);
                    loaded.stamps = stamps;
                }
                Err(e) => {
                    warn!(error = %e, "TLS certificate files changed but cannot be used; keeping the previous certificate")
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// When each file last changed (None if it cannot be read).
fn stamps(cert: &Path, key: &Path) -> [Option<SystemTime>; 2] {
    [cert, key].map(stamp)
}

/// When the file last changed (None if it cannot be read).
fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key, from PEM files; the key must
/// match the certificate.
fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("while reading the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("while parsing the certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate (PEM)", cert.display());
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("while reading the private key {}", key.display()))?;
    CertifiedKey::from_der(chain, private, provider).with_context(|| {
        format!(
            "the certificate {} does not match the private key {}",
            cert.display(),
            key.display()
        )
    })
}

/// The acceptor of the client ports (HTTP and RESP): the node's
/// certificate; with `ca`, clients must show a certificate it signed
/// (etcd's `--client-cert-auth`), else none is asked for.
pub fn client_acceptor(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    crl: Option<&Path>,
) -> anyhow::Result<ClientAcceptor> {
    let provider = provider();
    let files = Arc::new(CertFiles::load(cert, key, provider.clone())?);
    let build = move |trust: Trust| {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let (builder, verifier) = match trust.roots {
            None => (builder.with_no_client_auth(), None),
            Some(roots) => {
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                if !trust.crls.is_empty() {
                    verifier = verifier
                        .with_crls(trust.crls)
                        .only_check_end_entity_revocation()
                        .allow_unknown_revocation_status();
                }
                let verifier = verifier
                    .build()
                    .context("while building the client certificate verifier")?;
                (
                    builder.with_client_cert_verifier(verifier.clone()),
                    Some(verifier),
                )
            }
        };
        let server = builder.with_cert_resolver(files.clone());
        Ok(ClientTrust {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            verifier,
        })
    };
    Ok(ClientAcceptor(Arc::new(Trusting::load(ca, crl, build)?)))
}

/// The CA certificates in the PEM file `ca`.
fn roots(ca: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca_cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("while reading the CA certificate {}", ca.display()))?
    {
        let ca_cert = ca_cert
            .with_context(|| format!("while parsing the CA certificate {}", ca.display()))?;
        roots
            .add(ca_cert)
            .with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no CA certificate (PEM)", ca.display());
    }
    Ok(Arc::new(roots))
}

/// The revocation lists in the PEM file `crl`, each of which must be
/// signed by a CA of the PEM file `ca` (a CRL of another CA would revoke
/// nothing, silently).
fn revocation_lists(
    crl: &Path,
    ca: &Path,
) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let lists: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_file_iter(crl)
            .with_context(|| format!("while reading the CRL {}", crl.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("while parsing the CRL {}", crl.display()))?;
    if lists.is_empty() {
        bail!(
            "{} holds no certificate revocation list (PEM X509 CRL)",
            crl.display()
        );
    }
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("while reading the CA certificate {}", ca.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("while parsing the CA certificate {}", ca.display()))?;
    for list in &lists {
        let (_, parsed) = x509_parser::parse_x509_crl(list.as_ref())
            .map_err(|e| anyhow::anyhow!("{} is not a usable CRL: {e}", crl.display()))?;
        // Signed by the CA's key, not only naming it (CAs made by
        // `ringkv cert` all have one name).
        let issued_by_a_ca = cas.iter().any(|ca_cert| {
            x509_parser::parse_x509_certificate(ca_cert.as_ref()).is_ok_and(|(_, ca_cert)| {
                ca_cert.subject() == parsed.issuer()
                    && parsed.verify_signature(ca_cert.public_key()).is_ok()
            })
        });
        if !issued_by_a_ca {
            bail!(
                "the CRL {} ({}) is not signed by a CA of {}",
                crl.display(),
                parsed.issuer(),
                ca.display()
            );
        }
    }
    Ok(lists)
}

/// Accepts TCP connections and hands on those that finished a TLS
/// handshake, each handshake in a task of its own (a slow client never
/// holds up the next), at most `max_handshakes` at once: the listener
/// the HTTP server serves on with client TLS.
pub struct TlsListener {
    ready: mpsc::Receiver<(ClientStream, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        acceptor: ClientAcceptor,
        max_handshakes: usize,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let handshakes = Arc::new(Semaphore::new(max_handshakes));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        let (tx, acceptor) = (tx.clone(), acceptor.clone());
                        tokio::spawn(async move {
                            match accept(&acceptor, stream, remote).await {
                                Some(stream) => {
                                    drop(permit);
                                    let _ = tx.send((stream, remote)).await;
                                }
                                None => drop(permit),
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = ClientStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone only when the runtime stops.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A client's TLS handshake, within `HANDSHAKE_TIMEOUT`; `None` (and a
/// line in the log) when it fails.
pub async fn accept(
    acceptor: &ClientAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<ClientStream> {
    // Taken before the handshake, so that no change after it is missed.
    let changes = acceptor.0.generation.subscribe();
    let stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                debug!(%remote, error = %e, "client TLS handshake failed");
                return None;
            }
            Err(_) => {
                debug!(%remote, "client TLS handshake timed out");
                return None;
            }
        };
    let chain = stream.get_ref().1.peer_certificates().map(|chain| {
        chain
            .iter()
            .map(|cert| cert.clone().into_owned())
            .collect::<Vec<_>>()
    });
    let untrusted = chain.map(|chain| -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(until_untrusted(acceptor.clone(), changes, chain, remote))
    });
    Some(ClientStream {
        inner: stream,
        untrusted,
        closed: false,
    })
}

/// Finishes once a change of the CA or CRL file leaves the client
/// certificate `chain` untrusted; never while it passes.
async fn until_untrusted(
    acceptor: ClientAcceptor,
    mut changes: watch::Receiver<u64>,
    chain: Vec<CertificateDer<'static>>,
    remote: SocketAddr,
) {
    while changes.changed().await.is_ok() {
        if !acceptor.trusts(&chain) {
            info!(%remote, "a client's certificate is no longer trusted (CA or CRL file changed); its connection is closed");
            return;
        }
    }
    std::future::pending().await
}

/// A client's connection over TLS. It fails every read and write from the
/// moment a change of the CA or CRL file leaves the client's certificate
/// untrusted, so the server closes it (a revoked client keeps no
/// connection it already had).
pub struct ClientStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    /// `None` when the client showed no certificate (none was asked for).
    untrusted: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    closed: bool,
}

impl ClientStream {
    fn check(&mut self, cx: &mut TaskContext<'_>) -> std::io::Result<()> {
        if let Some(untrusted) = &mut self.untrusted
            && untrusted.as_mut().poll(cx).is_ready()
        {
            self.untrusted = None;
            self.closed = true;
        }
        if self.closed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the client certificate is no longer trusted (revoked)",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The name a connector expects in the certificate of the peer at `addr`
/// (`host:port`): its IP address, or its DNS name.
pub fn server_name(addr: &str) -> Option<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).ok()
}

/// Whether `error` (from a TLS stream) is the peer refusing the handshake
/// or this side refusing the peer's certificate, rather than a lost
/// connection.
pub fn is_tls_refusal(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_peer_addresses() {
        assert_eq!(
            server_name("127.0.0.1:7070"),
            Some(ServerName::try_from("127.0.0.1").unwrap().to_owned())
        );
        assert_eq!(
            server_name("[::1]:7070"),
            Some(ServerName::try_from("::1").unwrap().to_owned())
        );
        assert_eq!(
            server_name("db-1.example:7070"),
            Some(ServerName::try_from("db-1.example").unwrap().to_owned())
        );
        assert_eq!(server_name("not a host:1"), None);
    }

    #[test]
    fn the_plain_refusals_are_no_frames() {
        // Read as a length prefix they are over any frame limit allowed.
        for refusal in [&TLS_REQUIRED[..], &ringkv_wire::auth::MAGIC[..]] {
            let len = u32::from_be_bytes(refusal[..4].try_into().unwrap());
            assert!(len as usize > crate::config::MAX_FRAME_BYTES);
        }
        let largest_value = 512 * 1024 * 1024;
        assert!(2 * largest_value + 64 * 1024 <= crate::config::MAX_FRAME_BYTES);
        assert!(!looks_like_tls(TLS_REQUIRED[0]));
    }
}
