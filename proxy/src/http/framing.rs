//! Strict HTTP/1 framing guard (SPEC §3 step 5.2).
//!
//! Request smuggling lives in the gaps between two parsers' ideas of where a
//! request ends. hyper is lenient in places (it silently drops a
//! Content-Length that follows Transfer-Encoding, accepts bare LF line ends and
//! identical duplicate Content-Length headers), so every HTTP/1 byte a client
//! sends passes through [`FramingGuard`] before hyper sees it.
//!
//! The guard tracks request boundaries itself: it withholds each request head
//! until the whole head is in and valid, then lets the body through by its
//! declared framing (Content-Length or strict chunked). A bad head is never
//! shown to hyper. Instead the guard substitutes a synthetic request carrying
//! a per-connection secret nonce, which the service answers with `400
//! bad_framing` (in order, after any earlier pipelined response), and then
//! ends the stream so the connection closes. A violation inside a chunked body
//! cannot be answered in order, so the guard fails the read and hyper drops the
//! connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header that carries the guard's verdict on a synthetic request.
pub const FRAMING_HEADER: &str = "x-portcullis-framing";

/// Raw read size. Requests are small and the TLS layer below buffers whole records, so
/// 4 KiB reads cost a large body a few more calls and save every idle connection 4 KiB.
const IN_BUF: usize = 4 * 1024;
const MAX_CHUNK_LINE: usize = 1024;
/// hyper's own limit (its default, 100): the guard refuses first, so a head
/// with too many headers gets a recorded `431` instead of hyper's bare one.
const MAX_HEADERS: usize = 100;

/// Why a request's framing was refused. Codes are stable and appear in the
/// client's error body and in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    ContentLengthAndTransferEncoding,
    DuplicateContentLength,
    BadContentLength,
    UnsupportedTransferEncoding,
    BareLf,
    BareCr,
    NulByte,
    ObsFold,
    MultipleHost,
    HeadTooLarge,
    MalformedHead,
    BadChunk,
}

impl Violation {
    pub fn code(self) -> &'static str {
        match self {
            Violation::ContentLengthAndTransferEncoding => "cl_and_te",
            Violation::DuplicateContentLength => "duplicate_content_length",
            Violation::BadContentLength => "bad_content_length",
            Violation::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Violation::BareLf => "bare_lf",
            Violation::BareCr => "bare_cr",
            Violation::NulByte => "nul_byte",
            Violation::ObsFold => "obs_fold",
            Violation::MultipleHost => "multiple_host",
            Violation::HeadTooLarge => "head_too_large",
            Violation::MalformedHead => "malformed_head",
            Violation::BadChunk => "bad_chunk",
        }
    }

    pub fn from_code(code: &str) -> Option<Violation> {
        ALL_VIOLATIONS.iter().copied().find(|v| v.code() == code)
    }

    /// A head too large is 431; every other violation is a plain 400.
    pub fn status(self) -> u16 {
        match self {
            Violation::HeadTooLarge => 431,
            _ => 400,
        }
    }
}

const ALL_VIOLATIONS: &[Violation] = &[
    Violation::ContentLengthAndTransferEncoding,
    Violation::DuplicateContentLength,
    Violation::BadContentLength,
    Violation::UnsupportedTransferEncoding,
    Violation::BareLf,
    Violation::BareCr,
    Violation::NulByte,
    Violation::ObsFold,
    Violation::MultipleHost,
    Violation::HeadTooLarge,
    Violation::MalformedHead,
    Violation::BadChunk,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a request head into `head`.
    Head,
    /// Passing `n` more body bytes.
    Body(u64),
    /// Chunk-size line of a chunked body.
    ChunkSize,
    /// Passing chunk data, then expecting CRLF.
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// Trailer section after the last chunk.
    Trailers,
    /// After CONNECT or an Upgrade request: the bytes are no longer HTTP/1.
    Passthrough,
    /// A synthetic error head was queued; EOF once it drains.
    Closed,
    /// A body-level violation: fail every read.
    Failed,
}

