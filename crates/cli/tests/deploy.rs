//! The deployment examples under `deploy/` stay true: `ringkv.toml`, with
//! only its addresses, paths and name moved to this machine (127.0.0.1,
//! a temporary directory, certificates made by `ringkv cert`), starts a
//! node that serves with peer TLS and the client password; and
//! `systemd-analyze verify` accepts `ringkv.service` (where systemd is
//! installed; CI=true requires it).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{BIN, eventually, free_port};

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name)
}

fn run(args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(out.status.success(), "ringkv {args:?}: {out:?}");
}

#[test]
fn the_example_config_starts_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(deploy_file("ringkv.toml")).unwrap();
    let mut config: toml::Table = toml::from_str(&text).unwrap();
    let certs = dir.path().join("tls");
    let certs_dir = certs.to_str().unwrap();
    run(&["cert", "create-ca", "--dir", certs_dir]);
    run(&[
        "cert",
        "create-node",
        "--dir",
        certs_dir,
        "--name",
        "node1",
        "--host",
        "127.0.0.1",
    ]);
    run(&["cert", "revoke", "--dir", certs_dir]);
    let password = dir.path().join("client-password");
    std::fs::write(&password, "a password for the example").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // Only what names this machine changes; every other key is the
    // example's own.
    let mut here = |key: &str, value: String| {
        let old = config.insert(key.to_string(), toml::Value::String(value));
        assert!(old.is_some(), "the example sets {key}");
    };
    let file = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let http = format!("127.0.0.1:{}", free_port());
    here("data-dir", dir.path().join("data").to_str().unwrap().into());
    here("peer-addr", format!("127.0.0.1:{}", free_port()));
    here("http-addr", http.clone());
    here("resp-addr", format!("127.0.0.1:{}", free_port()));
    here("peer-tls-cert-file", file("node1.crt"));
    here("peer-tls-key-file", file("node1.key"));
    here("peer-tls-ca-file", file("ca.crt"));
    here("peer-tls-crl-file", file("crl.pem"));
    here("client-password-file", password.to_str().unwrap().into());
    let path = dir.path().join("ringkv.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();

    let mut server = Command::new(BIN)
        .args(["server", "--config", path.to_str().unwrap()])
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://{http}");
    let client = ringkv_client::Client::with_password(&url, Some("a password for the example"));
    let served = (|| -> Result<(), String> {
        eventually("the node to serve", Duration::from_secs(30), || {
            if let Ok(Some(status)) = server.try_wait() {
                panic!("the server exited with {status}");
            }
            client.cluster_status().ok()
        });
        client
            .put("b", b"k", b"v", "text/plain", None, None)
            .map_err(|e| e.to_string())?;
        // The password is asked for.
        let refused = ringkv_client::Client::new(&url).get("b", b"k", None);
        match refused {
            Err(e) if e.to_string().contains("unauthorized") => Ok(()),
            other => Err(format!("a client without the password got {other:?}")),
        }
    })();
    let _ = server.kill();
    let output = server.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    if let Err(e) = served {
        panic!("{e}; server log:\n{log}");
    }
    assert!(log.contains("serving"), "{log}");
}

#[test]
fn systemd_accepts_the_example_unit() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        let message = "systemd-analyze is not installed (Debian package systemd)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}; CI=true requires this test to run");
        }
        eprintln!("SKIPPED: {message}");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(deploy_file("ringkv.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/ringkv server --config"));
    // The binary this test built stands in for the installed one.
    let unit = unit.replace("/usr/local/bin/ringkv", BIN);
    let path = dir.path().join("ringkv.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {out:?}"
    );
}
