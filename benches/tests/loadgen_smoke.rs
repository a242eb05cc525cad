//! The load generator runs end to end (every workload, h1 and h2, direct, through
//! both ledger sync modes and through every peer: the bare tunnel, Squid ssl-bump and
//! mitmproxy) without a failed request, and prints the ratios. Speed is not asserted:
//! it is printed, and read as ratios. A missing peer fails the test: tests/run.sh
//! installs squid-openssl and the mitmproxy venv.
#![allow(clippy::unwrap_used)]

fn loadgen(extra: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-loadgen"))
        .args(["--proxy-bin"])
        .arg(portcullis_tests::portcullis_bin())
        .args(extra)
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

fn all_workloads(extra: &[&str]) -> String {
    let mut args = vec![
        "--duration",
        "0.5",
        "--conns",
        "2",
        "--workload",
        "all",
        "--peers",
        "all",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

/// The lines whose first word is `label` (a target's figures or its skip notice).
fn lines_of<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.split_whitespace().next() == Some(label))
        .collect()
}

/// `label` ran `runs` workloads, none with a failed request or no request at all.
fn assert_ran(text: &str, label: &str, runs: usize) {
    let lines: Vec<&str> = lines_of(text, label)
        .into_iter()
        .filter(|l| l.contains("req/s"))
        .collect();
    assert_eq!(lines.len(), runs, "one {label} line per workload:\n{text}");
    for l in lines {
        assert!(l.contains("errors 0"), "{l}\n{text}");
        assert!(!l.contains(" 0 req/s"), "{l}\n{text}");
    }
}

fn assert_skipped(text: &str, label: &str, runs: usize) {
    let skipped = lines_of(text, label)
        .into_iter()
        .filter(|l| l.contains("skipped:"))
        .count();
    assert_eq!(skipped, runs, "{label} skipped {runs} workloads:\n{text}");
}

fn assert_ratio_rows(text: &str, rows: &[&str]) {
    assert!(text.contains("ratio A/B"), "{text}");
    for row in rows {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(row)
                    && l.split_whitespace()
                        .nth(1)
                        .is_some_and(|v| v.ends_with('x'))),
            "no {row} ratio row:\n{text}"
        );
    }
}

fn assert_clean(text: &str) {
    assert!(!text.contains("first error"), "{text}");
    assert!(text.contains("proxy CPU"), "{text}");
    assert!(text.contains("minted hosts"), "{text}");
}

#[test]
fn the_load_generator_runs_every_workload_over_http1_direct_through_the_proxy_and_every_peer() {
    let text = all_workloads(&[]);
    // Minting has no direct run and no tunnel run: four lines each, five per proxy.
    assert_ran(&text, "direct", 4);
    assert_ran(&text, "tunnel", 4);
    assert_skipped(&text, "tunnel", 1);
    for label in ["sync=always", "sync=batch", "squid", "mitmproxy"] {
        assert_ran(&text, label, 5);
    }
    assert_clean(&text);
    assert_ratio_rows(
        &text,
        &[
            "always/direct",
            "batch/direct",
            "always/tunnel",
            "always/squid",
            "always/mitmproxy",
            "batch/squid",
            "batch/mitmproxy",
            "tunnel/direct",
            "squid/direct",
            "mitmproxy/direct",
        ],
    );
}

#[test]
fn the_load_generator_runs_every_workload_over_http2_and_says_squid_is_skipped() {
    let text = all_workloads(&["--h2"]);
    assert_ran(&text, "direct", 4);
    assert_ran(&text, "tunnel", 4);
    for label in ["sync=always", "sync=batch", "mitmproxy"] {
        assert_ran(&text, label, 5);
    }
    assert_skipped(&text, "squid", 5);
    assert_clean(&text);
    assert_ratio_rows(&text, &["always/mitmproxy", "batch/tunnel"]);
}

#[test]
fn the_idle_workload_holds_every_connection_through_each_proxy_and_reports_memory_each() {
    let text = loadgen(&["--conns", "40", "--workload", "idle", "--peers", "all"]);
    for label in ["sync=always", "sync=batch", "tunnel", "squid", "mitmproxy"] {
        assert!(
            lines_of(&text, label)
                .iter()
                .any(|l| l.contains(" 40 idle connections") && l.contains("KiB each")),
            "{label}:\n{text}"
        );
    }
    assert!(!text.contains("failed to open"), "{text}");
    assert!(
        lines_of(&text, "always/squid")
            .iter()
            .any(|l| l.contains("KiB each")),
        "{text}"
    );
}

#[test]
fn an_unknown_peer_is_refused_with_the_list_of_known_ones() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-loadgen"))
        .args(["--peers", "nginx"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tunnel, squid, mitmproxy or all"), "{err}");
}

#[test]
fn a_missing_peer_fails_the_run_instead_of_being_skipped() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-loadgen"))
        .arg("--proxy-bin")
        .arg(portcullis_tests::portcullis_bin())
        .args([
            "--peers",
            "mitmproxy",
            "--mitmdump-bin",
            "/nonexistent/mitmdump",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/mitmdump not found"), "{err}");
}