/// Wraps a client stream and enforces strict HTTP/1 framing on what it reads.
pub struct FramingGuard<S> {
    inner: S,
    state: State,
    nonce: String,
    max_head: usize,
    /// Head bytes seen so far (only while `state == Head`).
    head: Vec<u8>,
    /// Bytes validated and waiting to be handed to hyper.
    out: Vec<u8>,
    out_pos: usize,
    /// Raw bytes read from `inner` and not yet classified.
    inbuf: Box<[u8]>,
    in_pos: usize,
    in_len: usize,
    /// Per-line scanner state for heads, chunk lines and trailers.
    line: LineScan,
    chunk_size: u64,
    chunk_digits: usize,
    chunk_in_ext: bool,
    line_len: usize,
    trailer_len: usize,
    /// A synthetic error head was queued.
    rejected: bool,
    /// Part of a head is in and the rest is not: what a header-read timeout
    /// cut off, for the connection's refusal record.
    partial_head: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug, Default)]
struct LineScan {
    prev: u8,
    at_line_start: bool,
    lines: usize,
}

impl<S> FramingGuard<S> {
    /// `nonce` is the per-connection secret that marks synthetic error heads.
    pub fn new(inner: S, nonce: String, max_head: usize) -> Self {
        FramingGuard {
            inner,
            state: State::Head,
            nonce,
            max_head,
            head: Vec::with_capacity(1024),
            out: Vec::new(),
            out_pos: 0,
            inbuf: vec![0u8; IN_BUF].into_boxed_slice(),
            in_pos: 0,
            in_len: 0,
            line: LineScan {
                at_line_start: true,
                ..LineScan::default()
            },
            chunk_size: 0,
            chunk_digits: 0,
            chunk_in_ext: false,
            line_len: 0,
            trailer_len: 0,
            rejected: false,
            partial_head: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True while a request head has started but not ended.
    pub fn partial_head(&self) -> Arc<AtomicBool> {
        self.partial_head.clone()
    }

    fn reject_head(&mut self, v: Violation) {
        self.partial_head.store(false, Ordering::Relaxed);
        tracing::info!(violation = v.code(), "refusing request with bad framing");
        self.head.clear();
        self.out.extend_from_slice(
            format!(
                "GET /portcullis-framing-error HTTP/1.1\r\nhost: portcullis.invalid\r\n{FRAMING_HEADER}: {} {}\r\n\r\n",
                self.nonce,
                v.code()
            )
            .as_bytes(),
        );
        self.state = State::Closed;
        self.rejected = true;
        self.in_pos = self.in_len;
    }

    fn fail_body(&mut self, v: Violation) {
        tracing::info!(violation = v.code(), "closing connection: bad body framing");
        self.state = State::Failed;
        self.in_pos = self.in_len;
    }

    fn start_line_scan(&mut self) {
        self.line = LineScan {
            at_line_start: true,
            ..LineScan::default()
        };
    }

    /// Classifies the pending input according to the current state. Body
    /// bytes are moved to `out` in bulk; heads and chunk lines byte by byte
    /// (they are short).
    fn process(&mut self) {
        while self.in_pos < self.in_len {
            match self.state {
                State::Head => {
                    let b = self.inbuf[self.in_pos];
                    self.in_pos += 1;
                    // Tolerate the empty lines some clients send between requests.
                    if self.head.is_empty() && self.line.lines == 0 && (b == b'\r' || b == b'\n') {
                        if b == b'\n' && self.line.prev != b'\r' {
                            return self.reject_head(Violation::BareLf);
                        }
                        self.line.prev = b;
                        continue;
                    }
                    if self.head.is_empty() {
                        if self.line.prev == b'\r' {
                            return self.reject_head(Violation::BareCr);
                        }
                        self.line.prev = 0;
                    }
                    if let Err(v) = scan_line_byte(&mut self.line, b, true) {
                        return self.reject_head(v);
                    }
                    if self.head.is_empty() {
                        self.partial_head.store(true, Ordering::Relaxed);
                    }
                    self.head.push(b);
                    if self.head.len() > self.max_head {
                        return self.reject_head(Violation::HeadTooLarge);
                    }
                    if self.head.ends_with(b"\r\n\r\n") {
                        match check_head(&self.head) {
                            Ok(next) => {
                                self.out.append(&mut self.head);
                                self.partial_head.store(false, Ordering::Relaxed);
                                self.start_line_scan();
                                self.state = next;
                                if next == State::ChunkSize {
                                    self.reset_chunk_line();
                                }
                                return;
                            }
                            Err(v) => return self.reject_head(v),
                        }
                    }
                }
                State::Body(n) => {
                    let take =
                        (self.in_len - self.in_pos).min(usize::try_from(n).unwrap_or(usize::MAX));
                    self.out
                        .extend_from_slice(&self.inbuf[self.in_pos..self.in_pos + take]);
                    self.in_pos += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                    if left == 0 {
                        self.start_line_scan();
                    }
                }
                State::ChunkData(n) => {
                    let take =
                        (self.in_len - self.in_pos).min(usize::try_from(n).unwrap_or(usize::MAX));
                    self.out
                        .extend_from_slice(&self.inbuf[self.in_pos..self.in_pos + take]);
                    self.in_pos += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataCr
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkDataCr | State::ChunkDataLf => {
                    let b = self.inbuf[self.in_pos];
                    self.in_pos += 1;
                    let want = if self.state == State::ChunkDataCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if b != want {
                        return self.fail_body(Violation::BadChunk);
                    }
                    self.out.push(b);
                    if self.state == State::ChunkDataCr {
                        self.state = State::ChunkDataLf;
                    } else {
                        self.state = State::ChunkSize;
                        self.reset_chunk_line();
                    }
                }
                State::ChunkSize => {
                    let b = self.inbuf[self.in_pos];
                    self.in_pos += 1;
                    if let Err(v) = self.chunk_size_byte(b) {
                        return self.fail_body(v);
                    }
                    self.out.push(b);
                }
                State::Trailers => {
                    let b = self.inbuf[self.in_pos];
                    self.in_pos += 1;
                    if let Err(v) = scan_line_byte(&mut self.line, b, true) {
                        return self.fail_body(v);
                    }
                    self.out.push(b);
                    self.line_len += 1;
                    self.trailer_len += 1;
                    if self.trailer_len > self.max_head {
                        return self.fail_body(Violation::HeadTooLarge);
                    }
                    if b == b'\n' {
                        // The trailer section ends with an empty line.
                        if self.line_len == 2 {
                            self.state = State::Head;
                            self.start_line_scan();
                        }
                        self.line_len = 0;
                    }
                }
                State::Passthrough | State::Closed | State::Failed => return,
            }
        }
    }

    fn reset_chunk_line(&mut self) {
        self.chunk_size = 0;
        self.chunk_digits = 0;
        self.chunk_in_ext = false;
        self.line_len = 0;
        self.line.prev = 0;
    }

    fn chunk_size_byte(&mut self, b: u8) -> Result<(), Violation> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            return Err(Violation::BadChunk);
        }
        if b == 0 {
            return Err(Violation::NulByte);
        }
        if self.line.prev == b'\r' {
            if b != b'\n' {
                return Err(Violation::BareCr);
            }
            if self.chunk_digits == 0 {
                return Err(Violation::BadChunk);
            }
            if self.chunk_size == 0 {
                self.state = State::Trailers;
                self.start_line_scan();
                self.line_len = 0;
                self.trailer_len = 0;
            } else {
                self.state = State::ChunkData(self.chunk_size);
            }
            return Ok(());
        }
        match b {
            b'\n' => return Err(Violation::BareLf),
            b'\r' => {}
            _ if self.chunk_in_ext => {}
            b';' => self.chunk_in_ext = true,
            _ => {
                let d = (b as char).to_digit(16).ok_or(Violation::BadChunk)?;
                self.chunk_digits += 1;
                // 15 hex digits is far beyond any real body; more is an overflow attempt.
                if self.chunk_digits > 15 {
                    return Err(Violation::BadChunk);
                }
                self.chunk_size = self.chunk_size * 16 + u64::from(d);
            }
        }
        self.line.prev = b;
        Ok(())
    }
}

/// Checks one byte of a header-like line: no NUL, CR only before LF, no bare
/// LF, no continuation (obs-fold) lines.
fn scan_line_byte(line: &mut LineScan, b: u8, fold_check: bool) -> Result<(), Violation> {
    if b == 0 {
        return Err(Violation::NulByte);
    }
    if line.prev == b'\r' && b != b'\n' {
        return Err(Violation::BareCr);
    }
    if b == b'\n' && line.prev != b'\r' {
        return Err(Violation::BareLf);
    }
    if fold_check && line.at_line_start && line.lines > 0 && (b == b' ' || b == b'\t') {
        return Err(Violation::ObsFold);
    }
    if b == b'\n' {
        line.lines += 1;
        line.at_line_start = true;
    } else {
        line.at_line_start = false;
    }
    line.prev = b;
    Ok(())
}

/// Validates a complete head (ending in CRLFCRLF) and returns the state for
/// what follows it.
fn check_head(head: &[u8]) -> Result<State, Violation> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(Violation::HeadTooLarge),
        _ => return Err(Violation::MalformedHead),
    }
    let mut hosts = 0usize;
    let mut content_length: Option<u64> = None;
    let mut cl_count = 0usize;
    let mut te_count = 0usize;
    let mut te_chunked = false;
    let mut upgrade = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            cl_count += 1;
            content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_count += 1;
            let v =
                std::str::from_utf8(h.value).map_err(|_| Violation::UnsupportedTransferEncoding)?;
            if !v.trim().eq_ignore_ascii_case("chunked") {
                return Err(Violation::UnsupportedTransferEncoding);
            }
            te_chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if hosts > 1 {
        return Err(Violation::MultipleHost);
    }
    if cl_count > 1 {
        return Err(Violation::DuplicateContentLength);
    }
    if te_count > 1 {
        return Err(Violation::UnsupportedTransferEncoding);
    }
    if te_count > 0 && cl_count > 0 {
        return Err(Violation::ContentLengthAndTransferEncoding);
    }
    if te_count > 0 && req.version == Some(0) {
        // HTTP/1.0 has no chunked coding; a TE header there is an attack.
        return Err(Violation::UnsupportedTransferEncoding);
    }
    if req.method == Some("CONNECT") || upgrade {
        // After CONNECT or an accepted Upgrade the bytes are no longer HTTP/1;
        // the service closes the connection if it refuses the upgrade.
        if te_chunked || content_length.unwrap_or(0) > 0 {
            return Err(Violation::MalformedHead);
        }
        return Ok(State::Passthrough);
    }
    if te_chunked {
        return Ok(State::ChunkSize);
    }
    match content_length {
        Some(n) if n > 0 => Ok(State::Body(n)),
        _ => Ok(State::Head),
    }
}

