//! Requests held for a human (SPEC §10): the pending list the admin API shows,
//! the verdicts it delivers, and the grants an approval leaves behind.
//!
//! A held request waits on a one-shot channel. The pending entry holds only
//! content-free facts (method, host, path template, model, size, detector
//! ids), never the body. An entry whose request went away (client abort,
//! timeout) is removed by the waiter's guard, so the list never shows a
//! request nobody is waiting on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What an approver sees of a held request.
#[derive(Clone, Debug, Serialize)]
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
}

struct Pending {
    held: Held,
    tx: oneshot::Sender<(Verdict, String)>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    /// (agent, route) → grant expiry.
    grants: HashMap<(String, String), Instant>,
}

#[derive(Clone, Default)]
pub struct Approvals {
    inner: Arc<Mutex<Inner>>,
}

impl Approvals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an earlier approval's grant still covers this agent and route.
    pub fn granted(&self, agent: &str, route: &str) -> bool {
        let mut inner = self.lock();
        let key = (agent.to_owned(), route.to_owned());
        match inner.grants.get(&key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                inner.grants.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Holds a request until `timeout`. The returned waiter yields the verdict;
    /// dropping it removes the request from the pending list.
    pub fn hold(&self, mut held: Held, timeout: Duration) -> Waiter {
        let (tx, rx) = oneshot::channel();
        held.expires = Some(Instant::now() + timeout);
        let id = held.id.clone();
        self.lock().pending.insert(id.clone(), Pending { held, tx });
        Waiter {
            approvals: self.clone(),
            id,
            rx: Some(rx),
            timeout,
        }
    }

    /// Delivers an approver's verdict; `approver` names who decided (for the record).
    pub fn decide(&self, id: &str, verdict: Verdict, approver: &str) -> Result<Held, DecideError> {
        let mut inner = self.lock();
        let pending = inner.pending.remove(id).ok_or(DecideError::NotFound)?;
        if let Verdict::Approve { grant: Some(d) } = verdict {
            let key = (pending.held.agent.clone(), pending.held.route.clone());
            inner.grants.insert(key, Instant::now() + d);
        }
        let held = pending.held.clone();
        pending
            .tx
            .send((verdict, approver.to_owned()))
            .map_err(|_| DecideError::NotFound)?;
        Ok(held)
    }

    /// The held requests, oldest first.
    pub fn list(&self) -> Vec<Held> {
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

    pub fn pending(&self) -> usize {
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

/// One held request's side of the hold.
pub struct Waiter {
    approvals: Approvals,
    id: String,
    rx: Option<oneshot::Receiver<(Verdict, String)>>,
    timeout: Duration,
}

impl Waiter {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub async fn wait(mut self) -> Ended {
        let Some(rx) = self.rx.take() else {
            return Ended::TimedOut;
        };
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok((v, who))) => Ended::Decided(v, who),
            _ => Ended::TimedOut,
        }
    }
}

impl Drop for Waiter {
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
        let a = Approvals::default();
        let w = a.hold(held("1"), Duration::from_secs(30));
        assert_eq!(a.list().len(), 1);
        a.decide(
            "1",
            Verdict::Approve {
                grant: Some(Duration::from_secs(600)),
            },
            "admin:abc",
        )
        .unwrap();
        assert!(matches!(
            w.wait().await,
            Ended::Decided(Verdict::Approve { .. }, who) if who == "admin:abc"
        ));
        assert!(a.granted("bot", "r"));
        assert!(!a.granted("bot", "other"));
        assert_eq!(a.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_hold_times_out_and_leaves_the_list() {
        let a = Approvals::default();
        let w = a.hold(held("1"), Duration::from_secs(5));
        assert_eq!(w.wait().await, Ended::TimedOut);
        assert_eq!(a.pending(), 0);
        assert_eq!(
            a.decide("1", Verdict::Deny, "admin").err(),
            Some(DecideError::NotFound)
        );
    }

    #[tokio::test]
    async fn an_abandoned_hold_leaves_the_list() {
        let a = Approvals::default();
        let w = a.hold(held("1"), Duration::from_secs(5));
        drop(w);
        assert!(a.list().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_expires() {
        let a = Approvals::default();
        let w = a.hold(held("1"), Duration::from_secs(5));
        a.decide(
            "1",
            Verdict::Approve {
                grant: Some(Duration::from_secs(60)),
            },
            "admin",
        )
        .unwrap();
        drop(w);
        assert!(a.granted("bot", "r"));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!a.granted("bot", "r"));
    }
}
