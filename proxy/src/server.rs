//! Process-level wiring: load the CA, bind listeners, run accept loops, and
//! drain gracefully on shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_certs::{CacheOptions, CertificateAuthority, LeafCache};
use portcullis_ledger::{ConfigFacts, Ledger, LedgerError, LedgerOptions, SyncMode};
use portcullis_rules::{Config, LedgerSync, ListenerAuth, Policy};
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, StoresServerSessions};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::upstream::{Upstream, UpstreamOptions};

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("CA: {0}")]
    Ca(#[from] portcullis_certs::CaError),
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream: {0}")]
    Upstream(#[from] crate::upstream::UpstreamSetupError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("ledger: {}", .0.full_message())]
    Ledger(#[from] LedgerError),
}

/// The policy in force, with its generation (SPEC §4.1). Requests take a
/// snapshot once and finish under it.
pub struct PolicySnapshot {
    pub policy: Arc<Policy>,
    pub generation: u64,
}

pub struct PolicyHolder {
    current: RwLock<Arc<PolicySnapshot>>,
    /// Serialises reloads so generations are assigned in order.
    reload: tokio::sync::Mutex<()>,
}

impl PolicyHolder {
    pub fn new(policy: Arc<Policy>) -> Self {
        PolicyHolder {
            current: RwLock::new(Arc::new(PolicySnapshot {
                policy,
                generation: 1,
            })),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    fn store(&self, snap: Arc<PolicySnapshot>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = snap;
    }

    pub fn load(&self) -> Arc<PolicySnapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Limits copied out of the config for the hot path.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeLimits {
    pub client_header_timeout: Duration,
    /// Request bodies are read up to this size for classification and detectors.
    pub max_inspect_body: u64,
    pub max_header_bytes: usize,
    pub handshake_timeout: Duration,
}

/// Everything a connection needs, shared by all of them.
pub struct Ctx {
    pub policy: PolicyHolder,
    /// Exact-value scanner for the vault's keys (empty until the vault lands).
    pub vault: portcullis_rules::VaultScanner,
    pub ledger: Ledger,
    pub certs: LeafCache,
    pub upstream: Upstream,
    pub limits: RuntimeLimits,
    pub provider: Arc<CryptoProvider>,
    pub session_storage: Arc<dyn StoresServerSessions + Send + Sync>,
    pub ticketer: Arc<dyn ProducesTickets>,
    pub shutdown: watch::Receiver<bool>,
}

/// One listener's identity settings.
pub struct ListenerInfo {
    pub name: String,
    pub auth: ListenerAuth,
}

/// What `start` needs beyond the parsed config.
pub struct Settings {
    pub config: Config,
    /// Relative paths in the config resolve against this directory.
    pub base_dir: PathBuf,
    /// The file the config came from. When set, SIGHUP and changes to the
    /// file reload the policy.
    pub config_path: Option<PathBuf>,
}

/// A running proxy. Dropping it does not stop it; call `shutdown`.
pub struct RunningProxy {
    pub listeners: Vec<(String, SocketAddr)>,
    pub ca_cert_path: PathBuf,
    pub ca_created: bool,
    pub ledger_dir: PathBuf,
    pub ledger: Ledger,
    ctx: Arc<Ctx>,
    config_path: Option<PathBuf>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    conns: Arc<Semaphore>,
    max_conns: u32,
    grace: Duration,
}

impl RunningProxy {
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Reloads the policy from the config file (what SIGHUP does).
    pub async fn reload(&self, source: &str) -> Result<ReloadOutcome, ReloadError> {
        match &self.config_path {
            Some(p) => reload(&self.ctx, p, source).await,
            None => Err(ReloadError::NoFile),
        }
    }

    /// The policy generation in force.
    pub fn policy_generation(&self) -> u64 {
        self.ctx.policy.load().generation
    }

    /// Stops accepting, lets in-flight work finish (up to the grace period),
    /// then returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        while self.tasks.join_next().await.is_some() {}
        let drained =
            tokio::time::timeout(self.grace, self.conns.acquire_many(self.max_conns)).await;
        match drained {
            Ok(_) => tracing::info!("drained all connections"),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "grace period over; closing remaining connections")
            }
        }
        // The final checkpoint anchors everything written so far.
        if let Err(e) = self.ledger.shutdown().await {
            tracing::error!(error = %e.full_message(), "ledger shutdown failed");
        }
    }
}

pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Loads the CA, binds every listener and starts serving.
pub async fn start(settings: Settings) -> Result<RunningProxy, StartError> {
    let cfg = settings.config;
    let base = settings.base_dir.clone();
    let ca_dir = resolve_path(&base, &cfg.ca.dir);
    let (ca, ca_created) = CertificateAuthority::load_or_init(&ca_dir)?;
    if ca_created {
        tracing::info!(dir = %ca_dir.display(), "created a new CA");
    }
    let certs = LeafCache::new(
        Arc::new(ca),
        CacheOptions {
            capacity: cfg.ca.cache_capacity,
            ttl: cfg.ca.leaf_ttl,
        },
    );

    let ledger_dir = resolve_path(&base, &cfg.ledger.dir);
    let ledger = Ledger::open(LedgerOptions {
        dir: ledger_dir.clone(),
        signing_key_path: ca_dir.join("ledger-signing.key"),
        replica_id: cfg.ledger.replica_id.clone(),
        sync: match cfg.ledger.sync {
            LedgerSync::Batch => SyncMode::Batch,
            _ => SyncMode::Always,
        },
        sync_interval: cfg.ledger.sync_interval,
        checkpoint_every: cfg.ledger.checkpoint_every,
        checkpoint_interval: cfg.ledger.checkpoint_interval,
        segment_max_bytes: cfg.ledger.segment_max_bytes,
        ..LedgerOptions::default()
    })
    .await?;
    // Which policy is in force is itself evidence.
    ledger
        .append_config(ConfigFacts {
            event_id: portcullis_ledger::new_event_id(),
            policy_generation: 1,
            policy_hash: cfg.policy.hash_hex().to_owned(),
            source: "startup".into(),
        })
        .await?;

    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let listener = TcpListener::bind(l.bind)
            .await
            .map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.bind,
            source,
        })?;
        bound.push((l, listener, addr));
    }

    let extra_ca: Vec<PathBuf> = cfg
        .upstream
        .extra_ca
        .iter()
        .map(|p| resolve_path(&base, p))
        .collect();
    let upstream = Upstream::new(UpstreamOptions {
        extra_ca: &extra_ca,
        resolve: &cfg.upstream.resolve,
        connect_timeout: cfg.upstream.connect_timeout,
        tls_timeout: cfg.upstream.tls_timeout,
        response_header_timeout: cfg.upstream.response_header_timeout,
        idle_timeout: cfg.upstream.idle_timeout,
        own_addrs: bound.iter().map(|(_, _, a)| *a).collect(),
    })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| StartError::Tls(e.to_string()))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        policy: PolicyHolder::new(cfg.policy.clone()),
        vault: portcullis_rules::VaultScanner::empty(),
        ledger: ledger.clone(),
        certs,
        upstream,
        limits: RuntimeLimits {
            client_header_timeout: cfg.limits.client_header_timeout,
            max_inspect_body: cfg.limits.max_inspect_body,
            max_header_bytes: cfg.limits.max_header_bytes,
            handshake_timeout: cfg.limits.client_header_timeout,
        },
        provider,
        session_storage: rustls::server::ServerSessionMemoryCache::new(4096),
        ticketer,
        shutdown: shutdown_rx,
    });

    let max_conns = u32::try_from(cfg.limits.max_connections.clamp(1, Semaphore::MAX_PERMITS))
        .unwrap_or(u32::MAX);
    let conns = Arc::new(Semaphore::new(max_conns as usize));
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for (l, listener, addr) in bound {
        listeners.push((l.name.clone(), addr));
        let info = Arc::new(ListenerInfo {
            name: l.name.clone(),
            auth: l.auth.clone(),
        });
        tasks.spawn(accept_loop(ctx.clone(), info, listener, conns.clone()));
    }

    if let Some(path) = settings.config_path.clone() {
        tasks.spawn(watch_config(ctx.clone(), path));
    }

    Ok(RunningProxy {
        listeners,
        ca_cert_path: CertificateAuthority::cert_path(&ca_dir),
        ca_created,
        ledger_dir,
        ledger,
        ctx: ctx.clone(),
        config_path: settings.config_path.clone(),
        shutdown_tx,
        tasks,
        conns,
        max_conns,
        grace: cfg.limits.shutdown_grace,
    })
}

