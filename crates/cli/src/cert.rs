//! `ringkv cert`: the files peer TLS needs, as `cockroach cert` makes
//! them: a cluster CA, then one certificate per node signed by it, naming
//! the hosts (IP addresses or DNS names) its peers dial. Keys are ECDSA
//! P-256 (rcgen); every key file is written readable by its owner only.
//! `revoke` writes the CA's certificate revocation list (CRL), which nodes
//! read with `--peer-tls-crl-file` / `--client-tls-crl-file` (etcd's
//! `--peer-crl-file`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber, date_time_ymd,
};
use time::OffsetDateTime;
use x509_parser::pem::Pem;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CRL: &str = "crl.pem";
/// How long a CRL says it is current. Nodes do not refuse an older one
/// (as etcd), so this only informs other readers.
const CRL_DAYS: i64 = 365;
const CA_NAME: &str = "ringkv cluster CA";
const CA_YEARS: i32 = 10;
const NODE_YEARS: i32 = 5;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make a cluster CA: DIR/ca.crt (give it to every node as
    /// --peer-tls-ca-file) and DIR/ca.key (keep it off the nodes).
    CreateCa {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make DIR/NAME.crt and DIR/NAME.key for a node, signed by DIR/ca.key,
    /// valid for every --host its peers dial it by (the host of its
    /// --peer-addr): `--host 10.0.0.5 --host db-1.example`.
    CreateNode {
        #[arg(long)]
        dir: PathBuf,
        /// The node's name (the certificate's common name).
        #[arg(long)]
        name: String,
        /// An IP address or DNS name the node is dialled by; repeatable.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Revoke node or client certificates signed by DIR/ca.key: writes
    /// DIR/crl.pem listing them and every certificate an earlier DIR/crl.pem
    /// listed. Give crl.pem to every node (--peer-tls-crl-file,
    /// --client-tls-crl-file); a node reads it again when it changes and
    /// drops its peer connections to renegotiate them. With no CERT_FILE it
    /// writes a CRL that revokes nothing, to start nodes with.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        /// A certificate (PEM) to revoke, such as DIR/NAME.crt.
        #[arg(value_name = "CERT_FILE")]
        certs: Vec<PathBuf>,
    },
}

pub fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::CreateCa { dir } => create_ca(&dir),
        CertCommand::CreateNode { dir, name, hosts } => create_node(&dir, &name, &hosts),
        CertCommand::Revoke { dir, certs } => revoke(&dir, &certs),
    }
}

/// The CA's parameters. A node certificate is signed by an issuer built
/// from these and the CA key, so they must not change between the two.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::new())?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// From the first day of last year (clocks differ) for `years` years.
fn validity(params: &mut CertificateParams, years: i32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let year = 1970 + (now / (365 * 24 * 3600 + 20_925)) as i32;
    params.not_before = date_time_ymd(year - 1, 1, 1);
    params.not_after = date_time_ymd(year + years, 1, 1);
}

pub fn create_ca(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("while creating {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            bail!(
                "{} exists; a new CA would not sign for the nodes of the old one",
                path.display()
            );
        }
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params()?;
    validity(&mut params, CA_YEARS);
    let cert = params.self_signed(&key)?;
    write_pair(
        &cert_path,
        &cert,
        &key_path,
        &key,
        "keep the key off the nodes",
    )
}

pub fn create_node(dir: &Path, name: &str, hosts: &[String]) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("--name must be letters, digits, '-', '_' or '.'");
    }
    let issuer = ca_issuer(dir)?;

    let mut params = CertificateParams::new(hosts.to_vec())
        .context("a --host is neither an IP address nor a DNS name")?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Each node is both sides of peer connections.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_YEARS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    write_pair(
        &cert_path,
        &cert,
        &key_path,
        &key,
        &format!("for {}", hosts.join(", ")),
    )
}

