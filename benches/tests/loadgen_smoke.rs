//! The load generator runs end to end (every workload, h1 and h2, direct and
//! through both ledger sync modes) without a failed request. Speed is not
//! asserted: it is printed, and read as ratios.
#![allow(clippy::unwrap_used)]

fn loadgen(extra: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-loadgen"))
        .args(["--duration", "0.5", "--conns", "2", "--workload", "all"])
        .args(extra)
        .arg("--proxy-bin")
        .arg(portcullis_tests::portcullis_bin())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn assert_clean(text: &str) {
    // Minting has no direct run: four direct lines, five per proxy.
    for (label, runs) in [("direct", 4), ("sync=always", 5), ("sync=batch", 5)] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(label))
            .collect();
        assert_eq!(lines.len(), runs, "one {label} line per workload:\n{text}");
        for l in lines {
            assert!(l.contains("errors 0"), "{l}\n{text}");
            assert!(!l.contains(" 0 req/s"), "{l}\n{text}");
        }
    }
    assert!(!text.contains("first error"), "{text}");
    assert!(text.contains("minted hosts"), "{text}");
    assert!(text.contains("proxy CPU"), "{text}");
    assert!(text.contains("minted hosts"), "{text}");
}

#[test]
fn the_load_generator_runs_every_workload_over_http1_direct_and_through_the_proxy() {
    assert_clean(&loadgen(&[]));
}

#[test]
fn the_load_generator_runs_every_workload_over_http2() {
    assert_clean(&loadgen(&["--h2"]));
}

#[test]
fn the_idle_workload_holds_every_connection_and_reports_memory_per_connection() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-loadgen"))
        .args(["--conns", "40", "--workload", "idle", "--proxy-bin"])
        .arg(portcullis_tests::portcullis_bin())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    for sync in ["always", "batch"] {
        assert!(
            text.lines().any(|l| l.contains(&format!("sync={sync}"))
                && l.contains(" 40 idle connections")
                && l.contains("KiB each")),
            "{text}"
        );
    }
    assert!(!text.contains("failed to open"), "{text}");
}
