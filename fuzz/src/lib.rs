//! Helpers shared by the fuzz targets: the fixed keys the committed fixtures were made
//! with, splitting a fuzz input into chunks, and the ledger "forger" (an attacker who
//! rewrites a ledger and recomputes every hash, and, holding the signing key, every
//! checkpoint signature), so that the verifier is fuzzed past its hash checks.

#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use portcullis_ledger::format::{self, CheckpointRecord};

/// The Ed25519 seed that signed `fixtures/ledger` (test only, never a real key).
pub const LEDGER_SEED_HEX: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// The master key of `fixtures/vault.json` (test only, never a real key).
pub const VAULT_KEY_B64: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// The committed valid ledger: its segments in order, and its `checkpoints.log`.
pub const LEDGER_SEGMENTS: [&[u8]; 3] = [
    include_bytes!("../fixtures/ledger/segment-00000001.jsonl"),
    include_bytes!("../fixtures/ledger/segment-00000002.jsonl"),
    include_bytes!("../fixtures/ledger/segment-00000003.jsonl"),
];
pub const LEDGER_CHECKPOINTS: &[u8] = include_bytes!("../fixtures/ledger/checkpoints.log");
pub const LEDGER_PUBKEY: &[u8] = include_bytes!("../fixtures/ledger/pubkey");
/// The committed valid vault, and the secrets it holds.
pub const VAULT_FILE: &str = include_str!("../fixtures/vault.json");

pub fn ledger_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    // invariant: LEDGER_SEED_HEX is 64 hex digits.
    let _ = hex::decode_to_slice(LEDGER_SEED_HEX, &mut seed);
    SigningKey::from_bytes(&seed)
}

/// Splits `data` at the cut points that `cuts` names (each byte a distance to the next
/// cut), so the same bytes can be fed in different chunkings.
pub fn chunk<'a>(data: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for &c in cuts {
        let at = usize::from(c).min(rest.len());
        let (head, tail) = rest.split_at(at);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// A scratch ledger directory, rewritten by each fuzz run.
pub struct LedgerDir {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub trusted: PathBuf,
}

impl LedgerDir {
    pub fn new() -> LedgerDir {
        // invariant: a fuzzing host has a writable temp dir; nothing to test without one.
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let dir = tmp.path().join("ledger");
        let trusted = tmp.path().join("trusted-checkpoint");
        LedgerDir {
            _tmp: tmp,
            dir,
            trusted,
        }
    }

    /// Replaces the ledger with `segments`, `checkpoints` and the fixture's public key.
    pub fn write(&self, segments: &[&[u8]], checkpoints: Option<&[u8]>) {
        let _ = fs::remove_dir_all(&self.dir);
        let ok = fs::create_dir_all(&self.dir).is_ok()
            && fs::write(self.dir.join(format::PUBKEY_FILE), LEDGER_PUBKEY).is_ok()
            && segments.iter().zip(1u64..).all(|(bytes, i)| {
                fs::write(self.dir.join(format::segment_file_name(i)), bytes).is_ok()
            })
            && checkpoints
                .is_none_or(|c| fs::write(self.dir.join(format::CHECKPOINTS_FILE), c).is_ok());
        assert!(ok, "writing the scratch ledger failed");
    }

    pub fn write_trusted(&self, line: &[u8]) {
        assert!(
            fs::write(&self.trusted, line).is_ok(),
            "writing the trusted checkpoint"
        );
    }
}

impl Default for LedgerDir {
    fn default() -> Self {
        LedgerDir::new()
    }
}

/// What an attacker holding the signing key makes of `segments`: every line's `prev`
/// set to the hash before it and its `hash` recomputed, every checkpoint re-signed, and
/// a `checkpoints.log` of the forged checkpoints. Lines of another shape stay as they are.
pub fn forge(segments: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let key = ledger_signing_key();
    let mut prev: Option<[u8; 32]> = None;
    let mut log = Vec::new();
    let mut out = Vec::new();
    for segment in segments {
        let mut forged = Vec::with_capacity(segment.len());
        let mut lines = segment.split(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            let last = lines.peek().is_none();
            if last {
                // The bytes after the last newline: a torn tail, kept as it is.
                forged.extend_from_slice(line);
                break;
            }
            let (line, is_checkpoint) = forge_line(line, &mut prev, &key);
            if is_checkpoint {
                log.extend_from_slice(&line);
                log.push(b'\n');
            }
            forged.extend_from_slice(&line);
            forged.push(b'\n');
        }
        out.push(forged);
    }
    (out, log)
}

const HASH_MEMBER: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex + `"}`.
const HASH_TAIL: usize = 9 + 64 + 2;
/// `"prev":"` + 64 hex + `"`.
const PREV_TAIL: usize = 8 + 64 + 1;

fn forge_line(line: &[u8], prev: &mut Option<[u8; 32]>, key: &SigningKey) -> (Vec<u8>, bool) {
    let n = line.len();
    if n < HASH_TAIL + PREV_TAIL + 1 || !line[n - HASH_TAIL..].starts_with(HASH_MEMBER) {
        return (line.to_vec(), false);
    }
    let head = &line[..n - HASH_TAIL];
    let prev_at = head.len() - PREV_TAIL;
    if !head[prev_at..].starts_with(b"\"prev\":\"") || !head.ends_with(b"\"") {
        return (line.to_vec(), false);
    }
    // The first line keeps its own `prev` (the genesis value); the rest chain on.
    let link = match *prev {
        Some(p) => p,
        None => format::decode_hash(&head[prev_at + 8..prev_at + 8 + 64]).unwrap_or([0; 32]),
    };
    let mut body = head.to_vec();
    body[prev_at + 8..prev_at + 8 + 64].copy_from_slice(hex::encode(link).as_bytes());
    body.push(b'}');
    if let Ok(mut cp) = serde_json::from_slice::<CheckpointRecord>(&body) {
        cp.prev = hex::encode(link);
        let msg =
            format::checkpoint_message(&cp.replica, cp.segment, cp.head_seq, &cp.head_hash, &cp.ts);
        cp.signature = hex::encode(key.sign(&msg).to_bytes());
        if let Ok((mut sealed, hash)) = format::seal(&cp, &link) {
            sealed.pop();
            *prev = Some(hash);
            return (sealed, true);
        }
    }
    let hash = format::chain_hash(&link, &body);
    body.pop();
    body.extend_from_slice(HASH_MEMBER);
    body.extend_from_slice(hex::encode(hash).as_bytes());
    body.extend_from_slice(b"\"}");
    *prev = Some(hash);
    (body, false)
}

/// Splits a fuzz input into up to `max` parts at NUL bytes (which no ledger line holds).
pub fn split_nul(data: &[u8], max: usize) -> Vec<&[u8]> {
    data.splitn(max, |b| *b == 0).collect()
}

/// Where a fixture file lives, for `examples/gen_fixtures.rs`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `%XX` decoded to its byte, everything else as it is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Everything a parsed config holds, in a stable text form (its maps are not printed
/// directly, as their order is random).
pub fn config_fingerprint(c: &portcullis_rules::Config) -> String {
    let p = &c.policy;
    let budgets: Vec<_> = p
        .tenants()
        .iter()
        .map(|t| (t, p.tenant_budget(t), p.tenant_webhook(t)))
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{}",
        c.listeners,
        c.admin,
        c.ca,
        c.upstream,
        c.limits,
        c.ledger,
        c.vault,
        c.dns,
        c.state,
        p.routes(),
        p.agents(),
        budgets,
        p.providers(),
        p.hash_hex()
    )
}
