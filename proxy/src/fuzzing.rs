//! Entry points for the fuzz targets (`fuzz/`) and the property tests (`tests/prop.rs`).
//! Not a supported API.
//!
//! The framing guard, the path canonicaliser and the usage meter are crate-private: nothing
//! outside the proxy should build on them. A fuzzer still has to reach them from outside
//! the crate, so this module re-exports exactly those three and adds one synchronous driver
//! for the guard (an `AsyncRead` wrapper) that needs no runtime. It adds no behaviour.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

pub use crate::http::framing::Violation;
pub use crate::http::path::{canonicalize, PathError};
pub use crate::http::usage::{ApiStyle, Usage, UsageMeter};

use crate::http::framing::{FramingGuard, FRAMING_HEADER};

/// The nonce that marks the guard's synthetic error heads in [`frame`].
pub const NONCE: &str = "fuzzing-nonce-5f0c9a1e7d3b2468";

/// What the framing guard let through for one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framed {
    /// The client bytes passed to hyper, without the synthetic error head.
    pub passed: Vec<u8>,
    /// How the stream ended.
    pub end: FrameEnd,
}

/// How a framed stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameEnd {
    /// The input ran out with no violation.
    Eof,
    /// A bad head was replaced by the synthetic error request for this violation.
    Refused(Violation),
    /// A violation inside a chunked body failed the read.
    Failed,
}

/// Runs `chunks`, as successive reads of a client socket, through a fresh
/// `FramingGuard` with a head limit of `max_head`, and reads it to the end.
pub fn frame(chunks: &[&[u8]], max_head: usize) -> Framed {
    let reader = Chunks {
        chunks: chunks
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| c.to_vec())
            .collect(),
        next: 0,
        pos: 0,
    };
    let mut guard = FramingGuard::new(reader, NONCE.to_owned(), max_head);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => break FrameEnd::Eof,
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(_)) => break FrameEnd::Failed,
            // The reader never waits, so the guard waits only after queueing an error head
            // (it never reports EOF then; hyper closes the connection instead).
            Poll::Pending => break refused(&mut out),
        }
    };
    Framed { passed: out, end }
}

/// Cuts the synthetic error head off the end of `out` and reads its verdict.
fn refused(out: &mut Vec<u8>) -> FrameEnd {
    let marker = format!("GET /portcullis-framing-error HTTP/1.1\r\nhost: portcullis.invalid\r\n{FRAMING_HEADER}: {NONCE} ");
    let Some(at) = find_last(out, marker.as_bytes()) else {
        return FrameEnd::Refused(Violation::MalformedHead);
    };
    let code = String::from_utf8_lossy(&out[at + marker.len()..]);
    let violation = code
        .strip_suffix("\r\n\r\n")
        .and_then(Violation::from_code)
        .unwrap_or(Violation::MalformedHead);
    out.truncate(at);
    FrameEnd::Refused(violation)
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// A client socket that returns one chunk per read, then EOF. It is never pending.
struct Chunks {
    chunks: Vec<Vec<u8>>,
    next: usize,
    pos: usize,
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(chunk) = this.chunks.get(this.next) {
            let rest = chunk.get(this.pos..).unwrap_or_default();
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos >= chunk.len() {
                this.next += 1;
                this.pos = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}
