//! Streaming response redaction (SPEC §6): vault values in every encoding, and every
//! key format of §6 (a), become `[REDACTED]`, also when a secret is split across
//! chunks.
//!
//! A redactor keeps a carry-over buffer. After each chunk it emits everything except
//! the bytes that could still be the start of a secret: an unfinished key-format
//! candidate, or a tail that is a prefix of a vault value. That is never more than the
//! longest pattern minus one byte, and in ordinary text it is nothing at all, so SSE
//! events are not delayed unless they end in something that looks like a key.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::detect::secrets::{Probe, FORMATS, PREFIXES};
use crate::detect::vault::{VaultPatterns, VaultScanner};

/// What a secret is replaced with.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// A streaming redactor for one response body.
pub struct Redactor {
    vault: Arc<VaultPatterns>,
    /// Bytes received but not yet emitted; may hold part of a secret.
    pending: Zeroizing<Vec<u8>>,
    /// The last byte emitted, for "is this token glued to a word" at the buffer start.
    before: Option<u8>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("pending_bytes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for the values in `vault` plus the §6 (a) key formats.
    pub fn new(vault: &VaultScanner) -> Redactor {
        Redactor {
            vault: vault.patterns(),
            pending: Zeroizing::new(Vec::new()),
            before: None,
        }
    }

    /// Feed the next chunk; returns the bytes that are safe to emit now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        self.drain(false)
    }

    /// Is `chunk` safe to emit exactly as it is? True when nothing is held back and the
    /// chunk holds no key-format prefix, no vault value, and no tail that could start
    /// one. Then the caller sends the chunk itself, with no copy; otherwise it calls
    /// [`Redactor::push`]. The answer never differs from what `push` would emit.
    pub fn passes_unchanged(&mut self, chunk: &[u8]) -> bool {
        let clean = self.pending.is_empty()
            && PREFIXES.candidates(chunk).is_empty()
            && self.vault.find(chunk).is_empty()
            && PREFIXES.partial_tail(chunk).is_none()
            && self.vault.partial_tail(chunk).is_none();
        if clean {
            if let Some(&last) = chunk.last() {
                self.before = Some(last);
            }
        }
        clean
    }

    /// The end of the stream: returns everything still held, redacted.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    /// How many bytes are currently held back.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn drain(&mut self, eof: bool) -> Vec<u8> {
        let buf: &[u8] = &self.pending;
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut hold = buf.len();

        let mut cursor = 0;
        for (start, format) in PREFIXES.candidates(buf) {
            if start < cursor {
                continue;
            }
            let before = match start {
                0 => self.before,
                _ => Some(buf[start - 1]),
            };
            let Some(format) = FORMATS.get(format) else {
                continue;
            };
            match format.probe(buf, start, before, eof) {
                Probe::Full(end) => {
                    spans.push((start, end));
                    cursor = end;
                }
                Probe::Partial => hold = hold.min(start),
                Probe::No => {}
            }
        }
        for (start, end, _) in self.vault.find(buf) {
            spans.push((start, end));
        }
        if !eof {
            if let Some(start) = PREFIXES.partial_tail(buf) {
                hold = hold.min(start);
            }
            if let Some(start) = self.vault.partial_tail(buf) {
                hold = hold.min(start);
            }
        }

        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start < last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }

        let mut emit_end = if eof { buf.len() } else { hold };
        // A complete secret that straddles the cut is held back whole.
        if let Some(&(start, _)) = merged
            .iter()
            .find(|(start, end)| *start < emit_end && *end > emit_end)
        {
            emit_end = start;
        }

        let mut out = Vec::with_capacity(emit_end + REDACTED.len());
        let mut pos = 0;
        for &(start, end) in &merged {
            if end > emit_end {
                break;
            }
            out.extend_from_slice(&buf[pos..start]);
            out.extend_from_slice(REDACTED);
            pos = end;
        }
        out.extend_from_slice(&buf[pos..emit_end]);
        if emit_end > 0 {
            self.before = Some(buf[emit_end - 1]);
        }
        self.pending.drain(..emit_end);
        out
    }
}

/// Redact a complete buffer in one go.
pub fn redact(vault: &VaultScanner, data: &[u8]) -> Vec<u8> {
    let mut redactor = Redactor::new(vault);
    let mut out = redactor.push(data);
    out.extend(redactor.finish());
    out
}
