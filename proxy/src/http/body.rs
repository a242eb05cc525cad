//! Body types: one boxed body for everything we send, and a metering wrapper
//! that streams frames untouched while counting them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request we forward and every response we return.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// How a streamed body ended; feeds the outcome record (SPEC §3 step 5.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum End {
    Complete,
    ClientAbort,
    UpstreamError,
    /// The proxy was shutting down and could not wait any longer.
    Shutdown,
    /// A relay (splice or WebSocket) moved no byte for the idle timeout.
    IdleTimeout,
    /// A reload took away the route a spliced tunnel was using.
    PolicyChanged,
    /// The response passed the route's hard cap on output tokens and was cut.
    BudgetCut,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::ClientAbort => "client_abort",
            End::UpstreamError => "upstream_error",
            End::Shutdown => "shutdown",
            End::IdleTimeout => "idle_timeout",
            End::PolicyChanged => "policy_changed",
            End::BudgetCut => "budget_cut",
        }
    }
}

/// Sees every data chunk of a metered body as it passes, without holding it.
pub trait Tap: Send + 'static {
    /// `false` cuts the stream after this chunk.
    fn chunk(&mut self, data: &[u8]) -> bool;
}

/// No tap: only bytes are counted.
impl Tap for () {
    fn chunk(&mut self, _data: &[u8]) -> bool {
        true
    }
}

type OnEnd<T> = Box<dyn FnOnce(u64, End, T) + Send>;

/// Passes frames through as they arrive (no buffering), shows each chunk to
/// its tap, and reports the byte count, the tap and the way the stream ended
/// exactly once: at end of stream, on an upstream error, when the tap cuts
/// it, or when dropped early because the client went away.
pub struct Metered<B: Body, T: Tap = ()> {
    inner: B,
    bytes: u64,
    tap: Option<T>,
    cut: bool,
    on_end: Option<OnEnd<T>>,
}

impl<B: Body> Metered<B, ()> {
    pub fn new(inner: B, on_end: impl FnOnce(u64, End) + Send + 'static) -> Self {
        Metered::tapped(inner, (), move |bytes, end, ()| on_end(bytes, end))
    }
}

impl<B: Body, T: Tap> Metered<B, T> {
    pub fn tapped(inner: B, tap: T, on_end: impl FnOnce(u64, End, T) + Send + 'static) -> Self {
        Metered {
            inner,
            bytes: 0,
            tap: Some(tap),
            cut: false,
            on_end: Some(Box::new(on_end)),
        }
    }

    fn finish(&mut self, end: End) {
        if let (Some(f), Some(tap)) = (self.on_end.take(), self.tap.take()) {
            f(self.bytes, end, tap);
        }
    }
}

impl<B, T> Body for Metered<B, T>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    T: Tap + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.cut {
            this.finish(End::BudgetCut);
            return Poll::Ready(Some(Err(
                "the response passed its hard cap on output tokens".into(),
            )));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                    if let Some(tap) = this.tap.as_mut() {
                        // The chunk that crosses the cap still goes; the next poll cuts.
                        this.cut = !tap.chunk(d);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(End::UpstreamError);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(End::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, T: Tap> Drop for Metered<B, T> {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            // An empty body hyper never needed to poll still counts as complete.
            let end = if self.inner.is_end_stream() {
                End::Complete
            } else {
                End::ClientAbort
            };
            self.finish(end);
        }
    }
}

/// A body whose first bytes were already read for inspection: replays them,
/// then streams the rest untouched.
pub struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Bytes, rest: B) -> Self {
        Prefixed {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            rest,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

/// A request body that must keep moving (slow POST guard): when no frame
/// arrives for `idle`, it ends with [`BodyStalled`]. The timer is reset once
/// per frame, never per byte.
pub struct Progress<B> {
    inner: B,
    idle: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// A request body sent nothing for longer than the progress timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyStalled(pub std::time::Duration);

impl<B> Progress<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        Progress {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> Body for Progress<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match std::future::Future::poll(this.timer.as_mut(), cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(this.idle).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The first `max` bytes of a request body (SPEC §3 step 5.3): the part the
/// policy inspects. `rest` is the unread remainder when the body was longer.
pub struct Inspected<B> {
    pub prefix: Bytes,
    pub truncated: bool,
    pub rest: Option<B>,
}

/// Reads a body up to `max` bytes. Trailers, if any, are dropped. Wrap the
/// body in [`Progress`] first: a client that stops sending is then given up
/// on, since a held read would pin its connection for good.
pub async fn read_bounded<B>(mut body: B, max: u64) -> Result<Inspected<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut buf = bytes::BytesMut::new();
    if body.is_end_stream() {
        return Ok(Inspected {
            prefix: Bytes::new(),
            truncated: false,
            rest: None,
        });
    }
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() as u64 > max {
                return Ok(Inspected {
                    prefix: buf.freeze(),
                    truncated: true,
                    rest: Some(body),
                });
            }
        }
    }
    Ok(Inspected {
        prefix: buf.freeze(),
        truncated: false,
        rest: None,
    })
}

/// Replaces any key the proxy holds, and any well-known key format, with
/// `[REDACTED]` as the response streams (SPEC §6). The redactor holds back
/// only bytes that could still be the start of a secret, so events flow on.
pub struct Redacting<B> {
    inner: B,
    redactor: portcullis_rules::Redactor,
    done: bool,
}

impl<B> Redacting<B> {
    pub fn new(inner: B, redactor: portcullis_rules::Redactor) -> Self {
        Redacting {
            inner,
            redactor,
            done: false,
        }
    }
}

impl<B> Body for Redacting<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        // The common case: nothing to redact or hold, so no copy.
                        if this.redactor.passes_unchanged(&data) {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        let out = this.redactor.push(&data);
                        if out.is_empty() {
                            // Held back as a possible secret prefix; read on.
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = this.redactor.finish();
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
