//! TLS on peer connections (`--peer-tls-cert-file`, `--peer-tls-key-file`,
//! `--peer-tls-ca-file`), as etcd's peer TLS: every member has a
//! certificate signed by the cluster's CA and both sides of each
//! connection check the other's (mutual TLS). The connector also checks
//! that the acceptor's certificate names the host it dialled (an IP
//! address or a DNS name in its subject alternative names), as any TLS
//! client does. rustls with the `ring` provider; TLS 1.3 and 1.2.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

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
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("while reading the certificate {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("while parsing the certificate {}", cert.display()))?;
        if chain.is_empty() {
            bail!("{} holds no certificate (PEM)", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("while reading the private key {}", key.display()))?;
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());

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
