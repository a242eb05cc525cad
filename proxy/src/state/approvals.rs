//! Requests held for a human (SPEC §10): the pending list the admin API shows,
//! the verdicts it delivers, and the grants an approval leaves behind.
//!
//! [`Approvals`] is the store; [`MemoryApprovals`] keeps it in this process,
//! and the Redis backend shares it between replicas (`super::redis`). The
//! pending entry holds only content-free facts (method, host, path template,
//! model, size, detector ids), never the body: the body stays with the
//! replica that holds the request. An entry whose request went away (client
//! abort, timeout) is removed by the waiter's guard, so the list never shows a
//! request nobody is waiting on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{BoxFuture, StateError};

/// What an approver sees of a held request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Held {
    pub id: String,
    pub tenant: String,
    pub agent: String,
    pub route: String,
    pub method: String,
    pub host: String,
    pub path_template: String,
    pub model: Option<String>,
    pub size: u64,
    pub detectors: Vec<String>,
    /// Seconds until the hold times out, when listed.
    #[serde(default)]
    pub expires_in: u64,
    #[serde(skip)]
    expires: Option<Instant>,
}

impl Held {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        tenant: String,
        agent: String,
        route: String,
        method: String,
        host: String,
        path_template: String,
        model: Option<String>,
        size: u64,
        detectors: Vec<String>,
    ) -> Held {
        Held {
            id,
            tenant,
            agent,
            route,
            method,
            host,
            path_template,
            model,
            size,
            detectors,
            expires_in: 0,
            expires: None,
        }
    }
}

/// An approver's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it go; `grant` also lets later matching requests (same agent and
    /// route) through without a hold for that long.
    Approve {
        grant: Option<Duration>,
    },
    Deny,
}

/// Why a verdict could not be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecideError {
    #[error("no held request with that id (already decided, timed out, or gone)")]
    NotFound,
    /// The shared store could not be asked; nothing was decided.
    #[error("approval state unavailable: {0}")]
    Unavailable(String),
}

impl From<StateError> for DecideError {
    fn from(e: StateError) -> Self {
        DecideError::Unavailable(e.to_string())
    }
}

/// A store of held requests, verdicts and grants. Every call that asks a
/// shared backend can fail; callers fail closed on [`StateError`].
pub trait Approvals: Send + Sync {
    /// Whether an earlier approval's grant still covers this agent and route.
    fn granted<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        route: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>>;

    /// Holds a request until `timeout`. The returned waiter yields the verdict;
    /// dropping it removes the request from the pending list.
    fn hold(&self, held: Held, timeout: Duration) -> BoxFuture<'_, Result<Waiter, StateError>>;

    /// Delivers an approver's verdict, only if the request is still pending;
    /// `approver` names who decided (for the record).
    fn decide<'a>(
        &'a self,
        id: &'a str,
        verdict: Verdict,
        approver: &'a str,
    ) -> BoxFuture<'a, Result<Held, DecideError>>;

    /// The held requests (of every replica sharing the store), soonest to time out first.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Held>, StateError>>;

    /// How many requests this process holds now (the `approvals_pending` gauge).
    fn pending(&self) -> usize;
}

struct Pending {
    held: Held,
    tx: oneshot::Sender<(Verdict, String)>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    /// (tenant, agent, route) → grant expiry.
    grants: HashMap<(String, String, String), Instant>,
}

/// Approvals in process memory: a held request waits on a one-shot channel.
#[derive(Clone, Default)]
pub struct MemoryApprovals {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryApprovals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn granted_now(&self, tenant: &str, agent: &str, route: &str) -> bool {
        let mut inner = self.lock();
        let key = (tenant.to_owned(), agent.to_owned(), route.to_owned());
        match inner.grants.get(&key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                inner.grants.remove(&key);
                false
            }
            None => false,
        }
    }

    fn hold_now(&self, mut held: Held, timeout: Duration) -> Waiter {
        let (tx, rx) = oneshot::channel();
        held.expires = Some(Instant::now() + timeout);
        let id = held.id.clone();
        self.lock().pending.insert(id.clone(), Pending { held, tx });
        Waiter::new(
            id.clone(),
            Box::new(MemoryWait {
                approvals: self.clone(),
                id,
                rx: Some(rx),
                timeout,
            }),
        )
    }

    fn decide_now(&self, id: &str, verdict: Verdict, approver: &str) -> Result<Held, DecideError> {
        let mut inner = self.lock();
        let pending = inner.pending.remove(id).ok_or(DecideError::NotFound)?;
        if let Verdict::Approve { grant: Some(d) } = verdict {
            let h = &pending.held;
            let key = (h.tenant.clone(), h.agent.clone(), h.route.clone());
            inner.grants.insert(key, Instant::now() + d);
        }
        let held = pending.held.clone();
        pending
            .tx
            .send((verdict, approver.to_owned()))
            .map_err(|_| DecideError::NotFound)?;
        Ok(held)
    }

    fn list_now(&self) -> Vec<Held> {
        let now = Instant::now();
        let mut out: Vec<Held> = self
            .lock()
            .pending
            .values()
            .map(|p| {
                let mut h = p.held.clone();
                h.expires_in = h
                    .expires
                    .map_or(0, |e| e.saturating_duration_since(now).as_secs());
                h
            })
            .collect();
        out.sort_by_key(|h| h.expires);
        out
    }
}

