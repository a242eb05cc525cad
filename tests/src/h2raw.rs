//! A raw HTTP/2 client for adversarial tests: it writes frames and HPACK
//! blocks byte by byte, so it can send what a well-behaved h2 library never
//! would (a `transfer-encoding` header, CR/LF in a value, a DATA length that
//! contradicts `content-length`, endless CONTINUATION frames). It reads
//! frames back and reports how each stream ended.
//!
//! HPACK out: every field a literal without indexing, no Huffman. HPACK in:
//! only the `:status` field, which always comes first; the client announces
//! a header table of size 0 so the server never indexes dynamically.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

/// h2 error codes the tests look for.
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame read off the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// How a stream (or the connection under it) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered the stream with this status.
    Status(u16),
    /// The server reset the stream with this error code.
    Reset(u32),
    /// The server sent GOAWAY (error code) and nothing for this stream.
    GoAway(u32),
    /// The connection closed.
    Closed,
    /// Nothing within the bound.
    Silent,
}

/// A frame: 9-byte header then payload.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < (1 << 24));
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block: each field a literal without indexing, new name, raw
/// (non-Huffman) strings. Bytes are copied as given, CR and LF included.
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The usual request pseudo-headers followed by `extra`.
pub fn request_block(
    method: &str,
    authority: &str,
    path: &str,
    extra: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":scheme", b"https"),
        (b":authority", authority.as_bytes()),
        (b":path", path.as_bytes()),
    ];
    fields.extend_from_slice(extra);
    block(&fields)
}

