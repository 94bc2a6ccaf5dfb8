//! `ringkv dev-cluster`: starts N real `ringkv server` processes on
//! 127.0.0.1, waits until they agree on the layout, prints how to reach
//! them, and stops every one of them (by pid, the processes it started) on
//! Ctrl-C or SIGTERM. A node that dies (killed to try a failure, or after `cluster
//! leave`) leaves the others serving: it prints the command that restarts
//! it, and ends once every node it started has exited.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use ringkv_client::Client;
use tokio::process::{Child, Command};

#[derive(Args)]
pub struct DevClusterArgs {
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Each node keeps its data in DIR/nodeI and logs to DIR/nodeI.log.
    #[arg(long, default_value = "ringkv-dev")]
    data_dir: PathBuf,
    /// Node I (from 0) serves HTTP on this port + I.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Node I serves RESP on this port + I.
    #[arg(long, default_value_t = 6380)]
    resp_port: u16,
    /// Node I talks to peers on this port + I.
    #[arg(long, default_value_t = 7070)]
    peer_port: u16,
    /// TLS everywhere: makes a CA in DIR/certs (kept across runs) and a
    /// certificate per node, and starts the nodes with peer TLS and client
    /// TLS (HTTPS, RESP over TLS).
    #[arg(long)]
    tls: bool,
}

pub fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 32 {
        bail!("--nodes must be between 1 and 32");
    }
    let runtime = tokio::runtime::Runtime::new().context("while starting the runtime")?;
    runtime.block_on(run_cluster(args))
}

struct DevNode {
    name: String,
    http: String,
    resp: String,
    /// The command line that starts it again, for the user to copy.
    command_line: String,
    child: Child,
    exited: bool,
}

async fn run_cluster(args: DevClusterArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("while locating the ringkv binary")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("while creating {}", args.data_dir.display()))?;
    let first_peer = format!("127.0.0.1:{}", args.peer_port);
    let certs = args.data_dir.join("certs");
    if args.tls && !certs.join("ca.crt").exists() {
        crate::cert::create_ca(&certs)?;
    }
    // A CRL that revokes nothing yet: `ringkv cert revoke` adds to it.
    if args.tls && !certs.join("crl.pem").exists() {
        crate::cert::revoke(&certs, &[])?;
    }
    let mut nodes: Vec<DevNode> = Vec::new();
    for i in 0..args.nodes {
        let name = format!("node{}", i + 1);
        let port = |base: u16| -> anyhow::Result<String> {
            let port = base.checked_add(i).context("port out of range")?;
            Ok(format!("127.0.0.1:{port}"))
        };
        let (http, resp, peer) = (
            port(args.http_port)?,
            port(args.resp_port)?,
            port(args.peer_port)?,
        );
        let log_path = args.data_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("while opening {}", log_path.display()))?;
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(args.data_dir.join(&name))
            .args([
                "--peer-addr",
                &peer,
                "--http-addr",
                &http,
                "--resp-addr",
                &resp,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if i > 0 {
            command.args(["--join", &first_peer]);
        }
        if args.tls {
            crate::cert::create_node(&certs, &name, &["127.0.0.1".to_string()])?;
            let (cert, key) = (
                certs.join(format!("{name}.crt")),
                certs.join(format!("{name}.key")),
            );
            command
                .arg("--peer-tls-cert-file")
                .arg(&cert)
                .arg("--peer-tls-key-file")
                .arg(&key)
                .arg("--peer-tls-ca-file")
                .arg(certs.join("ca.crt"))
                .arg("--peer-tls-crl-file")
                .arg(certs.join("crl.pem"))
                .arg("--client-tls-cert-file")
                .arg(&cert)
                .arg("--client-tls-key-file")
                .arg(&key);
        }
        let command_line = std::iter::once(exe.display().to_string())
            .chain(
                command
                    .as_std()
                    .get_args()
                    .map(|arg| arg.to_string_lossy().into_owned()),
            )
            .collect::<Vec<_>>()
            .join(" ");
        let child = command
            .spawn()
            .with_context(|| format!("while starting {name}"))?;
        nodes.push(DevNode {
            name,
            http,
            resp,
            command_line,
            child,
            exited: false,
        });
    }
    let result = wait_until_ready(&mut nodes, &args).await;
    if let Err(e) = result {
        stop(&mut nodes).await;
        return Err(e);
    }
    print_tour(&nodes, &args);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("while setting up the SIGTERM handler")?;
    let outcome = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
            (index, status) = next_exit(&mut nodes) => {
                let node = &nodes[index];
                let log = args.data_dir.join(format!("{}.log", node.name));
                if status.success() {
                    // It stopped cleanly: it left the cluster, or was asked to stop.
                    eprintln!("{} stopped; the others keep serving (see {}).", node.name, log.display());
                } else {
                    eprintln!(
                        "{} exited ({status}); the others keep serving (see {}). To start it again, in another terminal (Ctrl-C here will not stop it):\n  {}",
                        node.name,
                        log.display(),
                        node.command_line
                    );
                }
                if nodes.iter().all(|node| node.exited) {
                    break Err(anyhow::anyhow!(
                        "every node has exited; see the logs under {}",
                        args.data_dir.display()
                    ));
                }
            }
        }
    };
    eprintln!("stopping the dev cluster");
    stop(&mut nodes).await;
    outcome
}

