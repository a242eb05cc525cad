//! The on-disk format: record types, canonical encoding, chain hashing and the checkpoint
//! signing message. Public so that other tools can read and check a ledger without this
//! crate's writer.
//!
//! A line is the canonical body of a record with a `hash` member spliced in before the
//! closing brace:
//!
//! ```text
//! {"seq":7,"ts":"…","event_id":"…","kind":"decision",…,"prev":"<64 hex>","hash":"<64 hex>"}\n
//! ```
//!
//! The body is the struct serialized by `serde_json` in declaration order (the order of
//! SPEC §7), compact, with absent optional fields omitted (never `null`). `hash` is always the
//! last member, so the hashed body is exactly the written line minus `,"hash":"…"` and the
//! newline.

mod files;
mod text;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tamper::TamperKind;

pub(crate) use files::{list_segments, split_lines};
pub use files::{parse_segment_file_name, segment_file_name};
pub use text::{format_ts, hex_string, is_valid_ts};

/// Version written in every segment header.
pub const FORMAT_VERSION: u32 = 1;
/// Domain tag of the chain hash: `hash = SHA-256(RECORD_DOMAIN_TAG ‖ prev ‖ body)`.
pub const RECORD_DOMAIN_TAG: &[u8] = b"portcullis-ledger/v1/record\n";
/// Domain tag of the checkpoint signature: `Ed25519(CHECKPOINT_DOMAIN_TAG ‖ claim)`.
pub const CHECKPOINT_DOMAIN_TAG: &[u8] = b"portcullis-ledger/v1/checkpoint\n";
/// The file every checkpoint line is copied to, beside the segments.
pub const CHECKPOINTS_FILE: &str = "checkpoints.log";
/// The file listing the hex public key(s) that signed this ledger's checkpoints.
pub const PUBKEY_FILE: &str = "pubkey";

/// Every JSON key any ledger line may carry. Verify rejects any other key (the records are
/// read with `deny_unknown_fields`), and the schema test checks this list for names that
/// could carry content.
pub const ALLOWED_FIELDS: &[&str] = &[
    // every record
    "seq",
    "ts",
    "event_id",
    "kind",
    "prev",
    "hash",
    // decision
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
    // outcome
    "status",
    "tokens_in",
    "tokens_out",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "end",
    // config
    "source",
    // checkpoint
    "replica",
    "segment",
    "head_seq",
    "head_hash",
    "signature",
    // recovery
    "file",
    "bytes_dropped",
    "refused",
    "down_since",
    // segment header
    "version",
    "first_seq",
];

/// `,"hash":"` + 64 hex + `"}`.
const HASH_MEMBER_PREFIX: &[u8] = b",\"hash\":\"";
const HASH_MEMBER_LEN: usize = HASH_MEMBER_PREFIX.len() + 64 + 2;

/// What a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Kind {
    /// The first line of every segment file.
    Segment,
    Decision,
    Outcome,
    Checkpoint,
    Recovery,
    Config,
}

/// First line of a segment. It chains from the previous segment's last hash (or, in the
/// first segment, from a random genesis value), so segments cannot be swapped or spliced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentHeader {
    pub kind: Kind,
    pub version: u32,
    pub replica: String,
    pub segment: u64,
    /// `seq` of the first record in this segment.
    pub first_seq: u64,
    pub ts: String,
    pub prev: String,
}

/// The verdict on one request (SPEC §3 step 5.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    pub seq: u64,
    pub ts: String,
    pub event_id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub listener: String,
    pub dest_host: String,
    pub dest_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    pub decision: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    pub policy_generation: u64,
    pub policy_hash: String,
    pub detectors: Vec<String>,
    pub narrowed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Who decided a held request (`admin:<token hash prefix>`), on approval records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The client's IP address, on a refusal made before anyone was identified (so there is
    /// no tenant or agent to name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// On an aggregate record: how many refusals of this `peer` with this `reason` it stands
    /// for (those past the per-peer recording rate). Absent on a record of one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    pub prev: String,
}

/// How one request ended (SPEC §3 step 5.9).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeRecord {
    pub seq: u64,
    pub ts: String,
    pub event_id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub dest_host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    pub end: String,
    pub policy_generation: u64,
    pub policy_hash: String,
    pub prev: String,
}

/// A policy generation became active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRecord {
    pub seq: u64,
    pub ts: String,
    pub event_id: String,
    pub kind: Kind,
    pub policy_generation: u64,
    pub policy_hash: String,
    pub source: String,
    pub prev: String,
}

