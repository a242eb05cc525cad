//! Exact-value scanning for the vault's own keys (SPEC §6 (b)).
//!
//! Every value is expanded into the forms it can take on the wire: raw, standard base64,
//! base64url, percent-encoded and hex. Base64 forms are generated for all three byte
//! alignments, so a key inside a larger encoded blob (`Basic base64(user:key)`) is still
//! found. One Aho-Corasick automaton matches them all.

use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

/// One vault value seen in a haystack: which key, for which provider. Never the value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VaultHit {
    /// The vault's key id (safe to log).
    pub key_id: String,
    /// The provider the key belongs to (a catalog id).
    pub provider: String,
}

/// Values shorter than this are not scanned: they would match ordinary text.
const MIN_VALUE_LEN: usize = 8;
/// Aligned base64 fragments shorter than this are dropped for the same reason.
const MIN_FRAGMENT_LEN: usize = 12;

pub(crate) struct VaultPatterns {
    /// `(key_id, provider)` per value.
    owners: Vec<(String, String)>,
    /// Every encoded form; pattern `i` belongs to `owners[owner_of[i]]`.
    patterns: Vec<Zeroizing<Vec<u8>>>,
    owner_of: Vec<usize>,
    /// Pattern indices sorted by pattern bytes, for "is this a prefix of a pattern".
    sorted: Vec<usize>,
    /// First bytes of patterns, for a fast reject.
    first_bytes: [bool; 256],
    longest: usize,
    automaton: Option<AhoCorasick>,
}

/// Aho-Corasick over every encoding of every vault value. Cheap to clone.
///
/// The values are held in [`Zeroizing`] buffers and never printed; `Debug` shows key
/// ids only. (The automaton's internal tables also contain the bytes; they are freed,
/// not zeroed, when the scanner is dropped.)
#[derive(Clone)]
pub struct VaultScanner {
    inner: Arc<VaultPatterns>,
}

impl fmt::Debug for VaultScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self
            .inner
            .owners
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        f.debug_struct("VaultScanner")
            .field("key_ids", &ids)
            .field("patterns", &self.inner.patterns.len())
            .finish()
    }
}

impl VaultScanner {
    /// Build from `(key_id, provider, secret)` triples. Values shorter than 8 bytes are
    /// skipped (they would match ordinary text).
    pub fn new(values: &[(String, String, Vec<u8>)]) -> VaultScanner {
        let mut owners = Vec::new();
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut owner_of = Vec::new();
        for (key_id, provider, secret) in values {
            if secret.len() < MIN_VALUE_LEN {
                continue;
            }
            let owner = owners.len();
            owners.push((key_id.clone(), provider.clone()));
            for form in encodings(secret) {
                if form.len() >= MIN_FRAGMENT_LEN && !patterns.iter().any(|p| **p == *form) {
                    patterns.push(form);
                    owner_of.push(owner);
                }
            }
        }
        let mut sorted: Vec<usize> = (0..patterns.len()).collect();
        sorted.sort_by(|&a, &b| patterns[a].as_slice().cmp(patterns[b].as_slice()));
        let mut first_bytes = [false; 256];
        for p in &patterns {
            if let Some(&b) = p.first() {
                first_bytes[usize::from(b)] = true;
            }
        }
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        let automaton = if patterns.is_empty() {
            None
        } else {
            // Fails only past the automaton's size limits; scanning then falls back to
            // a naive search rather than skipping the check.
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(patterns.iter().map(|p| p.as_slice()))
                .ok()
        };
        VaultScanner {
            inner: Arc::new(VaultPatterns {
                owners,
                patterns,
                owner_of,
                sorted,
                first_bytes,
                longest,
                automaton,
            }),
        }
    }

    /// A scanner with no values: it never matches.
    pub fn empty() -> VaultScanner {
        VaultScanner::new(&[])
    }

    /// True when there is nothing to scan for.
    pub fn is_empty(&self) -> bool {
        self.inner.patterns.is_empty()
    }

    /// Which vault keys occur in `haystack`, in any encoding. Deduplicated, in order of
    /// first occurrence.
    pub fn scan(&self, haystack: &[u8]) -> Vec<VaultHit> {
        let mut hits: Vec<VaultHit> = Vec::new();
        for (_, _, owner) in self.inner.find(haystack) {
            if let Some((key_id, provider)) = self.inner.owners.get(owner) {
                if !hits
                    .iter()
                    .any(|h| h.key_id == *key_id && h.provider == *provider)
                {
                    hits.push(VaultHit {
                        key_id: key_id.clone(),
                        provider: provider.clone(),
                    });
                }
            }
        }
        hits
    }

    pub(crate) fn patterns(&self) -> Arc<VaultPatterns> {
        Arc::clone(&self.inner)
    }
}