impl Approvals for MemoryApprovals {
    fn granted<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        route: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move { Ok(self.granted_now(tenant, agent, route)) })
    }

    fn hold(&self, held: Held, timeout: Duration) -> BoxFuture<'_, Result<Waiter, StateError>> {
        Box::pin(async move { Ok(self.hold_now(held, timeout)) })
    }

    fn decide<'a>(
        &'a self,
        id: &'a str,
        verdict: Verdict,
        approver: &'a str,
    ) -> BoxFuture<'a, Result<Held, DecideError>> {
        Box::pin(async move { self.decide_now(id, verdict, approver) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Held>, StateError>> {
        Box::pin(async move { Ok(self.list_now()) })
    }

    fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

/// How a hold ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// An approver decided; the second field says who.
    Decided(Verdict, String),
    TimedOut,
}

/// One held request's side of the hold. Dropping it (the client went away)
/// takes the request off the pending list.
pub struct Waiter {
    id: String,
    inner: Box<dyn Wait>,
}

/// How a backend waits for its verdict. Its `Drop` cleans up a hold that was
/// abandoned before it ended.
pub(super) trait Wait: Send {
    fn wait(self: Box<Self>) -> BoxFuture<'static, Ended>;
}

impl Waiter {
    pub(super) fn new(id: String, inner: Box<dyn Wait>) -> Waiter {
        Waiter { id, inner }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub async fn wait(self) -> Ended {
        self.inner.wait().await
    }
}

struct MemoryWait {
    approvals: MemoryApprovals,
    id: String,
    rx: Option<oneshot::Receiver<(Verdict, String)>>,
    timeout: Duration,
}

impl Wait for MemoryWait {
    fn wait(mut self: Box<Self>) -> BoxFuture<'static, Ended> {
        Box::pin(async move {
            let Some(rx) = self.rx.take() else {
                return Ended::TimedOut;
            };
            match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok((v, who))) => Ended::Decided(v, who),
                _ => Ended::TimedOut,
            }
        })
    }
}

impl Drop for MemoryWait {
    fn drop(&mut self) {
        // Decided entries are gone already; this removes timed-out and abandoned ones.
        self.approvals.lock().pending.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: &str) -> Held {
        Held::new(
            id.into(),
            "acme".into(),
            "bot".into(),
            "r".into(),
            "POST".into(),
            "api.openai.com".into(),
            "/v1/chat/completions".into(),
            Some("gpt-4o".into()),
            10,
            vec![],
        )
    }

    #[tokio::test]
    async fn an_approval_reaches_the_waiter_and_leaves_a_grant() {
        let a = MemoryApprovals::default();
        let w = a.hold(held("1"), Duration::from_secs(30)).await.unwrap();
        assert_eq!(a.list().await.unwrap().len(), 1);
        a.decide(
            "1",
            Verdict::Approve {
                grant: Some(Duration::from_secs(600)),
            },
            "admin:abc",
        )
        .await
        .unwrap();
        assert!(matches!(
            w.wait().await,
            Ended::Decided(Verdict::Approve { .. }, who) if who == "admin:abc"
        ));
        assert!(a.granted("acme", "bot", "r").await.unwrap());
        assert!(!a.granted("acme", "bot", "other").await.unwrap());
        assert!(!a.granted("globex", "bot", "r").await.unwrap());
        assert_eq!(a.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_hold_times_out_and_leaves_the_list() {
        let a = MemoryApprovals::default();
        let w = a.hold(held("1"), Duration::from_secs(5)).await.unwrap();
        assert_eq!(w.wait().await, Ended::TimedOut);
        assert_eq!(a.pending(), 0);
        assert_eq!(
            a.decide("1", Verdict::Deny, "admin").await.err(),
            Some(DecideError::NotFound)
        );
    }

    #[tokio::test]
    async fn an_abandoned_hold_leaves_the_list() {
        let a = MemoryApprovals::default();
        let w = a.hold(held("1"), Duration::from_secs(5)).await.unwrap();
        drop(w);
        assert!(a.list().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_expires() {
        let a = MemoryApprovals::default();
        let w = a.hold(held("1"), Duration::from_secs(5)).await.unwrap();
        a.decide(
            "1",
            Verdict::Approve {
                grant: Some(Duration::from_secs(60)),
            },
            "admin",
        )
        .await
        .unwrap();
        drop(w);
        assert!(a.granted("acme", "bot", "r").await.unwrap());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!a.granted("acme", "bot", "r").await.unwrap());
    }
}
