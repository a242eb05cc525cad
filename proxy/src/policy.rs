//! The policy in force, its generations, and reload (SPEC §4.1).
//!
//! Each request takes one [`PolicySnapshot`] and finishes under it, so a
//! reload never changes the rules halfway through a request. A reload is
//! atomic: an invalid file keeps the old policy, and a new policy is in force
//! only after a `config` ledger record names its generation and hash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_ledger::{ConfigFacts, Ledger, LedgerError};
use portcullis_rules::Policy;
use tokio::sync::watch;

use crate::metrics::{Metrics, ReloadResult};

/// One policy generation.
pub struct PolicySnapshot {
    pub policy: Arc<Policy>,
    pub generation: u64,
}

/// Holds the current snapshot and tells long-lived flows (spliced tunnels)
/// when a new one is in force.
pub struct PolicyHolder {
    current: RwLock<Arc<PolicySnapshot>>,
    /// Serialises reloads so generations are assigned in order.
    reload: tokio::sync::Mutex<()>,
    generation: watch::Sender<u64>,
}

impl PolicyHolder {
    pub fn new(policy: Arc<Policy>) -> Self {
        PolicyHolder {
            current: RwLock::new(Arc::new(PolicySnapshot {
                policy,
                generation: 1,
            })),
            reload: tokio::sync::Mutex::new(()),
            generation: watch::channel(1).0,
        }
    }

    pub fn load(&self) -> Arc<PolicySnapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fires after every applied reload.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn store(&self, snap: Arc<PolicySnapshot>) {
        let generation = snap.generation;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = snap;
        self.generation.send_replace(generation);
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// A new policy generation is in force.
    Applied { generation: u64 },
    /// The file's policy is the one already in force.
    Unchanged,
}

/// Why a reload kept the old policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error("no config file to reload (the proxy runs on the embedded default)")]
    NoFile,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(portcullis_rules::ConfigErrors),
    #[error("ledger: {}", .0.full_message())]
    Ledger(LedgerError),
}

/// Parses the file and, if valid and different, swaps the policy atomically
/// and writes a `config` record first. Requests already running finish under
/// the generation they started with; every new request (also on old
/// keep-alive connections) uses the new one. Listener, CA and upstream
/// settings need a restart.
pub async fn reload(
    holder: &PolicyHolder,
    ledger: &Ledger,
    path: &Path,
    source: &str,
) -> Result<ReloadOutcome, ReloadError> {
    let _serial = holder.reload.lock().await;
    let result = async {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| ReloadError::Read {
                path: path.display().to_string(),
                source,
            })?;
        let cfg = portcullis_rules::parse_config(&path.display().to_string(), &text)
            .map_err(ReloadError::Invalid)?;
        let current = holder.load();
        if cfg.policy.hash_hex() == current.policy.hash_hex() {
            return Ok(ReloadOutcome::Unchanged);
        }
        let generation = current.generation + 1;
        if cfg.policy.routes().iter().any(|r| r.detectors.any()) {
            // As at start: the detectors' automata are built before the policy needs them.
            if let Err(e) = tokio::task::spawn_blocking(portcullis_rules::warm_detectors).await {
                // The detectors then build on first use (or refuse, failing closed).
                tracing::warn!(error = %e, "building the detectors ahead of use failed");
            }
        }
        // The record comes first: a policy is never in force without evidence of it.
        ledger
            .append_config(ConfigFacts {
                event_id: portcullis_ledger::new_event_id(),
                policy_generation: generation,
                policy_hash: cfg.policy.hash_hex().to_owned(),
                source: source.to_owned(),
            })
            .await
            .map_err(ReloadError::Ledger)?;
        holder.store(Arc::new(PolicySnapshot {
            policy: cfg.policy,
            generation,
        }));
        Ok(ReloadOutcome::Applied { generation })
    }
    .await;
    match &result {
        Ok(ReloadOutcome::Applied { generation }) => {
            tracing::info!(generation, source, "policy reloaded")
        }
        Ok(_) => tracing::debug!(source, "policy unchanged"),
        Err(ReloadError::Invalid(errors)) => {
            for e in &errors.errors {
                tracing::error!(source, "{e}");
            }
            tracing::error!(
                source,
                count = errors.errors.len(),
                "invalid config: keeping the current policy"
            );
        }
        Err(e) => tracing::error!(source, error = %e, "reload failed: keeping the current policy"),
    }
    result
}

/// How a reload reads in `portcullis_config_reloads_total`.
pub fn reload_result(r: &Result<ReloadOutcome, ReloadError>) -> ReloadResult {
    match r {
        Ok(ReloadOutcome::Applied { .. }) => ReloadResult::Ok,
        Ok(_) => ReloadResult::Unchanged,
        Err(ReloadError::Invalid(_)) => ReloadResult::Invalid,
        Err(_) => ReloadResult::Error,
    }
}

/// Reloads on SIGHUP and when the file's modification time or size changes
/// (polled once a second: no platform watcher to misbehave on network
/// mounts). Returns when `stop` fires.
pub async fn watch_file(
    holder: Arc<PolicyHolder>,
    ledger: Ledger,
    metrics: Metrics,
    path: PathBuf,
    stop: impl std::future::Future<Output = ()>,
) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(stop);
    loop {
        let sighup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = sighup => {
                let r = reload(&holder, &ledger, &path, "sighup").await;
                metrics.reload(reload_result(&r));
                last = stamp(&path);
            }
            _ = tick.tick() => {
                let now = stamp(&path);
                if now != last {
                    last = now;
                    let r = reload(&holder, &ledger, &path, "file_watch").await;
                    metrics.reload(reload_result(&r));
                }
            }
        }
    }
}
