//! `ringkv bench` against one real `ringkv server`: over HTTP and RESP, the
//! JSON report counts exactly the operations asked for, with no errors and
//! ordered percentiles. No speed is asserted.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{BIN, Cluster};

fn bench(args: &[&str]) -> Value {
    let output = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--json", "--duration-s", "120", "--timeout-ms", "10000"])
        .output()
        .expect("run ringkv bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ringkv bench {args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {stderr}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

/// The report recorded exactly `ops` operations after the warm-up, all successful, with sane percentiles.
fn assert_clean_run(report: &Value, ops: u64, kinds: &[&str]) {
    assert_eq!(report["ops"], ops, "{report}");
    assert_eq!(report["ops_ok"], ops, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["errors_by_kind"], serde_json::json!({}), "{report}");
    assert_eq!(report["late_unsent"], 0, "{report}");
    assert!(
        report["throughput_ops_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    for kind in kinds {
        let latency = &report["latency_us"][kind];
        let (p50, p90, p99, p999, max) = (
            latency["p50_us"].as_u64().unwrap(),
            latency["p90_us"].as_u64().unwrap(),
            latency["p99_us"].as_u64().unwrap(),
            latency["p999_us"].as_u64().unwrap(),
            latency["max_us"].as_u64().unwrap(),
        );
        assert!(
            p50 >= 1 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
            "{kind}: {latency}"
        );
    }
    assert_eq!(report["latency_us"]["total"]["count"], ops, "{report}");
}

#[test]
fn bench_drives_one_node_over_http_and_resp() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let url = node.url();

    // YCSB A over HTTP with preloaded keys: every read finds its key.
    let common = [
        "--ops",
        "2000",
        "--warmup-s",
        "1",
        "--connections",
        "8",
        "--keys",
        "200",
    ];
    let report = bench(
        &[
            &[
                "--target",
                "ringkv-http",
                "--url",
                &url,
                "--workload",
                "a",
                "--preload",
            ],
            &common[..],
        ]
        .concat(),
    );
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

    // The same over RESP, with requests pipelined on each connection.
    let resp = node.resp.clone();
    let report = bench(
        &[
            &[
                "--target",
                "resp",
                "--addr",
                &resp,
                "--workload",
                "a",
                "--pipeline",
                "4",
                "--preload",
            ],
            &common[..],
        ]
        .concat(),
    );
    assert_clean_run(&report, 2000, &["total", "read", "write"]);
    assert_eq!(report["not_found"], 0, "{report}");
    assert_eq!(report["pipeline"], 4);

    // Read-modify-write carries the read's context: concurrent writers to a
    // few hot keys leave at most one sibling per writer, never a pile that
    // would end in 409 too_many_siblings.
    let report = bench(
        &[
            &[
                "--target",
                "ringkv-http",
                "--url",
                &url,
                "--workload",
                "rmw",
                "--keys",
                "5",
            ],
            &["--ops", "2000", "--warmup-s", "0", "--connections", "4"][..],
        ]
        .concat(),
    );
    assert_clean_run(&report, 2000, &["total", "rmw", "read", "write"]);
    assert_eq!(report["latency_us"]["rmw"]["count"], 2000);
    match node.client().get("bench", b"user0", None).unwrap() {
        ringkv_client::GetResult::Found { .. } => {}
        ringkv_client::GetResult::Siblings { siblings, .. } => {
            assert!(siblings.len() <= 4, "{} siblings", siblings.len())
        }
        other => panic!("user0 was written: {other:?}"),
    }
}

#[test]
fn bench_refuses_what_it_cannot_do() {
    let output = Command::new(BIN)
        .args([
            "bench",
            "--target",
            "ringkv-http",
            "--pipeline",
            "2",
            "--ops",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--pipeline"));
    // Nothing listens on this port: a clear error, not a run full of connection errors.
    let port = support::free_port();
    let output = Command::new(BIN)
        .args([
            "bench",
            "--target",
            "resp",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--ops",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("while connecting"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