/// Waits until a node not seen exiting yet exits; marks it and returns its
/// index and exit status.
async fn next_exit(nodes: &mut [DevNode]) -> (usize, std::process::ExitStatus) {
    loop {
        for (index, node) in nodes.iter_mut().enumerate() {
            if !node.exited
                && let Ok(Some(status)) = node.child.try_wait()
            {
                node.exited = true;
                return (index, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop(nodes: &mut [DevNode]) {
    for node in nodes.iter_mut() {
        if let Some(pid) = node.child.id() {
            // SIGTERM first: the node stops cleanly; kill after a grace period.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for node in nodes.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
}

/// Waits until every node answers and all report the same layout with every member.
async fn wait_until_ready(nodes: &mut [DevNode], args: &DevClusterArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let urls: Vec<String> = nodes.iter().map(|n| url(args, &n.http)).collect();
    let ca = if args.tls {
        Some(std::fs::read(args.data_dir.join("certs").join("ca.crt"))?)
    } else {
        None
    };
    let expected = nodes.len();
    loop {
        for node in nodes.iter_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                bail!(
                    "{} exited during start-up ({status}); see {}",
                    node.name,
                    args.data_dir.join(format!("{}.log", node.name)).display()
                );
            }
        }
        let (urls, ca) = (urls.clone(), ca.clone());
        let agreed = tokio::task::spawn_blocking(move || {
            let mut versions = Vec::new();
            for url in &urls {
                let client = match &ca {
                    None => Client::new(url),
                    Some(ca) => Client::with_tls(url, None, ca, None).ok()?,
                };
                let status = client.cluster_status().ok()?;
                let members = status["members"].as_array()?.len();
                if members != expected {
                    return None;
                }
                versions.push(status["layout_version"].as_u64()?);
            }
            versions.windows(2).all(|w| w[0] == w[1]).then_some(())
        })
        .await?;
        if agreed.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes did not agree on a layout within 60 s; see the logs under {}",
                args.data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The base URL of a node serving HTTP (or HTTPS, with `--tls`) on `addr`.
fn url(args: &DevClusterArgs, addr: &str) -> String {
    let scheme = if args.tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

fn print_tour(nodes: &[DevNode], args: &DevClusterArgs) {
    println!(
        "ringkv dev cluster: {} nodes, data and logs under {}",
        nodes.len(),
        args.data_dir.display()
    );
    for node in nodes {
        println!(
            "  {:<7} {}  resp {}  pid {}",
            node.name,
            url(args, &node.http),
            node.resp,
            node.child.id().unwrap_or(0)
        );
    }
    let first = &nodes[0];
    let last = &nodes[nodes.len() - 1];
    let resp_port = |addr: &str| addr.rsplit(':').next().unwrap_or("6380").to_string();
    let ca = args.data_dir.join("certs").join("ca.crt");
    let (curl, redis, cli) = if args.tls {
        (
            format!("curl --cacert {} ", ca.display()),
            format!(" --tls --cacert {}", ca.display()),
            format!(" --cacert {}", ca.display()),
        )
    } else {
        ("curl ".to_string(), String::new(), String::new())
    };
    println!();
    if args.tls {
        println!(
            "TLS between the nodes and for clients; the CA is {}",
            ca.display()
        );
        let certs = args.data_dir.join("certs");
        println!(
            "revoke a node's certificate (the others cut it off within seconds): cargo run --release -- cert revoke --dir {} {}",
            certs.display(),
            certs.join(format!("{}.crt", last.name)).display()
        );
    }
    println!("try:");
    println!(
        "  {curl}-i -XPUT {}/v1/kv/demo/hello -H 'content-type: text/plain' -d 'world'",
        url(args, &first.http)
    );
    println!("  {curl}-i {}/v1/kv/demo/hello", url(args, &last.http));
    println!(
        "  redis-cli -p {}{redis} set greeting hi",
        resp_port(&first.resp)
    );
    println!(
        "  redis-cli -p {}{redis} get greeting",
        resp_port(&last.resp)
    );
    println!(
        "  cargo run --release -- cluster status --url {}{cli}",
        url(args, &first.http)
    );
    println!();
    println!("Ctrl-C stops every node.");
}
