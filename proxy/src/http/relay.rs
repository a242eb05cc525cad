//! Raw byte relay for spliced tunnels and WebSocket sessions: both ways at
//! once, counted, with an idle timeout and an outside stop (shutdown, or a
//! reload that removed the route).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::End;

/// Why a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed.
    Complete,
    /// No byte moved for the idle timeout.
    Idle,
    /// The stop future fired.
    Stopped,
    /// A read or write failed.
    Error,
}

impl From<RelayEnd> for End {
    /// How a relay's ending reads in the outcome record. `Stopped` is read as
    /// a shutdown; a caller with another stop says so itself.
    fn from(end: RelayEnd) -> End {
        match end {
            RelayEnd::Complete => End::Complete,
            RelayEnd::Idle => End::IdleTimeout,
            RelayEnd::Stopped => End::Shutdown,
            RelayEnd::Error => End::ClientAbort,
        }
    }
}

/// Bytes moved `a → b` (up) and `b → a` (down), and how it ended.
#[derive(Clone, Copy, Debug)]
pub struct Relayed {
    pub up: u64,
    pub down: u64,
    pub end: RelayEnd,
}

/// Copies both ways until both sides close, one fails, nothing moves for
/// `idle`, or `stop` completes.
pub async fn relay<A, B, F>(a: A, b: B, idle: Duration, stop: F) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let mut a = Counting {
        inner: a,
        read: up.clone(),
    };
    let mut b = Counting {
        inner: b,
        read: down.clone(),
    };
    let end = {
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::pin!(copy);
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(idle);
        tick.reset();
        let mut seen = 0u64;
        loop {
            tokio::select! {
                r = &mut copy => break if r.is_ok() { RelayEnd::Complete } else { RelayEnd::Error },
                _ = &mut stop => break RelayEnd::Stopped,
                _ = tick.tick() => {
                    let now = up.load(Ordering::Relaxed) + down.load(Ordering::Relaxed);
                    if now == seen {
                        break RelayEnd::Idle;
                    }
                    seen = now;
                }
            }
        }
    };
    Relayed {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        end,
    }
}

/// Counts the bytes read from `inner` (which are the bytes written to the other side).
struct Counting<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relay_counts_both_directions_and_completes_when_both_close() {
        let (a_outer, a_inner) = tokio::io::duplex(64);
        let (b_inner, b_outer) = tokio::io::duplex(64);
        let task = tokio::spawn(relay(
            a_inner,
            b_inner,
            Duration::from_secs(10),
            std::future::pending(),
        ));
        let (mut ar, mut aw) = tokio::io::split(a_outer);
        let (mut br, mut bw) = tokio::io::split(b_outer);
        aw.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        br.read_exact(&mut buf).await.unwrap();
        bw.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        ar.read_exact(&mut buf).await.unwrap();
        aw.shutdown().await.unwrap();
        bw.shutdown().await.unwrap();
        let r = task.await.unwrap();
        assert_eq!((r.up, r.down, r.end), (5, 2, RelayEnd::Complete));
    }

    #[tokio::test(start_paused = true)]
    async fn relay_with_no_traffic_ends_idle() {
        let (_a_outer, a_inner) = tokio::io::duplex(64);
        let (b_inner, _b_outer) = tokio::io::duplex(64);
        let r = relay(
            a_inner,
            b_inner,
            Duration::from_secs(30),
            std::future::pending(),
        )
        .await;
        assert_eq!(r.end, RelayEnd::Idle);
    }

    #[tokio::test]
    async fn relay_ends_when_stopped() {
        let (_a_outer, a_inner) = tokio::io::duplex(64);
        let (b_inner, _b_outer) = tokio::io::duplex(64);
        let r = relay(a_inner, b_inner, Duration::from_secs(30), async {}).await;
        assert_eq!(r.end, RelayEnd::Stopped);
    }
}
