//! `ringkv cert`: the files peer TLS needs, as `cockroach cert` makes
//! them: a cluster CA, then one certificate per node signed by it, naming
//! the hosts (IP addresses or DNS names) its peers dial. Keys are ECDSA
//! P-256 (rcgen); every key file is written readable by its owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
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
}

pub fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::CreateCa { dir } => create_ca(&dir),
        CertCommand::CreateNode { dir, name, hosts } => create_node(&dir, &name, &hosts),
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
    let issuer = Issuer::new(ca_params()?, ca_key);

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