fn parse_content_length(v: &[u8]) -> Result<u64, Violation> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Violation::BadContentLength);
    }
    v.iter()
        .try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(Violation::BadContentLength)
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                // Never EOF here: hyper would drop the pending error response
                // (it treats read EOF as the client going away). The response
                // carries `Connection: close`, so hyper ends the connection
                // itself once it is written.
                State::Closed if this.rejected => return Poll::Pending,
                State::Closed => return Poll::Ready(Ok(())),
                State::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "HTTP/1 framing violation",
                    )))
                }
                State::Passthrough if this.in_pos == this.in_len => {
                    // A tunnel reads straight into the caller's buffer from here on: give
                    // back the guard's buffers, which every open tunnel would keep.
                    if !this.inbuf.is_empty() {
                        this.inbuf = Box::default();
                        this.head = Vec::new();
                        this.out = Vec::new();
                        this.in_pos = 0;
                        this.in_len = 0;
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                State::Passthrough => {
                    this.out
                        .extend_from_slice(&this.inbuf[this.in_pos..this.in_len]);
                    this.in_pos = this.in_len;
                    continue;
                }
                _ => {}
            }
            if this.in_pos < this.in_len {
                this.process();
                continue;
            }
            let mut rb = ReadBuf::new(&mut this.inbuf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                // Client closed. A partial head is dropped, never forwarded.
                this.state = State::Closed;
                return Poll::Ready(Ok(()));
            }
            this.in_pos = 0;
            this.in_len = n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The guard's verdict on a request: `Some` when this is the synthetic request
/// that replaced a bad head (it carries this connection's nonce).
pub fn violation_of<B>(req: &http::Request<B>, nonce: &str) -> Option<Violation> {
    use subtle::ConstantTimeEq;
    let v = req.headers().get(FRAMING_HEADER)?.to_str().ok()?;
    let (n, code) = v.split_once(' ')?;
    // A client must not be able to forge the marker: compare in constant time.
    if n.len() != nonce.len() || !bool::from(n.as_bytes().ct_eq(nonce.as_bytes())) {
        return None;
    }
    Some(Violation::from_code(code).unwrap_or(Violation::MalformedHead))
}

#[cfg(test)]
mod tests;