/// The CA of `dir` as the signer of certificates and CRLs.
fn ca_issuer(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let ca_key_path = dir.join(CA_KEY);
    let ca_key = std::fs::read_to_string(&ca_key_path).with_context(|| {
        format!(
            "while reading {} (make it with `ringkv cert create-ca --dir {}`)",
            ca_key_path.display(),
            dir.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key)
        .with_context(|| format!("{} is not a private key", ca_key_path.display()))?;
    Ok(Issuer::new(ca_params()?, ca_key))
}

/// Writes DIR/crl.pem: the certificates an earlier one revoked, and
/// `certs`, each of which must have been issued by this CA.
pub fn revoke(dir: &Path, certs: &[PathBuf]) -> anyhow::Result<()> {
    let issuer = ca_issuer(dir)?;
    let ca_pem = read_pem(&dir.join(CA_CERT))?;
    let ca = ca_pem
        .parse_x509()
        .with_context(|| format!("{} is not a certificate", dir.join(CA_CERT).display()))?;
    let now = OffsetDateTime::now_utc();
    let crl_path = dir.join(CRL);
    let mut revoked: Vec<RevokedCertParams> = Vec::new();
    if crl_path.exists() {
        let pem = read_pem(&crl_path)?;
        let (_, crl) = x509_parser::parse_x509_crl(&pem.contents)
            .map_err(|e| anyhow::anyhow!("{} is not a CRL: {e}", crl_path.display()))?;
        for entry in crl.iter_revoked_certificates() {
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(entry.raw_serial()),
                revocation_time: entry.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    let mut added = 0;
    for path in certs {
        let pem = read_pem(path)?;
        let cert = pem
            .parse_x509()
            .with_context(|| format!("{} is not a certificate", path.display()))?;
        // Signed by this CA's key (CAs made here all have one name).
        if cert.issuer() != ca.subject() || cert.verify_signature(Some(ca.public_key())).is_err() {
            bail!(
                "{} was not issued by the CA in {} (issuer: {})",
                path.display(),
                dir.display(),
                cert.issuer()
            );
        }
        let serial = SerialNumber::from_slice(cert.raw_serial());
        if revoked.iter().any(|r| r.serial_number == serial) {
            println!("{} is already revoked", path.display());
            continue;
        }
        revoked.push(RevokedCertParams {
            serial_number: serial,
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
        added += 1;
    }
    let count = revoked.len();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(CRL_DAYS),
        // Increases with every CRL written (milliseconds since 1970).
        crl_number: SerialNumber::from((now.unix_timestamp_nanos() / 1_000_000) as u64),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    // Nodes read the file when it changes: never let them see half of it.
    let partial = dir.join(format!("{CRL}.partial"));
    std::fs::write(&partial, crl.pem()?)
        .and_then(|()| std::fs::rename(&partial, &crl_path))
        .with_context(|| format!("while writing {}", crl_path.display()))?;
    println!(
        "wrote {} ({added} newly revoked, {count} in all); give it to every node as --peer-tls-crl-file (and --client-tls-crl-file)",
        crl_path.display()
    );
    Ok(())
}

/// The first PEM block of `path`.
fn read_pem(path: &Path) -> anyhow::Result<Pem> {
    let bytes = std::fs::read(path).with_context(|| format!("while reading {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a PEM file: {e}", path.display()))?;
    Ok(pem)
}

/// Writes a certificate and its key (PEM), and says so.
fn write_pair(
    cert_path: &Path,
    cert: &rcgen::Certificate,
    key_path: &Path,
    key: &KeyPair,
    note: &str,
) -> anyhow::Result<()> {
    write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem())
        .with_context(|| format!("while writing {}", cert_path.display()))?;
    println!(
        "wrote {} and {} ({note})",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Writes a key file readable by its owner only (created so, never
/// readable by others in between).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("while writing {}", path.display()))?;
    #[cfg(unix)]
    {
        // An older file keeps its mode through `open`.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("while writing {}", path.display()))?;
    }
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("while writing {}", path.display()))
}
