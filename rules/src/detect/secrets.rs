//! Provider key formats (SPEC §6 (a)).
//!
//! Each format is a literal prefix, a body alphabet with a length range, and a check on
//! the whole candidate. Candidates are found with one Aho-Corasick pass over every
//! prefix, then each is *probed*: a probe can say "no", "yes, it ends here", or (on an
//! unfinished stream) "not yet". The request detector probes with the whole body; the
//! [`crate::Redactor`] probes a sliding buffer and holds back exactly the bytes of an
//! unfinished candidate.
//!
//! Look-alikes are rejected on purpose, each with a test: the AWS documentation key
//! `AKIAIOSFODNN7EXAMPLE`, placeholders (`sk-xxxx…`, `…EXAMPLE…`), `xoxo-`, public keys
//! and certificates, truncated PEM headers, and `eyJ…` strings that are not JWTs.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;

use super::decode::{decode_layers, BASE64_CHARS, DECODE_BUDGET, MAX_DEPTH};

/// What a probe found at a candidate position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Not a secret.
    No,
    /// Could still become one when more bytes arrive (only when not at end of input).
    Partial,
    /// A secret spanning `start..end`.
    Full(usize),
}

/// One key format.
pub(crate) struct Format {
    pub(crate) id: &'static str,
    prefixes: &'static [&'static str],
    kind: Kind,
}

enum Kind {
    /// `prefix` + `min..=max` bytes of the alphabet, then a byte outside it.
    Token {
        alphabet: fn(u8) -> bool,
        min: usize,
        max: usize,
        check: fn(&[u8]) -> bool,
    },
    /// `-----BEGIN … PRIVATE KEY-----`, a base64 body, and the END line.
    Pem,
    /// `eyJ….eyJ….sig` whose header decodes to a JSON object with `alg`.
    Jwt,
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn alnum_dash_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn alnum_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn base32_upper(b: u8) -> bool {
    b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)
}