/// A signed statement that the chain of `replica` reached `head_seq` with `head_hash`.
/// `head_seq` is always `seq - 1` and `head_hash` always equals `prev`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRecord {
    pub seq: u64,
    pub ts: String,
    pub event_id: String,
    pub kind: Kind,
    pub replica: String,
    pub segment: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// Hex Ed25519 signature over [`checkpoint_message`].
    pub signature: String,
    pub prev: String,
}

/// Start-up cut a torn last line (a crash mid-write) from `file` (`reason = "torn_tail"`),
/// or the writer resumed after the disk was full (`reason = "disk_full"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRecord {
    pub seq: u64,
    pub ts: String,
    pub event_id: String,
    pub kind: Kind,
    /// File name only (no directory).
    pub file: String,
    /// Bytes of a torn line or a partial write that were cut from `file`.
    pub bytes_dropped: u64,
    pub reason: String,
    /// After a full disk: how many appends were refused while nothing could be written
    /// (each a request refused with `ledger_unavailable`, or an outcome not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    /// After a full disk: when writing stopped. The record's own `ts` is when it resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since: Option<String>,
    pub prev: String,
}

/// One parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entry {
    Header(SegmentHeader),
    Decision(Box<DecisionRecord>),
    Outcome(Box<OutcomeRecord>),
    Config(ConfigRecord),
    Checkpoint(CheckpointRecord),
    Recovery(RecoveryRecord),
}

impl Entry {
    /// The record's `seq`; a segment header has none.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Entry::Header(_) => None,
            Entry::Decision(r) => Some(r.seq),
            Entry::Outcome(r) => Some(r.seq),
            Entry::Config(r) => Some(r.seq),
            Entry::Checkpoint(r) => Some(r.seq),
            Entry::Recovery(r) => Some(r.seq),
        }
    }

    pub fn prev(&self) -> &str {
        match self {
            Entry::Header(r) => &r.prev,
            Entry::Decision(r) => &r.prev,
            Entry::Outcome(r) => &r.prev,
            Entry::Config(r) => &r.prev,
            Entry::Checkpoint(r) => &r.prev,
            Entry::Recovery(r) => &r.prev,
        }
    }

    pub fn ts(&self) -> &str {
        match self {
            Entry::Header(r) => &r.ts,
            Entry::Decision(r) => &r.ts,
            Entry::Outcome(r) => &r.ts,
            Entry::Config(r) => &r.ts,
            Entry::Checkpoint(r) => &r.ts,
            Entry::Recovery(r) => &r.ts,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Entry::Header(_) => Kind::Segment,
            Entry::Decision(_) => Kind::Decision,
            Entry::Outcome(_) => Kind::Outcome,
            Entry::Config(_) => Kind::Config,
            Entry::Checkpoint(_) => Kind::Checkpoint,
            Entry::Recovery(_) => Kind::Recovery,
        }
    }

    fn declared_kind(&self) -> Kind {
        match self {
            Entry::Header(r) => r.kind,
            Entry::Decision(r) => r.kind,
            Entry::Outcome(r) => r.kind,
            Entry::Config(r) => r.kind,
            Entry::Checkpoint(r) => r.kind,
            Entry::Recovery(r) => r.kind,
        }
    }

    fn encode_body(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Entry::Header(r) => serde_json::to_vec(r),
            Entry::Decision(r) => serde_json::to_vec(r),
            Entry::Outcome(r) => serde_json::to_vec(r),
            Entry::Config(r) => serde_json::to_vec(r),
            Entry::Checkpoint(r) => serde_json::to_vec(r),
            Entry::Recovery(r) => serde_json::to_vec(r),
        }
    }
}

/// A line that parsed, is canonical, and whose `hash` matches its own content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLine {
    pub entry: Entry,
    pub hash: [u8; 32],
}

/// Why a single line is bad, independent of its neighbours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineFault {
    pub kind: TamperKind,
    pub why: String,
}

impl LineFault {
    fn new(kind: TamperKind, why: impl Into<String>) -> Self {
        LineFault {
            kind,
            why: why.into(),
        }
    }
}

/// `hex(SHA-256(RECORD_DOMAIN_TAG ‖ prev ‖ body))` as raw bytes.
pub fn chain_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(RECORD_DOMAIN_TAG);
    hasher.update(prev);
    hasher.update(body);
    hasher.finalize().into()
}

