//! The ledger is content-free: no key of any line it writes can carry a body, prompt, header
//! value, query string or secret. The allowlist is hard-coded here on purpose, so adding a
//! field to a record needs a deliberate edit of this test.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::*;
use portcullis_ledger::format::ALLOWED_FIELDS;
use portcullis_ledger::{Ledger, LedgerOptions};

const ALLOWLIST: &[&str] = &[
    "seq",
    "ts",
    "event_id",
    "kind",
    "prev",
    "hash",
    "tenant",
    "agent",
    "listener",
    "dest_host",
    "dest_port",
    "method",
    "path_template",
    "provider",
    "model",
    "operation",
    "stream",
    "decision",
    "reason",
    "rule_id",
    "policy_generation",
    "policy_hash",
    "detectors",
    "narrowed",
    "key_id",
    "approver",
    "peer",
    "count",
    "status",
    "tokens_in",
    "tokens_out",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "end",
    "source",
    "replica",
    "segment",
    "head_seq",
    "head_hash",
    "signature",
    "file",
    "bytes_dropped",
    "refused",
    "down_since",
    "version",
    "first_seq",
];

const FORBIDDEN: &[&str] = &[
    "body",
    "prompt",
    "content",
    "header",
    "query",
    "key",
    "token",
    "secret",
    "authorization",
];
const EXCEPTIONS: &[&str] = &["key_id", "tokens_in", "tokens_out"];

fn could_carry_content(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !EXCEPTIONS.contains(&name) && FORBIDDEN.iter().any(|f| lower.contains(f))
}

fn collect_keys(value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.insert(k.clone());
                collect_keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_keys(v, out)),
        _ => {}
    }
}

#[test]
fn the_allowlist_has_no_name_that_could_carry_content() {
    for name in ALLOWLIST {
        assert!(!could_carry_content(name), "{name} could carry content");
    }
    let exported: BTreeSet<_> = ALLOWED_FIELDS.iter().collect();
    let here: BTreeSet<_> = ALLOWLIST.iter().collect();
    assert_eq!(
        exported, here,
        "format::ALLOWED_FIELDS drifted from this test's allowlist"
    );
}

#[test]
fn the_content_check_catches_the_obvious_names() {
    for name in [
        "request_body",
        "prompt",
        "header_value",
        "query",
        "api_key",
        "auth_token",
        "secret",
        "authorization",
    ] {
        assert!(could_carry_content(name), "{name}");
    }
}

#[tokio::test]
async fn every_record_kind_written_uses_only_allowlisted_keys() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        segment_max_bytes: 1500,
        ..opts(tmp.path())
    };
    let dir = opts.dir.clone();
    let ledger = Ledger::open(opts.clone()).await.expect("open");
    ledger.append_config(config()).await.expect("config");
    for i in 0..3 {
        ledger.append_decision(decision(i)).await.expect("decision");
        ledger.append_outcome(outcome(i)).await.expect("outcome");
    }
    ledger.shutdown().await.expect("shutdown");
    // A torn tail, so that a recovery record is written too.
    let last = segments(&dir).pop().expect("segment");
    let mut bytes = fs::read(&last).expect("read");
    bytes.extend_from_slice(b"{\"seq\":99,");
    rewrite(&last, &bytes);
    let ledger = Ledger::open(opts).await.expect("reopen");
    ledger.append_decision(decision(9)).await.expect("decision");
    ledger.shutdown().await.expect("shutdown");

    let mut kinds = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut files = segments(&dir);
    files.push(dir.join("checkpoints.log"));
    for file in files {
        for line in lines(&file) {
            let value: serde_json::Value = serde_json::from_str(&line).expect("json");
            kinds.insert(value["kind"].as_str().unwrap_or_default().to_owned());
            collect_keys(&value, &mut keys);
        }
    }
    let expected_kinds: BTreeSet<String> = [
        "segment",
        "decision",
        "outcome",
        "config",
        "checkpoint",
        "recovery",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(kinds, expected_kinds, "every record kind was exercised");
    for key in &keys {
        assert!(
            ALLOWLIST.contains(&key.as_str()),
            "key {key:?} is not in the allowlist"
        );
        assert!(!could_carry_content(key), "key {key:?} could carry content");
    }
}
