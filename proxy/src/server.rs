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
}

impl PolicyHolder {
    pub fn new(policy: Arc<Policy>) -> Self {
        PolicyHolder {
            current: RwLock::new(Arc::new(PolicySnapshot {
                policy,
                generation: 1,
            })),
        }
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
    pub max_header_bytes: usize,
    pub handshake_timeout: Duration,
}

/// Everything a connection needs, shared by all of them.
pub struct Ctx {
    pub policy: PolicyHolder,
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
}

/// A running proxy. Dropping it does not stop it; call `shutdown`.
pub struct RunningProxy {
    pub listeners: Vec<(String, SocketAddr)>,
    pub ca_cert_path: PathBuf,
    pub ca_created: bool,
    pub ledger_dir: PathBuf,
    pub ledger: Ledger,
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
    let base = settings.base_dir;
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
        ledger: ledger.clone(),
        certs,
        upstream,
        limits: RuntimeLimits {
            client_header_timeout: cfg.limits.client_header_timeout,
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

    Ok(RunningProxy {
        listeners,
        ca_cert_path: CertificateAuthority::cert_path(&ca_dir),
        ca_created,
        ledger_dir,
        ledger,
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