impl VaultPatterns {
    /// `(start, end, owner)` of every match, leftmost-longest, not overlapping.
    pub(crate) fn find(&self, haystack: &[u8]) -> Vec<(usize, usize, usize)> {
        if self.patterns.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        match &self.automaton {
            Some(ac) => {
                for m in ac.find_iter(haystack) {
                    if let Some(&owner) = self.owner_of.get(m.pattern().as_usize()) {
                        out.push((m.start(), m.end(), owner));
                    }
                }
            }
            None => {
                let mut start = 0;
                while start < haystack.len() {
                    let best = self
                        .patterns
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| haystack[start..].starts_with(p))
                        .max_by_key(|(_, p)| p.len());
                    match best {
                        Some((i, p)) => {
                            if let Some(&owner) = self.owner_of.get(i) {
                                out.push((start, start + p.len(), owner));
                            }
                            start += p.len().max(1);
                        }
                        None => start += 1,
                    }
                }
            }
        }
        out
    }

    /// The start of the earliest suffix of `haystack` that is a proper prefix of some
    /// pattern: bytes a stream must hold back because a value may be arriving.
    pub(crate) fn partial_tail(&self, haystack: &[u8]) -> Option<usize> {
        if self.longest < 2 {
            return None;
        }
        let from = haystack.len().saturating_sub(self.longest - 1);
        (from..haystack.len()).find(|&start| {
            let tail = &haystack[start..];
            if !self.first_bytes[usize::from(tail[0])] {
                return false;
            }
            // The first pattern not below `tail` starts with it iff any pattern does.
            let at = self
                .sorted
                .partition_point(|&i| self.patterns[i].as_slice() < tail);
            self.sorted.get(at).is_some_and(|&i| {
                self.patterns[i].len() > tail.len() && self.patterns[i].starts_with(tail)
            })
        })
    }
}

/// Every form a value can take on the wire.
fn encodings(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = vec![Zeroizing::new(value.to_vec())];
    // Percent-escapes may be written in either case.
    forms.push(Zeroizing::new(percent_encode(value, false)));
    forms.push(Zeroizing::new(percent_encode(value, true)));
    // ... and every byte may be escaped, unreserved ones too (`%73%6B%2D…`).
    forms.push(Zeroizing::new(percent_encode_all(value, false)));
    forms.push(Zeroizing::new(percent_encode_all(value, true)));
    forms.push(Zeroizing::new(hex_encode(value, false)));
    forms.push(Zeroizing::new(hex_encode(value, true)));
    forms.extend(aligned_base64(value, &STANDARD_NO_PAD));
    forms.extend(aligned_base64(value, &URL_SAFE_NO_PAD));
    forms
}

/// The base64 text of `value` at each of the three byte offsets it may sit at inside a
/// larger encoded blob, trimmed to the characters that depend on `value` alone.
fn aligned_base64(value: &[u8], engine: &impl base64::Engine) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = Vec::with_capacity(4);
    // Offset 0 and standalone: the full encoding (padding stripped, as it may be).
    forms.push(Zeroizing::new(engine.encode(value).into_bytes()));
    for offset in 0..3usize {
        let mut padded = Zeroizing::new(vec![0u8; offset]);
        padded.extend_from_slice(value);
        let text = Zeroizing::new(engine.encode(padded.as_slice()).into_bytes());
        // Characters touching the unknown leading bytes: 0, 2 or 3.
        let skip = [0, 2, 3][offset];
        // Characters touching the unknown trailing bytes: the last one unless the
        // value ends on a 3-byte group boundary.
        let total = offset + value.len();
        let keep_end = match total % 3 {
            0 => text.len(),
            _ => text.len().saturating_sub(1),
        };
        if keep_end > skip {
            forms.push(Zeroizing::new(text[skip..keep_end].to_vec()));
        }
    }
    forms
}

fn percent_encode(value: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b);
        } else {
            out.push(b'%');
            out.push(digits[usize::from(b >> 4)]);
            out.push(digits[usize::from(b & 0xf)]);
        }
    }
    out
}

fn percent_encode_all(value: &[u8], upper: bool) -> Vec<u8> {
    let hex = hex_encode(value, upper);
    let mut out = Vec::with_capacity(value.len() * 3);
    for pair in hex.chunks(2) {
        out.push(b'%');
        out.extend_from_slice(pair);
    }
    out
}

fn hex_encode(value: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(value.len() * 2);
    for &b in value {
        out.push(digits[usize::from(b >> 4)]);
        out.push(digits[usize::from(b & 0xf)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    use super::*;

    fn scanner(secret: &[u8]) -> VaultScanner {
        VaultScanner::new(&[("k1".to_owned(), "openai".to_owned(), secret.to_vec())])
    }

    #[test]
    fn a_value_inside_a_larger_base64_blob_is_found_at_every_alignment() {
        let secret = b"sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        let s = scanner(secret);
        for prefix in ["", "a", "ab", "abc", "user:", "x:"] {
            for suffix in ["", "!", "!!", "!!!"] {
                let mut blob = prefix.as_bytes().to_vec();
                blob.extend_from_slice(secret);
                blob.extend_from_slice(suffix.as_bytes());
                let text = STANDARD.encode(&blob);
                assert_eq!(
                    s.scan(text.as_bytes()).len(),
                    1,
                    "prefix {prefix:?} suffix {suffix:?}: {text}"
                );
            }
        }
    }

    #[test]
    fn a_value_with_every_byte_percent_escaped_is_found_in_either_case() {
        let secret = b"sk-proj-AbCdEfGhIjKl";
        let s = scanner(secret);
        let upper: String = secret.iter().map(|b| format!("%{b:02X}")).collect();
        let lower: String = secret.iter().map(|b| format!("%{b:02x}")).collect();
        for text in [upper, lower] {
            let blob = format!("note={text}&x=1");
            assert_eq!(s.scan(blob.as_bytes()).len(), 1, "{blob}");
        }
    }

    #[test]
    fn debug_output_shows_key_ids_but_not_values() {
        let s = scanner(b"super-secret-value-123");
        let shown = format!("{s:?}");
        assert!(shown.contains("k1"));
        assert!(!shown.contains("super-secret"));
    }

    #[test]
    fn short_values_are_not_scanned() {
        let s = scanner(b"short");
        assert!(s.is_empty());
        assert!(s.scan(b"a short text").is_empty());
    }
}
