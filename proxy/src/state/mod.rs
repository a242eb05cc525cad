//! Shared counters for token budgets and rate limits (SPEC §8).
//!
//! A request is admitted against every scope that limits it (its tenant, its
//! agent, its route) at once, or against none: the reservation is taken
//! before the request leaves, so the request that would cross a limit is
//! refused up front and concurrent requests cannot race past it. At the end
//! the reservation is settled with the tokens actually used.
//!
//! The counters live in memory by default ([`MemoryBudgets`]). They sit
//! behind the [`Budgets`] trait so a shared backend can take their place for
//! several replicas: with `[state] backend = "redis"`, budgets, rate limits
//! and approvals ([`Approvals`]) live in one Redis server ([`redis`]). Keys
//! are namespaced by tenant: `portcullis:{tenant}:{scope}:{id}`.
//!
//! A shared backend can fail. Every call that asks it returns a
//! [`StateError`] then, and the caller fails closed: a budgeted or approve
//! route gets `503 state_unavailable`; a route that needs no state is not
//! affected.

mod approvals;
mod memory;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use portcullis_rules::{StateBackend, StateConfig};

pub use approvals::{Approvals, DecideError, Ended, Held as HeldRequest, MemoryApprovals, Verdict};
pub use memory::MemoryBudgets;

/// What a limit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Tenant,
    Agent,
    Route,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Tenant => "tenant",
            Scope::Agent => "agent",
            Scope::Route => "route",
        }
    }
}

/// One scope's limits, and what this request asks of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// `portcullis:{tenant}:{scope}:{id}`.
    pub key: String,
    pub scope: Scope,
    pub tokens_per_day: Option<u64>,
    pub requests_per_minute: Option<u32>,
    /// The tokens reserved for this request (its max-tokens bound, or a default).
    pub tokens: u64,
}

impl Ask {
    pub fn key(tenant: &str, scope: Scope, id: &str) -> String {
        format!("portcullis:{tenant}:{}:{id}", scope.as_str())
    }
}

/// Why a request was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub scope: Scope,
    /// The limit hit was the token budget (else the request rate).
    pub tokens: bool,
    /// When the window that refused it starts over.
    pub retry_after: Duration,
}

/// Tokens held for one admitted request, to settle at its end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    pub(crate) held: Vec<Held>,
    /// Tokens left today in each token-budgeted scope, after this reservation.
    pub remaining: Vec<(Scope, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    key: String,
    /// The day (since the Unix epoch, UTC) the tokens were charged to.
    day: u64,
    tokens: u64,
}

/// Why the state backend could not answer. Budgeted routes fail closed on it.
/// The text never holds a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
}

/// The stores a process uses, built from `[state]`.
pub struct State {
    pub budgets: Arc<dyn Budgets>,
    pub approvals: Arc<dyn Approvals>,
    pub backend: Backend,
}

impl State {
    /// In-process stores, or stores on the configured Redis server. Opening
    /// Redis does no I/O: the first command connects, and a server that is
    /// down at start makes the proxy not ready rather than stopping it.
    pub fn open(cfg: &StateConfig) -> Result<State, StateError> {
        match &cfg.backend {
            StateBackend::Redis { url, timeout } => {
                let conn = redis::RedisConn::open(url, *timeout)?;
                tracing::info!(%url, ?timeout, "budgets, rate limits and approvals are shared through Redis");
                Ok(State {
                    budgets: Arc::new(redis::RedisBudgets::new(conn.clone())),
                    approvals: Arc::new(redis::RedisApprovals::new(conn.clone())),
                    backend: Backend::Redis(conn),
                })
            }
            _ => Ok(State {
                budgets: Arc::new(MemoryBudgets::default()),
                approvals: Arc::new(MemoryApprovals::default()),
                backend: Backend::Memory,
            }),
        }
    }
}

/// Where the state lives, for readiness.
#[derive(Clone)]
pub enum Backend {
    Memory,
    Redis(redis::RedisConn),
}

impl Backend {
    /// `Ok` when the backend answers now (memory always does).
    pub async fn check(&self) -> Result<(), StateError> {
        match self {
            Backend::Memory => Ok(()),
            Backend::Redis(conn) => conn.ping().await,
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A budget and rate-limit store.
pub trait Budgets: Send + Sync {
    /// Admits the request against every ask, or against none.
    fn reserve<'a>(
        &'a self,
        asks: &'a [Ask],
    ) -> BoxFuture<'a, Result<Result<Reservation, Refused>, StateError>>;

    /// Replaces the reserved tokens with the tokens used.
    fn settle(&self, reservation: Reservation, used: u64) -> BoxFuture<'_, ()>;
}

/// A reservation on its way through one request. Settled with the tokens the
/// response used; dropped unsettled (the request never left), it gives the
/// tokens back.
pub struct Hold {
    budgets: std::sync::Arc<dyn Budgets>,
    reservation: Option<Reservation>,
}

impl Hold {
    pub fn new(budgets: std::sync::Arc<dyn Budgets>, reservation: Reservation) -> Hold {
        Hold {
            budgets,
            reservation: Some(reservation),
        }
    }

    /// Replaces the estimate with `used` tokens. `None` (the usage could not be
    /// read) keeps the estimate charged: an unmetered response is never free.
    pub fn settle(mut self, used: Option<u64>) {
        let reservation = self.reservation.take();
        if let (Some(used), Some(r)) = (used, reservation) {
            self.spawn_settle(r, used);
        }
    }

    fn spawn_settle(&self, reservation: Reservation, used: u64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let budgets = self.budgets.clone();
        handle.spawn(async move { budgets.settle(reservation, used).await });
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.spawn_settle(r, 0);
        }
    }
}
