//! Shared helpers: options in a temp dir, fully populated facts, and byte-level file edits
//! the way an attacker (or a crash) would make them.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_ledger::format;
use portcullis_ledger::{ConfigFacts, DecisionFacts, Ledger, LedgerOptions, OutcomeFacts};

/// Options for a ledger in `root/ledger` with its key in `root/ca`. Time-based checkpoints
/// are pushed far out so that tests decide exactly when checkpoints happen.
pub fn opts(root: &Path) -> LedgerOptions {
    LedgerOptions {
        dir: root.join("ledger"),
        signing_key_path: root.join("ca").join("ledger-signing.key"),
        checkpoint_interval: Duration::from_secs(3600),
        ..LedgerOptions::default()
    }
}

/// A decision with every field set, so every key shows up.
pub fn decision(i: u64) -> DecisionFacts {
    DecisionFacts {
        event_id: format!("{i:032x}"),
        tenant: Some("acme".into()),
        agent: Some("agent-1".into()),
        listener: "forward".into(),
        dest_host: "api.openai.com".into(),
        dest_port: 443,
        method: Some("POST".into()),
        path_template: Some("/v1/chat/completions".into()),
        provider: Some("openai".into()),
        model: Some("gpt-4o".into()),
        operation: Some("chat".into()),
        stream: Some(true),
        decision: "allow".into(),
        reason: "route_matched".into(),
        rule_id: Some("r-openai".into()),
        policy_generation: 3,
        policy_hash: "sha256:0f0e".into(),
        detectors: vec!["secrets:aws_key".into()],
        narrowed: vec!["max_tokens".into()],
        key_id: Some("openai-main".into()),
        approver: None,
        peer: Some("192.0.2.7".into()),
        count: Some(3),
    }
}

pub fn outcome(i: u64) -> OutcomeFacts {
    OutcomeFacts {
        event_id: format!("{i:032x}"),
        tenant: Some("acme".into()),
        agent: Some("agent-1".into()),
        dest_host: "api.openai.com".into(),
        status: Some(200),
        tokens_in: Some(12),
        tokens_out: Some(34),
        bytes_in: 1000,
        bytes_out: 2000,
        duration_ms: 15,
        end: "complete".into(),
        policy_generation: 3,
        policy_hash: "sha256:0f0e".into(),
    }
}

pub fn config() -> ConfigFacts {
    ConfigFacts {
        event_id: portcullis_ledger::new_event_id(),
        policy_generation: 3,
        policy_hash: "sha256:0f0e".into(),
        source: "startup".into(),
    }
}

/// Open, append `n` decisions, and optionally shut down (which writes a final checkpoint).
pub async fn build(opts: LedgerOptions, n: u64, shutdown: bool) -> Ledger {
    let ledger = Ledger::open(opts).await.expect("open");
    for i in 0..n {
        ledger.append_decision(decision(i)).await.expect("append");
    }
    if shutdown {
        ledger.shutdown().await.expect("shutdown");
    }
    ledger
}

pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(format::parse_segment_file_name)
                .is_some()
        })
        .collect();
    out.sort();
    out
}

pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Overwrite a (possibly sealed, read-only) file, then seal it again if it was.
pub fn rewrite(path: &Path, bytes: &[u8]) {
    let readonly = fs::metadata(path).expect("meta").permissions().readonly();
    fs::set_permissions(path, fs::Permissions::from_mode(0o640)).expect("chmod");
    fs::write(path, bytes).expect("write");
    if readonly {
        fs::set_permissions(path, fs::Permissions::from_mode(0o444)).expect("chmod");
    }
}

pub fn rewrite_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    rewrite(path, text.as_bytes());
}

/// Recompute a line's own hash after editing it (keeping its `prev`), as a forger would.
pub fn rehash(line: &str) -> String {
    let n = line.len();
    let body = format!("{}}}", &line[..n - 75]);
    let prev_at = body.rfind("\"prev\":\"").expect("prev") + 8;
    let prev = format::decode_hash(&body.as_bytes()[prev_at..prev_at + 64]).expect("prev hex");
    let hash = format::chain_hash(&prev, body.as_bytes());
    format!("{},\"hash\":\"{}\"}}", &line[..n - 75], hex::encode(hash))
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("meta").permissions().mode() & 0o777
}
