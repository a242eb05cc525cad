//! The handles every connection shares. Handles only: per-request values live
//! in [`crate::flow`], and behaviour lives with the services themselves.

use std::sync::Arc;
use std::time::Duration;

use portcullis_certs::LeafCache;
use portcullis_ledger::Ledger;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, StoresServerSessions};
use tokio::sync::watch;

use crate::flow::Phase;
use crate::metrics::Metrics;
use crate::policy::PolicyHolder;
use crate::record::Outcomes;
use crate::state::{Approvals, Backend, Budgets};
use crate::upstream::Upstream;
use crate::vault::Keys;
use crate::webhook::Webhooks;

/// Limits copied out of the config for the hot path.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub client_header_timeout: Duration,
    /// A request body that sends nothing for this long is cut off.
    pub body_progress_timeout: Duration,
    /// An h2 client connection with no stream in flight for this long is closed.
    pub client_idle_timeout: Duration,
    /// Request bodies are read up to this size for classification and detectors.
    pub max_inspect_body: u64,
    pub max_header_bytes: usize,
    pub handshake_timeout: Duration,
    /// A spliced tunnel or WebSocket session with no traffic for this long is closed.
    pub relay_idle_timeout: Duration,
    pub max_connections_per_agent: usize,
    pub max_connections_per_peer: usize,
}

/// The TLS server pieces shared by every intercepted tunnel.
pub struct TlsServer {
    pub provider: Arc<CryptoProvider>,
    pub session_storage: Arc<dyn StoresServerSessions + Send + Sync>,
    pub ticketer: Arc<dyn ProducesTickets>,
}

pub struct Ctx {
    pub policy: Arc<PolicyHolder>,
    /// The provider keys, decrypted from the vault at start.
    pub keys: Arc<Keys>,
    /// Exact-value scanner for every vault key (blocks leaks, redacts echoes).
    pub vault: portcullis_rules::VaultScanner,
    /// Open tunnels per agent.
    pub agent_conns: Arc<crate::flow::AgentConns>,
    /// Open connections per client address.
    pub peer_conns: Arc<crate::flow::PeerConns>,
    /// Turns on the blocking pool for large detector passes (one per core).
    pub detect_pool: tokio::sync::Semaphore,
    /// Token budgets and rate limits.
    pub budgets: Arc<dyn Budgets>,
    /// Requests held for an approver.
    pub approvals: Arc<dyn Approvals>,
    /// Where budgets and approvals live (memory or Redis), for readiness.
    pub state: Backend,
    /// The one metric catalog.
    pub metrics: Metrics,
    /// Signed notices of deny, warn and narrow decisions to tenants' receivers.
    pub webhooks: Webhooks,
    pub ledger: Ledger,
    pub outcomes: Outcomes,
    /// Bytes of request bodies held for inspection, per tenant and in all.
    pub memory: crate::memory::InspectMemory,
    /// The per-peer recording rate of refusals made before anyone was identified.
    pub refusals: crate::refusals::Refusals,
    pub certs: LeafCache,
    /// Leaves for hosts denied when their tunnel opened: apart, small, rate-limited per agent.
    pub denied_leaves: crate::tls::DeniedLeaves,
    pub upstream: Upstream,
    pub limits: Limits,
    pub tls: TlsServer,
    pub phase: watch::Receiver<Phase>,
}

impl Ctx {
    /// Resolves once the process reaches `phase` (or later).
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.clone();
        if rx.wait_for(|p| *p as u8 >= phase as u8).await.is_err() {
            // The handle was dropped without a shutdown: nobody can stop us now.
            std::future::pending::<()>().await;
        }
    }

    pub fn is_running(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }
}
