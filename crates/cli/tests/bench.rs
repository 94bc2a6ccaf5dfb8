//! `ringkv bench` against one real `ringkv server`: over HTTP and RESP, the
//! JSON report counts exactly the operations asked for, with no errors and
//! ordered percentiles. No speed is asserted.

mod support;

use std::process::Command;

use ringkv_client::GetResult;
use serde_json::{Value, json};
use support::{BIN, Cluster};

/// Flags every run shares: 2000 recorded operations after a 1 s warm-up.
const COMMON: &str = "--ops 2000 --warmup-s 1 --duration-s 120 --timeout-ms 10000 --json";

/// Runs `ringkv bench` with whitespace-separated `args` and parses its one JSON object.
fn bench(args: &str) -> Value {
    let output = Command::new(BIN)
        .arg("bench")
        .args(args.split_whitespace())
        .output()
        .expect("run ringkv bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ringkv bench {args} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {stderr}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

/// Exactly `ops` operations recorded after the warm-up, all successful, with ordered percentiles.
fn assert_clean_run(report: &Value, ops: u64, kinds: &[&str]) {
    assert_eq!(report["ops"], ops, "{report}");
    assert_eq!(report["ops_ok"], ops, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["errors_by_kind"], json!({}), "{report}");
    assert_eq!(report["late_unsent"], 0, "{report}");
    assert!(
        report["throughput_ops_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["latency_us"]["total"]["count"], ops, "{report}");
    // Every operation costs the load generator some CPU, and far less
    // than the 0.1 s that would make these short runs take minutes.
    let client_cpu = report["client_cpu_us_per_op"].as_f64().unwrap();
    assert!(client_cpu > 0.0 && client_cpu < 100_000.0, "{report}");
    for kind in kinds {
        let latency = &report["latency_us"][kind];
        let at = |field: &str| {
            latency[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{kind}.{field}: {report}"))
        };
        let (p50, p90, p99, p999, max) = (
            at("p50_us"),
            at("p90_us"),
            at("p99_us"),
            at("p999_us"),
            at("max_us"),
        );
        assert!(
            p50 >= 1 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
            "{kind}: {latency}"
        );
    }
}

#[test]
fn bench_drives_one_node_over_http_and_resp() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let url = node.url();

    // YCSB A over HTTP with preloaded keys: every read finds its key. Its
    // updates are blind writes, so the bucket is last-writer-wins as in Redis
    // and etcd (in a `siblings` bucket hot keys would pile up siblings).
    node.client()
        .set_bucket("bench", &json!({"conflict": "lww"}))
        .unwrap();
    let report = bench(&format!(
        "--target ringkv-http --url {url} --workload a --preload --connections 8 --keys 200 {COMMON}"
    ));
    assert_clean_run(&report, 2000, &["total", "read", "write"]);
    assert_eq!(report["not_found"], 0, "{report}");
    assert_eq!(report["preload"]["keys"], 200);
    let reads = report["latency_us"]["read"]["count"].as_u64().unwrap();
    let writes = report["latency_us"]["write"]["count"].as_u64().unwrap();
    assert_eq!(reads + writes, 2000);
    assert!(
        reads > 500 && writes > 500,
        "a 50/50 mix: {reads} reads, {writes} writes"
    );

    assert!(
        report.get("slow").is_none(),
        "no --slow-ms, no slow: {report}"
    );

    // The same over RESP, requests pipelined 4 deep on each connection.
    // With --slow-ms 0 every operation counts as slow, so every one is
    // placed in a window of the run.
    let resp = &node.resp;
    let report = bench(&format!(
        "--target resp --addr {resp} --workload a --pipeline 4 --preload --connections 8 --keys 200 --slow-ms 0 {COMMON}"
    ));
    assert_clean_run(&report, 2000, &["total", "read", "write"]);
    assert_eq!(report["not_found"], 0, "{report}");
    assert_eq!(report["pipeline"], 4);
    let slow = &report["slow"];
    assert_eq!(slow["ops"], 2000, "{report}");
    let per_second: u64 = slow["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(per_second, 2000, "{report}");
    let windows = slow["windows"].as_u64().unwrap();
    let with_slow = slow["windows_with_slow"].as_u64().unwrap();
    assert!(with_slow >= 1 && with_slow <= windows, "{report}");
    let by_window = slow["by_window"].as_array().unwrap();
    assert_eq!(by_window.len() as u64, with_slow, "{report}");
    let placed: u64 = by_window.iter().map(|w| w[1].as_u64().unwrap()).sum();
    assert_eq!(placed, 2000, "{report}");
    let start = slow["start_unix_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(start <= now && now - start < 60_000, "{report}");

    // Read-modify-write carries the read's context: in a `siblings` bucket,
    // concurrent writers to a few hot keys leave at most one sibling per
    // writer, never a pile that would end in 409 too_many_siblings.
    let report = bench(&format!(
        "--target ringkv-http --url {url} --workload rmw --bucket rmw --keys 5 --connections 4 {COMMON}"
    ));
    assert_clean_run(&report, 2000, &["total", "rmw", "read", "write"]);
    assert_eq!(report["latency_us"]["rmw"]["count"], 2000);
    match node.client().get("rmw", b"user0", None).unwrap() {
        GetResult::Found { .. } => {}
        GetResult::Siblings { siblings, .. } => {
            assert!(siblings.len() <= 4, "{} siblings", siblings.len())
        }
        other => panic!("user0 was written: {other:?}"),
    }
}

#[test]
fn bench_refuses_what_it_cannot_do() {
    let run = |args: &str| {
        let output = Command::new(BIN)
            .arg("bench")
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(!output.status.success(), "ringkv bench {args} should fail");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(run("--target ringkv-http --pipeline 2 --ops 1").contains("--pipeline"));
    // Nothing listens there: one clear error, not a run full of connection errors.
    let port = support::free_port();
    let stderr = run(&format!("--target resp --addr 127.0.0.1:{port} --ops 1"));
    assert!(stderr.contains("while connecting"), "{stderr}");
}

/// Against a node with a client password, `--password` makes every
/// operation pass, over HTTP and RESP; without it each one fails.
#[test]
fn bench_gives_the_client_password() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::node_with_password(dir.path(), "open-sesame-42");
    node.client()
        .set_bucket("bench", &json!({"conflict": "lww"}))
        .unwrap();
    let http = format!("--target ringkv-http --url {}", node.url());
    let resp = format!("--target resp --addr {}", node.resp);
    for target in [&http, &resp] {
        let report = bench(&format!(
            "{target} --workload a --connections 4 --password open-sesame-42 {COMMON}"
        ));
        assert_clean_run(&report, 2000, &["read", "write"]);
        let report = bench(&format!(
            "{target} --workload c --connections 2 --ops 50 --warmup-s 0 --duration-s 5 --json"
        ));
        assert_eq!(report["ops_ok"], 0, "{report}");
        assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    }
}
