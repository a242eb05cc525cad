//! The inspection memory budget (`[limits] inspect_memory`, `inspect_memory_per_tenant`).
//!
//! A request body is held in memory while it is inspected (up to `max_inspect_body`), and
//! until the request has gone upstream. Without a bound, a few agents sending large bodies
//! at once could take all the proxy's memory. So the bytes held draw from two budgets of
//! KiB permits: one for the whole proxy and one per tenant. They are taken as the buffer
//! grows, a frame at a time (in 64 KiB steps past the first 64 KiB), so a small body takes
//! a little and an empty one nothing; and they are held by a [`Lease`] until the request
//! is done with the buffer. A body that cannot get its share within a second is refused
//! `503 memory_budget`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::body::BoxError;

const KIB: u64 = 1024;
/// Past the first step, permits are taken this many KiB at a time.
const STEP_KIB: u32 = 64;

/// A body could not get its share of the budget in time.
#[derive(Debug, thiserror::Error)]
#[error("no inspection memory to spare within {0:?}")]
pub struct MemoryExhausted(pub Duration);

/// The two budgets.
pub struct InspectMemory {
    global: Arc<Semaphore>,
    per_tenant_kib: u32,
    tenants: RwLock<HashMap<String, Arc<Semaphore>>>,
    /// Most one request takes: `max_inspect_body`. The buffer may pass it by one frame,
    /// which is not counted; every body of the largest size fits an idle budget.
    cap_kib: u32,
    wait: Duration,
}

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(KIB)).unwrap_or(u32::MAX)
}

impl InspectMemory {
    pub fn new(total: u64, per_tenant: u64, max_body: u64, wait: Duration) -> Self {
        let total = (kib(total) as usize).min(Semaphore::MAX_PERMITS);
        InspectMemory {
            global: Arc::new(Semaphore::new(total)),
            per_tenant_kib: kib(per_tenant),
            tenants: RwLock::new(HashMap::new()),
            cap_kib: kib(max_body),
            wait,
        }
    }

    fn tenant(&self, tenant: &str) -> Arc<Semaphore> {
        if let Some(s) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return s.clone();
        }
        let mut w = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        w.entry(tenant.to_owned())
            .or_insert_with(|| {
                let n = (self.per_tenant_kib as usize).min(Semaphore::MAX_PERMITS);
                Arc::new(Semaphore::new(n))
            })
            .clone()
    }

    /// `body`, drawing its buffered bytes (up to `max` seen) from `tenant`'s budget into
    /// `lease`.
    pub fn meter<'a, B>(
        &'a self,
        body: B,
        tenant: &'a str,
        max: u64,
        lease: &'a mut Lease,
    ) -> Metered<'a, B> {
        Metered {
            inner: body,
            mem: self,
            tenant,
            sems: None,
            lease,
            seen: 0,
            max,
            pending: None,
        }
    }

    /// The KiB permits free now, all tenants together (for tests).
    #[cfg(test)]
    fn available_kib(&self) -> usize {
        self.global.available_permits()
    }
}

/// The permits a request holds: given back when it is dropped.
#[derive(Default)]
pub struct Lease {
    held: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    kib: u32,
}

impl Lease {
    fn add(&mut self, more: (OwnedSemaphorePermit, OwnedSemaphorePermit), kib: u32) {
        match &mut self.held {
            Some((t, g)) => {
                t.merge(more.0);
                g.merge(more.1);
            }
            None => self.held = Some(more),
        }
        self.kib = self.kib.saturating_add(kib);
    }
}

type Waiting =
    Pin<Box<dyn Future<Output = Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>> + Send>>;

/// A body whose data frames wait for their budget before they are handed on.
pub struct Metered<'a, B> {
    inner: B,
    mem: &'a InspectMemory,
    tenant: &'a str,
    /// (tenant, global), looked up at the first frame.
    sems: Option<(Arc<Semaphore>, Arc<Semaphore>)>,
    lease: &'a mut Lease,
    seen: u64,
    max: u64,
    /// A frame waiting for its permits, and the wait (with the KiB it asks for).
    pending: Option<(Frame<Bytes>, Waiting, u32)>,
}

