//! AWS event-stream framing (Bedrock streams): whole messages, CRC-checked.

use super::*;

pub(super) const PRELUDE: usize = 12;
/// Buffers above this are given back after each message.
pub(super) const KEEP: usize = 64 << 10;

/// Bedrock's `bytes` are standard base64; accept them with or without pads.
pub(super) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Each message: `total_len u32 BE, headers_len u32 BE, prelude_crc u32,
/// headers, payload, message_crc u32`. Messages are read whole (the CRC is
/// last) up to [`MAX_EVENT`]; longer ones are skipped by length. A prelude
/// whose CRC fails means the lengths cannot be trusted: the rest is ignored.
#[derive(Default)]
pub(super) struct EventStream {
    pub(super) prelude: [u8; PRELUDE],
    pub(super) prelude_len: usize,
    pub(super) headers_len: usize,
    /// Bytes of the current message still to come after its prelude.
    pub(super) remaining: usize,
    pub(super) skip: bool,
    pub(super) broken: bool,
    /// The current message after its prelude.
    pub(super) body: Vec<u8>,
    pub(super) scanner: Scanner,
    pub(super) decoded: Vec<u8>,
}

impl EventStream {
    pub(super) fn push(&mut self, mut chunk: &[u8], targets: &[Target], tally: &mut Tally) {
        while !chunk.is_empty() && !self.broken {
            if self.remaining == 0 {
                let want = PRELUDE - self.prelude_len;
                let (head, rest) = chunk.split_at(want.min(chunk.len()));
                if let Some(dst) = self
                    .prelude
                    .get_mut(self.prelude_len..self.prelude_len + head.len())
                {
                    dst.copy_from_slice(head);
                }
                self.prelude_len += head.len();
                chunk = rest;
                if self.prelude_len == PRELUDE {
                    self.prelude_len = 0;
                    self.begin_message();
                }
            } else {
                let (head, rest) = chunk.split_at(self.remaining.min(chunk.len()));
                if !self.skip {
                    self.body.extend_from_slice(head);
                }
                self.remaining -= head.len();
                chunk = rest;
                if self.remaining == 0 {
                    if !self.skip {
                        self.message(targets, tally);
                    }
                    shrink(&mut self.body);
                    shrink(&mut self.decoded);
                    shrink(&mut self.scanner.capture);
                }
            }
        }
    }

    pub(super) fn begin_message(&mut self) {
        let [a, b, c, d, e, f, g, h, i, j, k, l] = self.prelude;
        let total = u32::from_be_bytes([a, b, c, d]) as usize;
        let headers = u32::from_be_bytes([e, f, g, h]) as usize;
        let crc = u32::from_be_bytes([i, j, k, l]);
        let sane = total >= PRELUDE + 4 && headers <= total - PRELUDE - 4;
        if crc32(0, self.prelude.get(..8).unwrap_or_default()) != crc || !sane {
            self.broken = true;
            return;
        }
        self.headers_len = headers;
        self.remaining = total - PRELUDE;
        self.skip = total > MAX_EVENT;
        self.body.clear();
    }

    pub(super) fn message(&mut self, targets: &[Target], tally: &mut Tally) {
        let Some(split) = self.body.len().checked_sub(4) else {
            return;
        };
        let (rest, crc) = self.body.split_at(split);
        let crc_ok = <[u8; 4]>::try_from(crc)
            .is_ok_and(|crc| crc32(crc32(0, &self.prelude), rest) == u32::from_be_bytes(crc));
        if !crc_ok || rest.len() < self.headers_len {
            return;
        }
        let (headers, payload) = rest.split_at(self.headers_len);
        let Some(found) = event_headers(headers) else {
            return;
        };
        if found.message_type.is_some_and(|t| t != b"event") {
            return;
        }
        let mut pending = *tally;
        match found.event_type {
            // converse-stream: `{"usage":{"inputTokens":…}, "metrics":…}`.
            Some(b"metadata") => {
                scan_whole(&mut self.scanner, payload, targets, &mut pending);
            }
            // invoke-with-response-stream: the model's own event, base64.
            Some(b"chunk") => {
                let mut ignored = Tally::default();
                if !scan_whole(&mut self.scanner, payload, CHUNK, &mut ignored) {
                    return;
                }
                let Some(b64) = self.scanner.captured() else {
                    return;
                };
                self.decoded.clear();
                if BASE64.decode_vec(b64, &mut self.decoded).is_err() {
                    return;
                }
                if !scan_whole(&mut self.scanner, &self.decoded, targets, &mut pending) {
                    return;
                }
            }
            _ => return,
        }
        *tally = pending;
    }
}

/// Scans one whole JSON document into `tally`; false (and `tally` may hold
/// partial counts, so pass a copy) unless it was well-formed.
pub(super) fn scan_whole(
    scanner: &mut Scanner,
    json: &[u8],
    targets: &[Target],
    tally: &mut Tally,
) -> bool {
    scanner.reset();
    scanner.feed(json, targets, tally);
    scanner.end();
    scanner.complete()
}

pub(super) fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP {
        buf.clear();
        buf.shrink_to(KEEP);
    }
}

/// The two string headers of a message that the meter reads.
#[derive(Default)]
pub(super) struct EventHeaders<'a> {
    pub(super) message_type: Option<&'a [u8]>,
    pub(super) event_type: Option<&'a [u8]>,
}

/// The headers, or None if they are malformed.
pub(super) fn event_headers(mut h: &[u8]) -> Option<EventHeaders<'_>> {
    let mut found = EventHeaders::default();
    while let Some((&name_len, rest)) = h.split_first() {
        let name = rest.get(..usize::from(name_len))?;
        let (&kind, rest) = rest.get(usize::from(name_len)..)?.split_first()?;
        let (value_len, rest) = match kind {
            0 | 1 => (0, rest),
            2 => (1, rest),
            3 => (2, rest),
            4 => (4, rest),
            5 | 8 => (8, rest),
            9 => (16, rest),
            6 | 7 => {
                let len = rest.get(..2)?;
                let len = u16::from_be_bytes(<[u8; 2]>::try_from(len).ok()?);
                (usize::from(len), rest.get(2..)?)
            }
            _ => return None,
        };
        let value = rest.get(..value_len)?;
        h = rest.get(value_len..)?;
        if kind == 7 {
            match name {
                b":message-type" => found.message_type = Some(value),
                b":event-type" => found.event_type = Some(value),
                _ => {}
            }
        }
    }
    Some(found)
}

pub(super) const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE), continuing from `crc` (0 to start).
pub(super) fn crc32(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}
