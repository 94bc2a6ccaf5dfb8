//! TLS. On peer connections (`--peer-tls-cert-file`, `--peer-tls-key-file`,
//! `--peer-tls-ca-file`), as etcd's peer TLS: every member has a
//! certificate signed by the cluster's CA and both sides of each
//! connection check the other's (mutual TLS). The connector also checks
//! that the acceptor's certificate names the host it dialled (an IP
//! address or a DNS name in its subject alternative names), as any TLS
//! client does. On the client ports (`--client-tls-cert-file`,
//! `--client-tls-key-file`): HTTPS and RESP over TLS, as etcd's client
//! URLs and Redis's `tls-port`, with the node's certificate only (clients
//! authenticate with the password). rustls with the `ring` provider; TLS
//! 1.3 and 1.2.

use std::path::Path;
use std::sync::Arc;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

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
#[derive(Clone)]
pub struct PeerTls {
    pub connector: TlsConnector,
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    /// Loads this node's certificate chain and key and the CA that signs
    /// every member's certificate (PEM files).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<PeerTls> {
        let (chain, key) = certified_key(cert, key)?;
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
        let roots = Arc::new(roots);
        let provider = provider();

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .context("while building the peer certificate verifier")?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .context("the certificate does not match the private key")?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the certificate does not match the private key")?;
        Ok(PeerTls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key, from PEM files.
fn certified_key(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("while reading the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("while parsing the certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate (PEM)", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("while reading the private key {}", key.display()))?;
    Ok((chain, key))
}

/// The acceptor of the client ports (HTTP and RESP): the node's
/// certificate, no client certificate asked for.
pub fn client_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let (chain, key) = certified_key(cert, key)?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate does not match the private key")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Accepts TCP connections and hands on those that finished a TLS
/// handshake, each handshake in a task of its own (a slow client never
/// holds up the next), at most `max_handshakes` at once: the listener
/// the HTTP server serves on with client TLS.
pub struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
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
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
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
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "client TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%remote, "client TLS handshake timed out");
            None
        }
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
    fn the_plain_refusal_is_no_frame() {
        // Read as a length prefix it is far over any frame limit.
        let len = u32::from_be_bytes(TLS_REQUIRED[..4].try_into().unwrap());
        assert!(len as usize > 256 * 1024 * 1024);
        assert!(!looks_like_tls(TLS_REQUIRED[0]));
    }
}