async fn accept_loop(
    ctx: Arc<Ctx>,
    info: Arc<ListenerInfo>,
    listener: TcpListener,
    conns: Arc<Semaphore>,
) {
    let mut shutdown = ctx.shutdown.clone();
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        let span = tracing::info_span!("conn", id = next_id, %peer, listener = %info.name);
        tokio::spawn(crate::forward::serve(
            ctx.clone(),
            info.clone(),
            tcp,
            peer,
            permit,
            span,
        ));
    }
    tracing::info!(listener = %info.name, "stopped accepting");
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
/// and writes a `config` record. Requests already running finish under the
/// generation they started with; every new request (also on old keep-alive
/// connections) uses the new one. Listener, CA and upstream settings need a
/// restart.
pub async fn reload(ctx: &Ctx, path: &Path, source: &str) -> Result<ReloadOutcome, ReloadError> {
    let _serial = ctx.policy.reload.lock().await;
    let result = async {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| ReloadError::Read {
                path: path.display().to_string(),
                source,
            })?;
        let cfg = portcullis_rules::parse_config(&path.display().to_string(), &text)
            .map_err(ReloadError::Invalid)?;
        let current = ctx.policy.load();
        if cfg.policy.hash_hex() == current.policy.hash_hex() {
            return Ok(ReloadOutcome::Unchanged);
        }
        let generation = current.generation + 1;
        // The record comes first: a policy is never in force without evidence of it.
        ctx.ledger
            .append_config(ConfigFacts {
                event_id: portcullis_ledger::new_event_id(),
                policy_generation: generation,
                policy_hash: cfg.policy.hash_hex().to_owned(),
                source: source.to_owned(),
            })
            .await
            .map_err(ReloadError::Ledger)?;
        ctx.policy.store(Arc::new(PolicySnapshot {
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

/// Reloads on SIGHUP and when the file's modification time or size changes
/// (polled once a second: no platform watcher to misbehave on network mounts).
async fn watch_config(ctx: Arc<Ctx>, path: PathBuf) {
    let mut shutdown = ctx.shutdown.clone();
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = sighup => {
                let _ = reload(&ctx, &path, "sighup").await;
                last = stamp(&path);
            }
            _ = tick.tick() => {
                let now = stamp(&path);
                if now != last {
                    last = now;
                    let _ = reload(&ctx, &path, "file_watch").await;
                }
            }
        }
    }
}