/// Encode `record` canonically, hash it chained from `prev`, and return the full line
/// (with `hash` and the trailing newline) plus its hash.
pub fn seal<T: Serialize>(
    record: &T,
    prev: &[u8; 32],
) -> Result<(Vec<u8>, [u8; 32]), serde_json::Error> {
    // Most records fit in 512 bytes: one allocation instead of a doubling series.
    let mut body = Vec::with_capacity(512 + HASH_MEMBER_LEN + 1);
    serde_json::to_writer(&mut body, record)?;
    let hash = chain_hash(prev, &body);
    let mut line = body;
    // invariant: every record is a non-empty struct, so its JSON ends with '}'.
    debug_assert_eq!(line.last(), Some(&b'}'));
    line.pop();
    line.reserve(HASH_MEMBER_LEN + 1);
    line.extend_from_slice(HASH_MEMBER_PREFIX);
    line.extend_from_slice(hex_string(&hash).as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, hash))
}

/// Check one line (without its newline) on its own: JSON, known kind, allowed fields only,
/// canonical bytes, and a `hash` that matches `prev` and the body.
pub fn parse_line(line: &[u8]) -> Result<ParsedLine, LineFault> {
    let n = line.len();
    if n < HASH_MEMBER_LEN + 2
        || line[0] != b'{'
        || &line[n - HASH_MEMBER_LEN..n - HASH_MEMBER_LEN + HASH_MEMBER_PREFIX.len()]
            != HASH_MEMBER_PREFIX
        || &line[n - 2..] != b"\"}"
    {
        return Err(LineFault::new(
            TamperKind::Parse,
            "not a ledger record: the line must be a JSON object ending with its \"hash\" member",
        ));
    }
    let hash = decode_hash(&line[n - 66..n - 2]).ok_or_else(|| {
        LineFault::new(
            TamperKind::NonCanonical,
            "\"hash\" is not 64 lowercase hex digits",
        )
    })?;
    let mut body = Vec::with_capacity(n - HASH_MEMBER_LEN + 1);
    body.extend_from_slice(&line[..n - HASH_MEMBER_LEN]);
    body.push(b'}');

    #[derive(Deserialize)]
    struct Peek {
        kind: serde_json::Value,
    }
    let peek: Peek = serde_json::from_slice(&body).map_err(|e| json_fault(&e))?;
    let kind: Kind = serde_json::from_value(peek.kind.clone()).map_err(|_| {
        LineFault::new(
            TamperKind::Schema,
            format!("unknown record kind {}", peek.kind),
        )
    })?;
    let entry = match kind {
        Kind::Segment => serde_json::from_slice(&body).map(Entry::Header),
        Kind::Decision => serde_json::from_slice(&body).map(|r| Entry::Decision(Box::new(r))),
        Kind::Outcome => serde_json::from_slice(&body).map(|r| Entry::Outcome(Box::new(r))),
        Kind::Config => serde_json::from_slice(&body).map(Entry::Config),
        Kind::Checkpoint => serde_json::from_slice(&body).map(Entry::Checkpoint),
        Kind::Recovery => serde_json::from_slice(&body).map(Entry::Recovery),
    }
    .map_err(|e| json_fault(&e))?;
    if entry.declared_kind() != kind {
        return Err(LineFault::new(
            TamperKind::Schema,
            "conflicting \"kind\" members",
        ));
    }
    let canonical = entry
        .encode_body()
        .map_err(|e| LineFault::new(TamperKind::Parse, e.to_string()))?;
    if canonical != body {
        return Err(LineFault::new(
            TamperKind::NonCanonical,
            "the bytes are not the canonical encoding of the record (field order, spacing, escaping or an explicit null differ)",
        ));
    }
    if !is_valid_ts(entry.ts()) {
        return Err(LineFault::new(
            TamperKind::Schema,
            "\"ts\" is not of the form YYYY-MM-DDTHH:MM:SS.mmmZ",
        ));
    }
    let prev = decode_hash(entry.prev().as_bytes()).ok_or_else(|| {
        LineFault::new(
            TamperKind::NonCanonical,
            "\"prev\" is not 64 lowercase hex digits",
        )
    })?;
    if chain_hash(&prev, &body) != hash {
        return Err(LineFault::new(
            TamperKind::HashMismatch,
            "the record's hash does not match its content: the record was edited",
        ));
    }
    Ok(ParsedLine { entry, hash })
}

fn json_fault(err: &serde_json::Error) -> LineFault {
    let text = err.to_string();
    let kind = if text.contains("unknown field") || text.contains("missing field") {
        TamperKind::Schema
    } else {
        TamperKind::Parse
    };
    LineFault::new(kind, text)
}