impl<B> Metered<'_, B> {
    /// The body without the meter: what is read past the inspection limit streams on.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// KiB to take now for `seen` bytes buffered, if any.
    fn wanted(&self) -> u32 {
        let need = kib(self.seen.min(self.max)).min(self.mem.cap_kib);
        if need <= self.lease.kib {
            return 0;
        }
        let target = if need <= STEP_KIB {
            need
        } else {
            need.div_ceil(STEP_KIB)
                .saturating_mul(STEP_KIB)
                .min(self.mem.cap_kib)
        };
        target - self.lease.kib
    }
}

impl<B> Body for Metered<'_, B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some((_, wait, want)) = &mut this.pending {
            let want = *want;
            return match wait.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(permits)) => {
                    this.lease.add(permits, want);
                    let frame = this.pending.take().map(|(f, _, _)| f);
                    Poll::Ready(frame.map(Ok))
                }
                Poll::Ready(None) => {
                    this.pending = None;
                    Poll::Ready(Some(Err(Box::new(MemoryExhausted(this.mem.wait)))))
                }
            };
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        // Past the limit the bytes are not buffered but streamed: not counted.
        let Some(data) = frame.data_ref().filter(|_| this.seen <= this.max) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        this.seen = this.seen.saturating_add(data.len() as u64);
        let want = this.wanted();
        if want == 0 {
            return Poll::Ready(Some(Ok(frame)));
        }
        let (tenant, global) = this
            .sems
            .get_or_insert_with(|| (this.mem.tenant(this.tenant), this.mem.global.clone()))
            .clone();
        // Without contention: two atomic updates, no allocation.
        if let Ok(t) = tenant.clone().try_acquire_many_owned(want) {
            if let Ok(g) = global.clone().try_acquire_many_owned(want) {
                this.lease.add((t, g), want);
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        let limit = this.mem.wait;
        let wait: Waiting = Box::pin(async move {
            tokio::time::timeout(limit, async move {
                let t = tenant.acquire_many_owned(want).await.ok()?;
                let g = global.acquire_many_owned(want).await.ok()?;
                Some((t, g))
            })
            .await
            .ok()
            .flatten()
        });
        this.pending = Some((frame, wait, want));
        // Poll the wait once now, so it registers for a wake-up.
        self.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::read_bounded;
    use http_body_util::{BodyExt, Full};

    fn body(n: usize) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        Full::new(Bytes::from(vec![b'x'; n])).map_err(|e| -> BoxError { match e {} })
    }

    #[tokio::test]
    async fn a_lease_holds_what_the_buffer_holds_and_gives_it_back_when_dropped() {
        let mem = InspectMemory::new(1 << 20, 1 << 19, 1 << 18, Duration::from_millis(50));
        let all = mem.available_kib();
        let mut lease = Lease::default();
        let read = read_bounded(mem.meter(body(3000), "t", 1 << 18, &mut lease), 1 << 18)
            .await
            .map(|r| r.prefix.len());
        assert_eq!(read.ok(), Some(3000));
        assert_eq!(lease.kib, 3, "3000 bytes take 3 KiB");
        assert_eq!(mem.available_kib(), all - 3);
        let mut big = Lease::default();
        let _ = read_bounded(mem.meter(body(200_000), "t", 1 << 18, &mut big), 1 << 18).await;
        assert_eq!(big.kib, 256, "in 64 KiB steps past the first");
        drop((lease, big));
        assert_eq!(mem.available_kib(), all);
    }

    #[tokio::test]
    async fn a_tenant_past_its_budget_waits_then_is_refused_while_another_tenant_is_served() {
        let mem = InspectMemory::new(1 << 20, 256 * 1024, 256 * 1024, Duration::from_millis(100));
        let mut first = Lease::default();
        let ok = read_bounded(
            mem.meter(body(256 * 1024), "a", 256 * 1024, &mut first),
            256 * 1024,
        )
        .await;
        assert!(ok.is_ok());
        let mut second = Lease::default();
        let refused = read_bounded(
            mem.meter(body(1024), "a", 256 * 1024, &mut second),
            256 * 1024,
        )
        .await
        .err()
        .map(|e| e.downcast_ref::<MemoryExhausted>().is_some());
        assert_eq!(refused, Some(true));
        let mut other = Lease::default();
        let served = read_bounded(
            mem.meter(body(1024), "b", 256 * 1024, &mut other),
            256 * 1024,
        )
        .await;
        assert!(served.is_ok());
    }
}