fn slack_body(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn jwt_body(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// Real keys are random: reject placeholders and documentation examples.
fn random_looking(body: &[u8]) -> bool {
    let lower = body.to_ascii_lowercase();
    let mut seen = [false; 256];
    for &b in body {
        seen[usize::from(b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    let placeholder = [
        "example",
        "xxxxxx",
        "placeholder",
        "redacted",
        "000000",
        "123456",
    ]
    .iter()
    .any(|p| lower.windows(p.len()).any(|w| w == p.as_bytes()));
    distinct >= 10.min(body.len()) && !placeholder
}

fn any_token(body: &[u8]) -> bool {
    random_looking(body)
}

/// AWS key ids: 16 base32 characters; the documentation example ends in `EXAMPLE`.
fn aws_key_id(body: &[u8]) -> bool {
    !body.ends_with(b"EXAMPLE") && random_looking(body)
}

/// Slack tokens start with a numeric team/user id: `xoxb-123456789012-…`.
fn slack_token(body: &[u8]) -> bool {
    body.first().is_some_and(u8::is_ascii_digit) && body.contains(&b'-') && random_looking(body)
}

/// Every format, most specific prefix first.
pub(crate) const FORMATS: &[Format] = &[
    Format {
        id: "openai_project_key",
        prefixes: &["sk-proj-", "sk-svcacct-", "sk-admin-"],
        kind: Kind::Token {
            alphabet: alnum_dash_underscore,
            min: 40,
            max: 256,
            check: any_token,
        },
    },
    Format {
        id: "anthropic_key",
        prefixes: &["sk-ant-api", "sk-ant-admin", "sk-ant-oat"],
        kind: Kind::Token {
            alphabet: alnum_dash_underscore,
            min: 80,
            max: 256,
            check: any_token,
        },
    },
    Format {
        id: "openai_key",
        prefixes: &["sk-"],
        kind: Kind::Token {
            alphabet: alnum,
            min: 48,
            max: 48,
            check: any_token,
        },
    },
    Format {
        id: "aws_access_key_id",
        prefixes: &["AKIA", "ASIA"],
        kind: Kind::Token {
            alphabet: base32_upper,
            min: 16,
            max: 16,
            check: aws_key_id,
        },
    },
    Format {
        id: "github_token",
        prefixes: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        kind: Kind::Token {
            alphabet: alnum,
            min: 36,
            max: 36,
            check: any_token,
        },
    },
    Format {
        id: "github_pat",
        prefixes: &["github_pat_"],
        kind: Kind::Token {
            alphabet: alnum_underscore,
            min: 70,
            max: 100,
            check: any_token,
        },
    },
    Format {
        id: "slack_token",
        prefixes: &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-"],
        kind: Kind::Token {
            alphabet: slack_body,
            min: 20,
            max: 256,
            check: slack_token,
        },
    },
    Format {
        id: "google_api_key",
        prefixes: &["AIza"],
        kind: Kind::Token {
            alphabet: alnum_dash_underscore,
            min: 35,
            max: 35,
            check: any_token,
        },
    },
    Format {
        id: "private_key_pem",
        prefixes: &["-----BEGIN "],
        kind: Kind::Pem,
    },
    Format {
        id: "jwt",
        prefixes: &["eyJ"],
        kind: Kind::Jwt,
    },
];

/// The ids of every format, for documentation and tests.
pub fn secret_format_ids() -> impl Iterator<Item = &'static str> {
    FORMATS.iter().map(|f| f.id)
}

/// Longest PEM block we redact in one piece (an RSA-4096 key is about 3.3 KB).
const PEM_MAX: usize = 16 * 1024;
/// Longest JWT we recognise.
const JWT_MAX: usize = 8 * 1024;
/// A PEM body needs at least this many base64 characters to count.
const PEM_MIN_BODY: usize = 64;

/// The prefix automaton: pattern `i` is `PREFIXES[i]`, owned by format `OWNERS[i]`.
pub(crate) struct Prefixes {
    pub(crate) automaton: Option<AhoCorasick>,
    pub(crate) owners: Vec<usize>,
    pub(crate) texts: Vec<&'static [u8]>,
}

pub(crate) static PREFIXES: LazyLock<Prefixes> = LazyLock::new(|| {
    let mut owners = Vec::new();
    let mut texts: Vec<&'static [u8]> = Vec::new();
    for (i, format) in FORMATS.iter().enumerate() {
        for prefix in format.prefixes {
            owners.push(i);
            texts.push(prefix.as_bytes());
        }
    }
    // Standard semantics so that overlapping prefixes (`sk-` inside `sk-proj-`) are all
    // reported. Built from constants; `None` (never seen) falls back to a naive scan.
    let automaton = AhoCorasickBuilder::new()
        .match_kind(MatchKind::Standard)
        .build(&texts)
        .ok();
    Prefixes {
        automaton,
        owners,
        texts,
    }
});

impl Prefixes {
    /// `(start, format index)` of every prefix occurrence, in start order.
    pub(crate) fn candidates(&self, haystack: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        match &self.automaton {
            Some(ac) => {
                for m in ac.find_overlapping_iter(haystack) {
                    if let Some(&owner) = self.owners.get(m.pattern().as_usize()) {
                        out.push((m.start(), owner));
                    }
                }
            }
            None => {
                for start in 0..haystack.len() {
                    for (text, &owner) in self.texts.iter().zip(&self.owners) {
                        if haystack[start..].starts_with(text) {
                            out.push((start, owner));
                        }
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The start of the longest suffix of `haystack` that is a proper prefix of some
    /// format prefix (`…sk-pr` at the end of a chunk), if any.
    pub(crate) fn partial_tail(&self, haystack: &[u8]) -> Option<usize> {
        let longest = self.texts.iter().map(|t| t.len()).max().unwrap_or(0);
        let from = haystack.len().saturating_sub(longest.saturating_sub(1));
        (from..haystack.len()).find(|&start| {
            let tail = &haystack[start..];
            self.texts
                .iter()
                .any(|t| t.len() > tail.len() && t.starts_with(tail))
        })
    }
}

impl Format {
    /// Probe for this format at `start`. `before` is the byte preceding `start` (`None`
    /// at the very start of the stream); `eof` says no more bytes will come.
    pub(crate) fn probe(&self, buf: &[u8], start: usize, before: Option<u8>, eof: bool) -> Probe {
        let rest = &buf[start..];
        let Some(prefix) = self
            .prefixes
            .iter()
            .find(|p| rest.starts_with(p.as_bytes()))
        else {
            let partial = !eof
                && self
                    .prefixes
                    .iter()
                    .any(|p| p.len() > rest.len() && p.as_bytes().starts_with(rest));
            return if partial { Probe::Partial } else { Probe::No };
        };
        match &self.kind {
            Kind::Token {
                alphabet,
                min,
                max,
                check,
            } => {
                // A token glued to a word (`risk-…`, `xAKIA…`) is not a key.
                if before.is_some_and(|b| b.is_ascii_alphanumeric()) {
                    return Probe::No;
                }
                let body_start = start + prefix.len();
                let body_len = buf[body_start..]
                    .iter()
                    .take(max + 1)
                    .take_while(|b| alphabet(**b))
                    .count();
                if body_len > *max {
                    return Probe::No;
                }
                if body_start + body_len == buf.len() && !eof {
                    return Probe::Partial;
                }
                let body = &buf[body_start..body_start + body_len];
                if body_len >= *min && check(body) {
                    Probe::Full(body_start + body_len)
                } else {
                    Probe::No
                }
            }
            Kind::Pem => probe_pem(buf, start, eof),
            Kind::Jwt => {
                if before.is_some_and(|b| jwt_body(b) || b == b'/' || b == b'+') {
                    return Probe::No;
                }
                let len = buf[start..]
                    .iter()
                    .take(JWT_MAX + 1)
                    .take_while(|b| jwt_body(**b))
                    .count();
                if len > JWT_MAX {
                    return Probe::No;
                }
                if start + len == buf.len() && !eof {
                    return Probe::Partial;
                }
                let mut end = start + len;
                // A sentence may end right after a token: `… eyJ….sig.`
                while end > start && buf[end - 1] == b'.' {
                    end -= 1;
                }
                if is_jwt(&buf[start..end]) {
                    Probe::Full(end)
                } else {
                    Probe::No
                }
            }
        }
    }
}

/// `header.payload.signature`, base64url; the header is a JSON object naming `alg`, the
/// payload a JSON object, and the signature long enough to be one.
fn is_jwt(token: &[u8]) -> bool {
    let parts: Vec<&[u8]> = token.split(|b| *b == b'.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return false;
    };
    if header.len() < 10 || payload.len() < 10 || signature.len() < 16 {
        return false;
    }
    if !payload.starts_with(b"eyJ") {
        return false;
    }
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    match engine.decode(header) {
        Ok(decoded) => {
            let text = String::from_utf8_lossy(&decoded);
            text.trim_start().starts_with('{') && text.contains("\"alg\"")
        }
        Err(_) => false,
    }
}

/// `-----BEGIN [LABEL ]PRIVATE KEY-----`, then base64 lines (newlines may be real or
/// JSON-escaped `\n`), then `-----END [LABEL ]PRIVATE KEY-----`. Without an END line,
/// the header plus a base64 run of at least [`PEM_MIN_BODY`] characters still counts.
fn probe_pem(buf: &[u8], start: usize, eof: bool) -> Probe {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const TAIL: &[u8] = b"PRIVATE KEY-----";
    let mut i = start + BEGIN.len();
    // The label: uppercase words, at most 32 bytes, ending in `PRIVATE KEY-----`.
    let label_end = (i + 48).min(buf.len());
    let mut header_end = None;
    while i < label_end {
        if buf[i..].starts_with(TAIL) {
            header_end = Some(i + TAIL.len());
            break;
        }
        if TAIL.starts_with(&buf[i..]) && !eof {
            return Probe::Partial;
        }
        if !(buf[i].is_ascii_uppercase() || buf[i].is_ascii_digit() || buf[i] == b' ') {
            return Probe::No;
        }
        i += 1;
    }
    let Some(header_end) = header_end else {
        return if i >= buf.len() && !eof {
            Probe::Partial
        } else {
            Probe::No
        };
    };
    let mut i = header_end;
    let mut base64_chars = 0usize;
    let mut last_body = header_end;
    while i < buf.len() && i - start <= PEM_MAX {
        let b = buf[i];
        if b == b'-' {
            let rest = &buf[i..];
            if rest.starts_with(b"-----END ") {
                let close = rest[9..]
                    .windows(5)
                    .take(48)
                    .position(|w| w == b"-----")
                    .map(|p| i + 9 + p + 5);
                return match close {
                    Some(end) if base64_chars >= PEM_MIN_BODY => Probe::Full(end),
                    Some(_) => Probe::No,
                    None if !eof && buf.len() - i < 9 + 48 + 5 => Probe::Partial,
                    None => pem_without_end(base64_chars, last_body),
                };
            }
            if b"-----END ".starts_with(rest) && !eof {
                return Probe::Partial;
            }
            // Legacy headers such as `Proc-Type: 4,ENCRYPTED` contain dashes.
            i += 1;
            continue;
        }
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            base64_chars += 1;
            last_body = i + 1;
        } else if b == b'\\' {
            // A JSON-escaped line break inside a string.
            match buf.get(i + 1) {
                Some(b'n' | b'r') => i += 1,
                None if !eof => return Probe::Partial,
                _ => return pem_without_end(base64_chars, last_body),
            }
        } else if !(b.is_ascii_whitespace() || b == b':' || b == b',') {
            return pem_without_end(base64_chars, last_body);
        }
        i += 1;
    }
    if i >= buf.len() && !eof {
        Probe::Partial
    } else {
        pem_without_end(base64_chars, last_body)
    }
}

fn pem_without_end(base64_chars: usize, last_body: usize) -> Probe {
    if base64_chars >= PEM_MIN_BODY {
        Probe::Full(last_body)
    } else {
        Probe::No
    }
}

/// The ids of the formats found in `haystack` (complete input), deduplicated, in order
/// of first occurrence. Matches do not overlap: a candidate inside a secret already
/// found is not probed.
///
/// Keys inside encoded blobs are found too: base64 and base64url blocks (a `.env` file
/// or JSON config, encoded), hex, `%XX` URL escapes and `\uXXXX` escapes are decoded,
/// at most two layers deep and within a byte budget, and scanned again.
pub fn detect_secrets(haystack: &[u8]) -> Vec<&'static str> {
    let mut ids = scan_formats(haystack);
    if may_hold_encoding(haystack) {
        let mut budget = DECODE_BUDGET;
        decoded_secrets(&String::from_utf8_lossy(haystack), 1, &mut budget, &mut ids);
    }
    ids
}

/// A cheap pre-check: a run of 24 base64 characters, a `%`, or a backslash escape.
fn may_hold_encoding(haystack: &[u8]) -> bool {
    let mut run = 0usize;
    for &b in haystack {
        if b == b'%' || b == b'\\' {
            return true;
        }
        if BASE64_CHARS[usize::from(b)] {
            run += 1;
            if run >= 24 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

fn decoded_secrets(text: &str, depth: usize, budget: &mut usize, ids: &mut Vec<&'static str>) {
    let mut decoded = Vec::new();
    decode_layers(text, budget, &mut decoded);
    for d in decoded {
        for id in scan_formats(d.text.as_bytes()) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if depth < MAX_DEPTH && *budget > 0 {
            decoded_secrets(&d.text, depth + 1, budget, ids);
        }
    }
}

/// The formats found in `haystack` as it is, without decoding.
fn scan_formats(haystack: &[u8]) -> Vec<&'static str> {
    let mut ids: Vec<&'static str> = Vec::new();
    let mut cursor = 0;
    for (start, index) in PREFIXES.candidates(haystack) {
        if start < cursor {
            continue;
        }
        let Some(format) = FORMATS.get(index) else {
            continue;
        };
        let before = start.checked_sub(1).map(|i| haystack[i]);
        if let Probe::Full(end) = format.probe(haystack, start, before, true) {
            if !ids.contains(&format.id) {
                ids.push(format.id);
            }
            cursor = end;
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: &str, len: usize, alphabet: &[u8]) -> String {
        // Deterministic, random-looking body.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let body: String = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(alphabet[(x % alphabet.len() as u64) as usize])
            })
            .collect();
        format!("{prefix}{body}")
    }

    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

    #[test]
    fn a_token_cut_by_the_end_of_a_chunk_is_partial_until_eof() {
        let k = key("ghp_", 36, ALNUM);
        let cut = &k.as_bytes()[..20];
        let f = &FORMATS[4];
        assert_eq!(f.probe(cut, 0, None, false), Probe::Partial);
        assert_eq!(f.probe(cut, 0, None, true), Probe::No);
        assert_eq!(f.probe(k.as_bytes(), 0, None, true), Probe::Full(40));
    }

    #[test]
    fn a_token_longer_than_its_format_is_not_that_format() {
        let k = key("ghp_", 37, ALNUM);
        assert!(detect_secrets(k.as_bytes()).is_empty());
    }

    #[test]
    fn partial_tail_finds_an_unfinished_prefix() {
        assert_eq!(PREFIXES.partial_tail(b"hello sk-pr"), Some(6));
        assert_eq!(PREFIXES.partial_tail(b"hello -----BEGI"), Some(6));
        assert_eq!(PREFIXES.partial_tail(b"hello world"), None);
    }
}