/// 64 lowercase hex digits to 32 bytes.
pub fn decode_hash(hex_digits: &[u8]) -> Option<[u8; 32]> {
    if hex_digits.len() != 64
        || !hex_digits
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

/// The bytes a checkpoint signs: the domain tag, then the compact JSON of the claim.
pub fn checkpoint_message(
    replica: &str,
    segment: u64,
    head_seq: u64,
    head_hash: &str,
    ts: &str,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Claim<'a> {
        replica: &'a str,
        segment: u64,
        head_seq: u64,
        head_hash: &'a str,
        ts: &'a str,
    }
    let claim = Claim {
        replica,
        segment,
        head_seq,
        head_hash,
        ts,
    };
    let mut msg = CHECKPOINT_DOMAIN_TAG.to_vec();
    // invariant: serializing a struct of strings and integers cannot fail.
    if let Ok(json) = serde_json::to_vec(&claim) {
        msg.extend_from_slice(&json);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(prev: &[u8; 32]) -> SegmentHeader {
        SegmentHeader {
            kind: Kind::Segment,
            version: FORMAT_VERSION,
            replica: "r1".into(),
            segment: 1,
            first_seq: 1,
            ts: "2025-01-31T23:59:59.123Z".into(),
            prev: hex::encode(prev),
        }
    }

    #[test]
    fn sealed_line_parses_back_to_the_same_record_and_hash() {
        let prev = [7u8; 32];
        let (line, hash) = seal(&header(&prev), &prev).expect("seal");
        let parsed = parse_line(&line[..line.len() - 1]).expect("parse");
        assert_eq!(parsed.hash, hash);
        assert_eq!(parsed.entry, Entry::Header(header(&prev)));
    }

    #[test]
    fn hash_is_over_the_written_bytes_without_the_hash_member() {
        let prev = [1u8; 32];
        let (line, hash) = seal(&header(&prev), &prev).expect("seal");
        let text = std::str::from_utf8(&line).expect("utf8");
        let body = text
            .trim_end()
            .replace(&format!(",\"hash\":\"{}\"", hex::encode(hash)), "");
        let mut h = Sha256::new();
        h.update(RECORD_DOMAIN_TAG);
        h.update(prev);
        h.update(body.as_bytes());
        assert_eq!(<[u8; 32]>::from(h.finalize()), hash);
    }

    #[test]
    fn non_canonical_spacing_is_rejected() {
        let prev = [0u8; 32];
        let (line, _) = seal(&header(&prev), &prev).expect("seal");
        let text = String::from_utf8(line)
            .expect("utf8")
            .replacen(",", ", ", 1);
        let fault = parse_line(text.trim_end().as_bytes()).expect_err("must fail");
        assert_eq!(fault.kind, TamperKind::NonCanonical);
    }

    #[test]
    fn explicit_null_for_an_absent_field_is_rejected_as_non_canonical() {
        let prev = [0u8; 32];
        let rec = DecisionRecord {
            seq: 1,
            ts: "2025-01-31T23:59:59.123Z".into(),
            event_id: "e".into(),
            kind: Kind::Decision,
            tenant: None,
            agent: None,
            listener: "main".into(),
            dest_host: "api.openai.com".into(),
            dest_port: 443,
            method: None,
            path_template: None,
            provider: None,
            model: None,
            operation: None,
            stream: None,
            decision: "allow".into(),
            reason: "route".into(),
            rule_id: None,
            policy_generation: 1,
            policy_hash: "p".into(),
            detectors: vec![],
            narrowed: vec![],
            key_id: None,
            approver: None,
            peer: None,
            count: None,
            prev: hex::encode(prev),
        };
        let (line, _) = seal(&rec, &prev).expect("seal");
        let text = String::from_utf8(line).expect("utf8").replacen(
            "\"kind\":\"decision\",",
            "\"kind\":\"decision\",\"tenant\":null,",
            1,
        );
        let fault = parse_line(text.trim_end().as_bytes()).expect_err("must fail");
        assert_eq!(fault.kind, TamperKind::NonCanonical, "{}", fault.why);
    }

    #[test]
    fn an_unknown_field_is_a_schema_violation() {
        let prev = [0u8; 32];
        let (line, _) = seal(&header(&prev), &prev).expect("seal");
        let text = String::from_utf8(line)
            .expect("utf8")
            .replacen("{", "{\"prompt\":\"hi\",", 1);
        let fault = parse_line(text.trim_end().as_bytes()).expect_err("must fail");
        assert_eq!(fault.kind, TamperKind::Schema, "{}", fault.why);
    }
}
