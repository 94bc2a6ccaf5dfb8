//! DESIGN §2: the core has no dependency on tokio, sockets or other I/O
//! crates, directly or transitively.

#[test]
fn core_depends_on_no_runtime_or_network_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let output = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "ringkv-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"ringkv-core"),
        "unexpected cargo tree output: {tree}"
    );
    for forbidden in [
        "tokio",
        "mio",
        "socket2",
        "async-std",
        "hyper",
        "axum",
        "redb",
        "rand",
        "getrandom",
    ] {
        assert!(
            !crates.contains(&forbidden),
            "ringkv-core depends on {forbidden}:\n{tree}"
        );
    }
    // std::net is part of std, so check the source instead.
    let core_src = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/src");
    let mut stack = vec![std::path::PathBuf::from(core_src)];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for forbidden in [
                "std::net",
                "std::fs",
                "std::thread",
                "SystemTime",
                "Instant::now",
                "std::time::Instant",
            ] {
                assert!(
                    !text.contains(forbidden),
                    "{} uses {forbidden}",
                    path.display()
                );
            }
        }
    }
}
