//! Process wiring: build the context, bind listeners, start the accept loops
//! and the reload watcher, and shut down in order: stop accepting, let
//! in-flight requests finish (up to the grace period), drop what is left,
//! wait for the pending outcome records, then seal the ledger.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_certs::{CacheOptions, CertificateAuthority, LeafCache};
use portcullis_ledger::{ConfigFacts, Ledger, LedgerError, LedgerOptions, SyncMode};
use portcullis_rules::{Config, LedgerSync};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use crate::admin::AdminSettings;
use crate::ctx::{Ctx, Limits, TlsServer};
use crate::flow::Phase;
use crate::listen::{accept_loop, ListenerInfo};
use crate::metrics::{Metrics, WebhookResult};
use crate::policy::{reload, reload_result, watch_file, PolicyHolder, ReloadError, ReloadOutcome};
use crate::record::Outcomes;
use crate::state::{Backend, State, StateError};
use crate::upstream::{Upstream, UpstreamOptions, UpstreamSetupError};
use crate::vault::Keys;
use crate::webhook::{DeliveryResult, WebhookOptions, WebhookSender, Webhooks};

/// A spliced tunnel or WebSocket session with no traffic for this long closes.
const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a request body waits for inspection memory before `503 memory_budget`.
const INSPECT_MEMORY_WAIT: Duration = Duration::from_secs(1);
/// After the grace period, how long dropped connections get to write their
/// outcome records before the ledger is sealed.
const OUTCOME_FLUSH: Duration = Duration::from_secs(5);

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
    Upstream(#[from] UpstreamSetupError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("ledger: {}", .0.full_message())]
    Ledger(#[from] LedgerError),
    #[error("vault: {0}")]
    Vault(#[from] portcullis_certs::VaultError),
    #[error("state: {0}")]
    State(#[from] StateError),
}

/// What `start` needs beyond the parsed config.
pub struct Settings {
    pub config: Config,
    /// Relative paths in the config resolve against this directory.
    pub base_dir: PathBuf,
    /// The file the config came from. When set, SIGHUP and changes to the
    /// file reload the policy.
    pub config_path: Option<PathBuf>,
    /// The vault's master key (base64), as `PORTCULLIS_MASTER_KEY` gives it.
    /// `None` falls back to `[vault] master_key_file`.
    pub master_key: Option<Zeroizing<String>>,
}

/// A running proxy. Dropping it does not stop it; call `shutdown`.
pub struct RunningProxy {
    pub listeners: Vec<(String, SocketAddr)>,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Where the DNS responder listens (UDP), if `[dns]` is set.
    pub dns_addr: Option<SocketAddr>,
    pub ca_cert_path: PathBuf,
    pub ca_created: bool,
    pub ledger_dir: PathBuf,
    pub ledger: Ledger,
    ctx: Arc<Ctx>,
    config_path: Option<PathBuf>,
    phase: watch::Sender<Phase>,
    tasks: JoinSet<()>,
    /// Webhook delivery; stopped last (a notice in flight at exit is lost).
    webhook_task: tokio::task::JoinHandle<()>,
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
            Some(p) => {
                let r = reload(&self.ctx.policy, &self.ctx.ledger, p, source).await;
                self.ctx.metrics.reload(reload_result(&r));
                r
            }
            None => Err(ReloadError::NoFile),
        }
    }

    /// The policy generation in force.
    pub fn policy_generation(&self) -> u64 {
        self.ctx.policy.load().generation
    }

    /// Stops accepting, lets in-flight work finish (up to the grace period),
    /// drops what is still running, waits for the outcome records that
    /// leaves, and seals the ledger with a final checkpoint.
    pub async fn shutdown(mut self) {
        self.phase.send_replace(Phase::Draining);
        while self.tasks.join_next().await.is_some() {}
        let all = self.max_conns;
        let drained = tokio::time::timeout(self.grace, self.conns.acquire_many(all)).await;
        if drained.is_ok() {
            tracing::info!("drained all connections");
        } else {
            tracing::warn!(grace = ?self.grace, "grace period over; closing remaining connections");
            self.phase.send_replace(Phase::Closing);
            let _ = tokio::time::timeout(OUTCOME_FLUSH, self.conns.acquire_many(all)).await;
        }
        self.phase.send_replace(Phase::Closing);
        if !self.ctx.outcomes.settled(OUTCOME_FLUSH).await {
            tracing::error!("outcome records still pending at shutdown");
        }
        // The refusals counted since the last window closed.
        self.ctx
            .refusals
            .flush(&self.ledger, &self.ctx.policy.load())
            .await;
        // The final checkpoint anchors everything written so far.
        if let Err(e) = self.ledger.shutdown().await {
            tracing::error!(error = %e.full_message(), "ledger shutdown failed");
        }
        self.webhook_task.abort();
    }
}

/// The operator's extra CAs also let webhooks reach private receivers.
fn extra_roots(files: &[PathBuf]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    files
        .iter()
        .filter_map(|p| crate::upstream::load_pem_certs(p).ok())
        .flatten()
        .collect()
}

fn webhook_result(r: DeliveryResult) -> WebhookResult {
    match r {
        DeliveryResult::Delivered => WebhookResult::Ok,
        DeliveryResult::Dropped => WebhookResult::Dropped,
        _ => WebhookResult::Failed,
    }
}

pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Loads the CA, opens the ledger, binds every listener and starts serving.
pub async fn start(settings: Settings) -> Result<RunningProxy, StartError> {
    let cfg = settings.config;
    let base = settings.base_dir.clone();
    let ca_dir = resolve_path(&base, &cfg.ca.dir);
    let (ca, ca_created) = CertificateAuthority::load_or_init(&ca_dir)?;
    if ca_created {
        tracing::info!(dir = %ca_dir.display(), "created a new CA");
    }
    let ca = Arc::new(ca);
    let certs = LeafCache::new(
        Arc::clone(&ca),
        CacheOptions {
            capacity: cfg.ca.cache_capacity,
            ttl: cfg.ca.leaf_ttl,
            mint_workers: 0,
        },
    );
    let denied_leaves = crate::tls::DeniedLeaves::new(ca, cfg.ca.leaf_ttl);

    // The keys come before anything listens: a vault that cannot be read stops
    // the start (fail closed), and an injecting route never runs without it.
    let vault_path = resolve_path(&base, &cfg.vault.path);
    let injects = cfg.policy.routes().iter().any(|r| r.inject_key.is_some());
    let keys = if injects || vault_path.exists() {
        let key_file = cfg
            .vault
            .master_key_file
            .as_ref()
            .map(|p| resolve_path(&base, p));
        Keys::open(
            &vault_path,
            settings.master_key.as_deref().map(String::as_str),
            key_file.as_deref(),
        )?
    } else {
        Keys::none()
    };
    let vault_scanner = keys.scanner();
    let keys = Arc::new(keys);

    // The injection detector builds its automata on first use, a few hundred
    // milliseconds of CPU: pay that before listening, not on the first request.
    if cfg.policy.routes().iter().any(|r| r.detectors.any()) {
        if let Err(e) = tokio::task::spawn_blocking(portcullis_rules::warm_detectors).await {
            // The detectors then build on first use (or refuse, failing closed).
            tracing::warn!(error = %e, "building the detectors ahead of use failed");
        }
    }

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
        channel_capacity: cfg.ledger.queue_capacity,
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
        let bind_err = |source| StartError::Bind {
            name: l.name.clone(),
            addr: l.bind,
            source,
        };
        let listener = TcpListener::bind(l.bind).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        bound.push((l, listener, addr));
    }

    let dns_socket = match &cfg.dns {
        Some(d) => {
            let bind_err = |source| StartError::Bind {
                name: crate::listen::dns::LISTENER.into(),
                addr: d.bind,
                source,
            };
            let sock = tokio::net::UdpSocket::bind(d.bind)
                .await
                .map_err(bind_err)?;
            let addr = sock.local_addr().map_err(bind_err)?;
            Some((d.clone(), sock, addr))
        }
        None => None,
    };

    let admin_listener =
        TcpListener::bind(cfg.admin.bind)
            .await
            .map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr: cfg.admin.bind,
                source,
            })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            name: "admin".into(),
            addr: cfg.admin.bind,
            source,
        })?;

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
        own_addrs: bound
            .iter()
            .map(|(_, _, a)| *a)
            .chain([admin_addr])
            .collect(),
    })?;

    let ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| StartError::Tls(e.to_string()))?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let listener_names: Vec<String> = cfg
        .listeners
        .iter()
        .map(|l| l.name.clone())
        .chain(
            cfg.dns
                .as_ref()
                .map(|_| crate::listen::dns::LISTENER.to_owned()),
        )
        .collect();
    let metrics = Metrics::new(cfg.policy.tenants(), &listener_names);
    let policy = Arc::new(PolicyHolder::new(cfg.policy.clone()));
    let counted = metrics.clone();
    let (sender, webhook_task) = WebhookSender::start(WebhookOptions {
        extra_roots: extra_roots(&extra_ca),
        on_result: Arc::new(move |r| counted.webhook(webhook_result(r))),
        ..WebhookOptions::default()
    });
    let webhooks = Webhooks::new(sender, policy.clone(), keys.clone());
    // Budgets, rate limits and approvals: in memory, or shared through Redis.
    let state = State::open(&cfg.state)?;
    if matches!(state.backend, Backend::Redis(_)) && cfg.ledger.replica_id == "default" {
        // Replicas that share state are several processes, each with its own chain.
        tracing::warn!("[state] is shared through Redis but [ledger] replica_id is \"default\": give each replica its own replica_id and ledger dir, so that `ledger verify` tells their chains apart");
    }
    let ctx = Arc::new(Ctx {
        policy,
        keys,
        webhooks,
        vault: vault_scanner,
        agent_conns: Arc::default(),
        peer_conns: Arc::default(),
        detect_pool: Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        ),
        budgets: state.budgets,
        approvals: state.approvals,
        state: state.backend,
        metrics: metrics.clone(),
        ledger: ledger.clone(),
        outcomes: Outcomes::default(),
        refusals: Default::default(),
        memory: crate::memory::InspectMemory::new(
            cfg.limits.inspect_memory,
            cfg.limits.inspect_memory_per_tenant,
            cfg.limits.max_inspect_body,
            INSPECT_MEMORY_WAIT,
        ),
        certs,
        denied_leaves,
        upstream,
        limits: Limits {
            client_header_timeout: cfg.limits.client_header_timeout,
            body_progress_timeout: cfg.limits.body_progress_timeout,
            client_idle_timeout: cfg.limits.client_idle_timeout,
            max_inspect_body: cfg.limits.max_inspect_body,
            max_header_bytes: cfg.limits.max_header_bytes,
            handshake_timeout: cfg.limits.client_header_timeout,
            relay_idle_timeout: RELAY_IDLE_TIMEOUT,
            max_connections_per_agent: cfg.limits.max_connections_per_agent,
            max_connections_per_peer: cfg.limits.max_connections_per_peer,
        },
        tls: TlsServer {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            session_storage: rustls::server::ServerSessionMemoryCache::new(4096),
            ticketer,
        },
        phase: phase_rx,
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
            mode: l.mode,
            auth: l.auth.clone(),
        });
        tasks.spawn(accept_loop(ctx.clone(), info, listener, conns.clone()));
    }
    let dns_addr = dns_socket.map(|(d, sock, addr)| {
        tasks.spawn(crate::listen::dns::serve(ctx.clone(), d, sock));
        addr
    });

    tasks.spawn(crate::admin::serve(
        ctx.clone(),
        Arc::new(AdminSettings {
            token_sha256: cfg.admin.token_sha256,
            metrics_public: cfg.admin.metrics_public,
            config_path: settings.config_path.clone(),
            ledger_dir: ledger_dir.clone(),
            min_free_bytes: cfg.ledger.min_free_bytes,
        }),
        admin_listener,
    ));

    // Each window's counted refusals become aggregate records when it closes.
    let flush_ctx = ctx.clone();
    tasks.spawn(async move {
        let mut every = tokio::time::interval(crate::refusals::WINDOW);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = flush_ctx.reached(Phase::Draining) => break,
            }
            let snap = flush_ctx.policy.load();
            flush_ctx.refusals.flush(&flush_ctx.ledger, &snap).await;
        }
    });

    if let Some(path) = settings.config_path.clone() {
        let stop_ctx = ctx.clone();
        tasks.spawn(watch_file(
            ctx.policy.clone(),
            ledger.clone(),
            metrics,
            path,
            async move { stop_ctx.reached(Phase::Draining).await },
        ));
    }

    Ok(RunningProxy {
        listeners,
        admin_addr,
        dns_addr,
        ca_cert_path: CertificateAuthority::cert_path(&ca_dir),
        ca_created,
        ledger_dir,
        ledger,
        ctx,
        config_path: settings.config_path,
        phase: phase_tx,
        tasks,
        webhook_task,
        conns,
        max_conns,
        grace: cfg.limits.shutdown_grace,
    })
}
