//! What the proxy hands the ledger: content-free facts, clamped before they are written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use rand_core06::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest identifier-like field the ledger keeps (tenant, model, host, reason, ...).
pub const MAX_FIELD_BYTES: usize = 256;
/// Longest path template the ledger keeps.
pub const MAX_PATH_TEMPLATE_BYTES: usize = 1024;
/// Most entries kept in `detectors` or `narrowed`.
pub const MAX_LIST_ITEMS: usize = 64;

/// Content-free facts about one request's decision. Every field is an identifier, a number,
/// an enum-like code, a host name or a path *template* (query stripped, ids replaced); never
/// a header value, body, prompt, query string or key.
///
/// Some fields (for example `model`) come from the client's request, so before writing the
/// ledger clamps every string to [`MAX_FIELD_BYTES`] (paths to [`MAX_PATH_TEMPLATE_BYTES`]),
/// drops control characters, cuts a path at `?` or `#`, and keeps at most
/// [`MAX_LIST_ITEMS`] list entries. A client cannot smuggle a prompt into the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionFacts {
    pub event_id: String,
    pub tenant: Option<String>,
    pub agent: Option<String>,
    pub listener: String,
    pub dest_host: String,
    pub dest_port: u16,
    pub method: Option<String>,
    pub path_template: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub operation: Option<String>,
    pub stream: Option<bool>,
    pub decision: String,
    pub reason: String,
    pub rule_id: Option<String>,
    pub policy_generation: u64,
    pub policy_hash: String,
    /// `detector:pattern_id` only.
    pub detectors: Vec<String>,
    /// Field names only.
    pub narrowed: Vec<String>,
    /// The vault key's id, never the key.
    pub key_id: Option<String>,
    /// Who decided a held request: `admin:<prefix of the admin token's SHA-256>`.
    pub approver: Option<String>,
    /// The client's IP address, only on a refusal made before anyone was identified.
    pub peer: Option<String>,
    /// On an aggregate record, how many refusals it stands for.
    pub count: Option<u64>,
}

/// How a request ended. `event_id` is the one of its decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeFacts {
    pub event_id: String,
    pub tenant: Option<String>,
    pub agent: Option<String>,
    pub dest_host: String,
    pub status: Option<u16>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    /// `complete` | `client_abort` | `upstream_error` | `shutdown` | `idle_timeout` |
    /// `policy_changed` | `budget_cut`.
    pub end: String,
    pub policy_generation: u64,
    pub policy_hash: String,
}

/// A policy generation became active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFacts {
    pub event_id: String,
    pub policy_generation: u64,
    pub policy_hash: String,
    /// `startup` | `sighup` | `file_watch` | `api`.
    pub source: String,
}

/// An unpredictable 128-bit id as 32 lowercase hex digits.
///
/// `SHA-256(process key ‖ counter)`, truncated: a PRF of a counter under a key drawn once
/// from the OS. Ids never repeat within a process and cannot be guessed or ordered by a
/// client that sees some of them, like random ids, but cost no system call each (a
/// `getrandom` per request was a measurable share of the hot path).
pub fn new_event_id() -> String {
    static KEY: LazyLock<[u8; 32]> = LazyLock::new(|| {
        let mut key = [0u8; 32];
        rand_core06::OsRng.fill_bytes(&mut key);
        key
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let digest = Sha256::new()
        .chain_update(EVENT_ID_TAG)
        .chain_update(*KEY)
        .chain_update(n.to_le_bytes())
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    crate::format::hex_string(&id)
}

/// Domain separation, so an event id is never some other hash of ours.
const EVENT_ID_TAG: &[u8] = b"portcullis event id v1\0";

impl DecisionFacts {
    pub(crate) fn clamp(&mut self) {
        for s in [
            &mut self.event_id,
            &mut self.listener,
            &mut self.dest_host,
            &mut self.decision,
            &mut self.reason,
            &mut self.policy_hash,
        ] {
            clamp(s, MAX_FIELD_BYTES);
        }
        for s in [
            &mut self.tenant,
            &mut self.agent,
            &mut self.method,
            &mut self.provider,
            &mut self.model,
            &mut self.operation,
            &mut self.rule_id,
            &mut self.key_id,
            &mut self.approver,
            &mut self.peer,
        ]
        .into_iter()
        .flatten()
        {
            clamp(s, MAX_FIELD_BYTES);
        }
        if let Some(path) = &mut self.path_template {
            if let Some(cut) = path.find(['?', '#']) {
                path.truncate(cut);
            }
            clamp(path, MAX_PATH_TEMPLATE_BYTES);
        }
        for list in [&mut self.detectors, &mut self.narrowed] {
            list.truncate(MAX_LIST_ITEMS);
            list.iter_mut().for_each(|s| clamp(s, MAX_FIELD_BYTES));
        }
    }
}

impl OutcomeFacts {
    pub(crate) fn clamp(&mut self) {
        for s in [
            &mut self.event_id,
            &mut self.dest_host,
            &mut self.end,
            &mut self.policy_hash,
        ] {
            clamp(s, MAX_FIELD_BYTES);
        }
        for s in [&mut self.tenant, &mut self.agent].into_iter().flatten() {
            clamp(s, MAX_FIELD_BYTES);
        }
    }
}

impl ConfigFacts {
    pub(crate) fn clamp(&mut self) {
        for s in [&mut self.event_id, &mut self.policy_hash, &mut self.source] {
            clamp(s, MAX_FIELD_BYTES);
        }
    }
}

/// Drop control characters and cut to at most `max` bytes on a char boundary.
fn clamp(s: &mut String, max: usize) {
    if s.chars().any(char::is_control) {
        s.retain(|c| !c.is_control());
    }
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_template_loses_its_query_and_fragment() {
        let mut f = DecisionFacts {
            path_template: Some("/v1/files/{id}?key=sk-123#frag".into()),
            ..Default::default()
        };
        f.clamp();
        assert_eq!(f.path_template.as_deref(), Some("/v1/files/{id}"));
    }

    #[test]
    fn client_controlled_strings_are_clamped_on_a_char_boundary() {
        let mut f = DecisionFacts {
            model: Some("é".repeat(1000)),
            detectors: vec!["d:p".into(); 500],
            reason: "a\nb\u{0}c".into(),
            ..Default::default()
        };
        f.clamp();
        let model = f.model.unwrap_or_default();
        assert!(model.len() <= MAX_FIELD_BYTES && model.len() >= MAX_FIELD_BYTES - 1);
        assert_eq!(f.detectors.len(), MAX_LIST_ITEMS);
        assert_eq!(f.reason, "abc");
    }

    #[test]
    fn event_ids_are_128_bit_lowercase_hex_and_distinct() {
        let a = new_event_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(a, new_event_id());
    }

    #[test]
    fn event_ids_do_not_repeat_across_many_calls_and_threads() {
        let ids: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..25_000).map(|_| new_event_id()).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(ids.len(), 100_000);
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Not a visible counter: consecutive ids share no long prefix.
        let (x, y) = (&ids[0], &ids[1]);
        assert!(x.bytes().zip(y.bytes()).take_while(|(a, b)| a == b).count() < 8);
    }
}