/// The `:status` of a response header block (the first field).
pub fn status_of(block: &[u8]) -> Option<u16> {
    let mut i = 0;
    // Dynamic table size updates (001xxxxx) may lead the block.
    while i < block.len() && block[i] & 0xe0 == 0x20 {
        let long = block[i] & 0x1f == 0x1f;
        i += 1;
        if long {
            // Continuation bytes: high bit set on all but the last.
            while i < block.len() && block[i] & 0x80 != 0 {
                i += 1;
            }
            i += 1;
        }
    }
    let b = *block.get(i)?;
    if b & 0x80 != 0 {
        // Indexed field: the static table's :status entries.
        return match b & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // A literal whose name is static index 8 (`:status`), any of the three forms.
    let name_idx = if b & 0x40 != 0 { b & 0x3f } else { b & 0x0f };
    if name_idx != 8 {
        return None;
    }
    let head = *block.get(i + 1)?;
    let len = usize::from(head & 0x7f);
    let s = block.get(i + 2..i + 2 + len)?;
    let text = if head & 0x80 != 0 {
        huffman_digits(s)?
    } else {
        String::from_utf8(s.to_vec()).ok()?
    };
    text.parse().ok()
}

/// Decodes a Huffman string of ASCII digits (all a status can hold).
fn huffman_digits(s: &[u8]) -> Option<String> {
    let bits: Vec<u8> = s
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let take = |i: usize, n: usize| -> Option<u8> {
        bits.get(i..i + n)
            .map(|b| b.iter().fold(0u8, |acc, x| (acc << 1) | x))
    };
    while i < bits.len() {
        // What is left is padding: all ones, shorter than a byte.
        if bits.len() - i < 8 && bits[i..].iter().all(|b| *b == 1) {
            break;
        }
        if let Some(v @ 0..=2) = take(i, 5) {
            out.push(char::from(b'0' + v));
            i += 5;
            continue;
        }
        match take(i, 6) {
            Some(v @ 0x19..=0x1f) => {
                out.push(char::from(b'3' + (v - 0x19)));
                i += 6;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A raw h2 connection over any byte stream (a TLS tunnel through the proxy).
pub struct RawH2<S> {
    pub io: S,
    buf: Vec<u8>,
    /// Frames read but not yet asked for.
    pub frames: Vec<Frame>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawH2<S> {
    /// Sends the preface and SETTINGS (header table 0, a large window so the
    /// server's responses never stall on flow control).
    pub async fn handshake(mut io: S) -> std::io::Result<RawH2<S>> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut settings = Vec::new();
        settings.extend_from_slice(&1u16.to_be_bytes()); // HEADER_TABLE_SIZE
        settings.extend_from_slice(&0u32.to_be_bytes());
        settings.extend_from_slice(&4u16.to_be_bytes()); // INITIAL_WINDOW_SIZE
        settings.extend_from_slice(&(1u32 << 24).to_be_bytes());
        out.extend(frame(SETTINGS, 0, 0, &settings));
        out.extend(frame(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes()));
        io.write_all(&out).await?;
        io.flush().await?;
        Ok(RawH2 {
            io,
            buf: Vec::new(),
            frames: Vec::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// One HEADERS frame carrying the whole block.
    pub async fn headers(
        &mut self,
        stream: u32,
        block: &[u8],
        end_stream: bool,
    ) -> std::io::Result<()> {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.send(&frame(HEADERS, flags, stream, block)).await
    }

    pub async fn data(
        &mut self,
        stream: u32,
        data: &[u8],
        end_stream: bool,
    ) -> std::io::Result<()> {
        let flags = if end_stream { END_STREAM } else { 0 };
        self.send(&frame(DATA, flags, stream, data)).await
    }

    /// Reads the next frame (answering SETTINGS and PING as a peer must), or
    /// `None` on EOF, error or timeout.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        ty: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.ty == SETTINGS && f.flags & ACK == 0 {
                        let _ = self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    if f.ty == PING && f.flags & ACK == 0 {
                        let _ = self.send(&frame(PING, ACK, 0, &f.payload)).await;
                    }
                    return Some(f);
                }
            }
            let mut chunk = vec![0u8; 16 * 1024];
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.io.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until `stream` gets response headers or a reset, or the
    /// connection goes away. Every frame read is kept in `frames`.
    pub async fn outcome(&mut self, stream: u32, within: Duration) -> Outcome {
        let deadline = tokio::time::Instant::now() + within;
        let mut goaway = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.next_frame(left).await else {
                return match goaway {
                    Some(code) => Outcome::GoAway(code),
                    None if tokio::time::Instant::now() >= deadline => Outcome::Silent,
                    None => Outcome::Closed,
                };
            };
            self.frames.push(f.clone());
            match f.ty {
                HEADERS if f.stream == stream => {
                    return status_of(&f.payload).map_or(Outcome::Silent, Outcome::Status);
                }
                RST_STREAM if f.stream == stream && f.payload.len() >= 4 => {
                    let code = u32::from_be_bytes([
                        f.payload[0],
                        f.payload[1],
                        f.payload[2],
                        f.payload[3],
                    ]);
                    return Outcome::Reset(code);
                }
                GOAWAY if f.payload.len() >= 8 => {
                    let last = u32::from_be_bytes([
                        f.payload[0],
                        f.payload[1],
                        f.payload[2],
                        f.payload[3],
                    ]) & 0x7fff_ffff;
                    let code = u32::from_be_bytes([
                        f.payload[4],
                        f.payload[5],
                        f.payload[6],
                        f.payload[7],
                    ]);
                    if last < stream {
                        return Outcome::GoAway(code);
                    }
                    goaway = Some(code);
                }
                _ => {}
            }
        }
    }

    /// The DATA the server sent on `stream` so far (from `frames`) plus what
    /// arrives until it ends the stream.
    pub async fn body(&mut self, stream: u32, within: Duration) -> Vec<u8> {
        let mut out: Vec<u8> = self
            .frames
            .iter()
            .filter(|f| f.ty == DATA && f.stream == stream)
            .flat_map(|f| f.payload.clone())
            .collect();
        if self
            .frames
            .iter()
            .any(|f| f.stream == stream && f.flags & END_STREAM != 0)
        {
            return out;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.next_frame(left).await else {
                return out;
            };
            if f.stream == stream && (f.ty == DATA || f.ty == HEADERS) {
                if f.ty == DATA {
                    out.extend_from_slice(&f.payload);
                }
                if f.flags & END_STREAM != 0 {
                    return out;
                }
            }
            if f.stream == stream && f.ty == RST_STREAM {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_read_from_indexed_and_huffman_literals() {
        assert_eq!(status_of(&[0x88]), Some(200));
        assert_eq!(status_of(&[0x20, 0x8c]), Some(400));
        let lit = [0x08, 0x03, b'4', b'2', b'1'];
        assert_eq!(status_of(&lit), Some(421));
        // 4 = 011010, 0 = 00000, 3 = 011001, then ones: 01101000 00011001 1111111
        let huff = [0x08, 0x83, 0b0110_1000, 0b0000_1100, 0b1111_1111];
        assert_eq!(status_of(&huff), Some(403));
    }

    #[test]
    fn frame_header_is_length_type_flags_stream() {
        let f = frame(HEADERS, END_HEADERS, 3, b"abc");
        assert_eq!(&f[..9], &[0, 0, 3, 1, 4, 0, 0, 0, 3]);
    }
}
