//! The config file: raw serde structs (every value `Spanned`), and their conversion into
//! the validated public types.
//!
//! Parsing happens in three passes. The text is parsed into a spanned TOML document,
//! which is walked against the known keys (`schema.rs`): every unknown key is reported
//! with its position and removed. Serde then reads what is left into the private `Raw*`
//! structs, which only know TOML types; a syntax or type error stops there and is
//! reported with its position. The validation pass then converts every raw value into
//! its public type, recording each problem with the position of the offending value,
//! and keeps going, so that one run of `portcullis check` lists every error in the file.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::host::{parse_port, Host};
use crate::policy::Policy;

mod raw;
mod routes;
mod schema;
mod settings;
mod sidecar;
mod state;
mod validate;
mod values;

pub use state::{RedisUrl, StateBackend, StateConfig, DEFAULT_STATE_TIMEOUT};

use raw::RawConfig;
use validate::Errors;

/// The embedded default config: a loopback listener without auth, and one route that
/// allows the well-known model provider APIs. Used when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default.toml");

/// The whole config file, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// At least one.
    pub listeners: Vec<ListenerConfig>,
    /// The admin API listener.
    pub admin: AdminConfig,
    /// Where the local CA lives and how leaves are minted.
    pub ca: CaConfig,
    /// How the proxy talks to upstreams.
    pub upstream: UpstreamConfig,
    /// Resource limits.
    pub limits: Limits,
    /// Where the ledger is written.
    pub ledger: LedgerConfig,
    /// Where the provider key vault lives.
    pub vault: VaultConfig,
    /// The allowlisting DNS responder for transparent agents, if any.
    pub dns: Option<DnsConfig>,
    /// Where budgets, rate limits and approvals live.
    pub state: StateConfig,
    /// Tenants, agents and routes.
    pub policy: Arc<Policy>,
}

/// One `[[listeners]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique name, used as the `listener` metric label and ledger field.
    pub name: String,
    /// Address to bind. Port 0 asks the OS for a free port (tests).
    pub bind: SocketAddr,
    /// What kind of listener.
    pub mode: ListenerMode,
    /// How callers are identified.
    pub auth: ListenerAuth,
}

impl Default for ListenerConfig {
    /// The listener used when the file has no `[[listeners]]`.
    fn default() -> Self {
        ListenerConfig {
            name: "forward".to_owned(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            mode: ListenerMode::Forward,
            auth: ListenerAuth::Basic,
        }
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenerMode {
    /// An HTTP forward proxy: `CONNECT` and absolute-form requests.
    Forward,
    /// A base-URL gateway: `http://host/{provider}/…` goes to that provider's API,
    /// and the agent's token arrives where the provider key would.
    Gateway,
    /// Connections redirected by iptables `REDIRECT`: the original destination,
    /// the SNI (or `Host`) and the source address say where and who.
    Transparent,
}

/// How a listener identifies the calling agent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerAuth {
    /// `Proxy-Authorization: Basic base64(agent_id:token)`.
    Basic,
    /// Every connection is this agent (sidecars). Only on loopback unless forced.
    None {
        /// A declared agent id.
        agent: String,
    },
    /// By source address (transparent listeners, the DNS responder): the
    /// first entry whose network holds the peer's address names the agent.
    /// A peer outside every network is refused.
    Sources(Vec<SourceAgent>),
}

/// One `sources = [{ cidr, agent }]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceAgent {
    pub net: ipnet::IpNet,
    /// A declared agent id.
    pub agent: String,
}

impl ListenerAuth {
    /// The agent a connection from `peer` acts as, for the identities that
    /// come from config rather than from a credential.
    pub fn agent_for_peer(&self, peer: IpAddr) -> Option<&str> {
        // A v4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        match self {
            ListenerAuth::None { agent } => Some(agent),
            ListenerAuth::Sources(list) => list
                .iter()
                .find(|s| s.net.contains(&peer))
                .map(|s| s.agent.as_str()),
            ListenerAuth::Basic => None,
        }
    }
}

/// `[dns]`: the allowlisting DNS responder (UDP). It answers A and AAAA
/// queries only for names some route of the asking agent allows, with the
/// addresses the proxy itself resolves; every other query is refused, and
/// nothing is ever forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub bind: SocketAddr,
    /// Who is asking: a fixed agent, or by source address.
    pub auth: ListenerAuth,
    /// The TTL on answers, in seconds. Default 30.
    pub ttl: u32,
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9901`.
    pub bind: SocketAddr,
    /// SHA-256 of the bearer token the admin API requires (everything but
    /// `/healthz`, and `/metrics` unless `metrics_public`). `None`: only
    /// `/healthz`, `/readyz` and (if public) `/metrics` answer.
    pub token_sha256: Option<[u8; 32]>,
    /// Serve `/metrics` without the token. Default false.
    pub metrics_public: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 9901)),
            token_sha256: None,
            metrics_public: false,
        }
    }
}

/// `[ca]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaConfig {
    /// Default `.portcullis/ca`.
    pub dir: PathBuf,
    /// Lifetime of minted leaf certificates. Default 7 days.
    pub leaf_ttl: Duration,
    /// How many leaves the cache keeps. Default 10 000.
    pub cache_capacity: usize,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            dir: PathBuf::from(".portcullis/ca"),
            leaf_ttl: Duration::from_secs(7 * 24 * 3600),
            cache_capacity: 10_000,
        }
    }
}

/// How the ledger makes a decision record durable before the request leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LedgerSync {
    /// `fdatasync` before forwarding (default).
    Always,
    /// Written to the OS before forwarding, synced every `sync_interval`.
    Batch,
}

/// `[ledger]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Default `.portcullis/ledger`.
    pub dir: PathBuf,
    /// Default `always`.
    pub sync: LedgerSync,
    /// Default 100 ms (only for `sync = "batch"`).
    pub sync_interval: Duration,
    /// Sign a checkpoint every this many records. Default 1000.
    pub checkpoint_every: u64,
    /// ... or after this long. Default 1 s.
    pub checkpoint_interval: Duration,
    /// Rotate segments at this size. Default 64 MiB.
    pub segment_max_bytes: u64,
    /// Replica id written into checkpoints. Default "default".
    pub replica_id: String,
    /// Below this much free space on the ledger's disk, `/readyz` fails (a
    /// warning before the disk is full and appends fail closed). Default 64 MiB.
    pub min_free_bytes: u64,
    /// Appends waiting for the writer. A full queue refuses the append at
    /// once, and the request fails closed. Default 65536.
    pub queue_capacity: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            dir: PathBuf::from(".portcullis/ledger"),
            sync: LedgerSync::Always,
            sync_interval: Duration::from_millis(100),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(1),
            segment_max_bytes: 64 * 1024 * 1024,
            replica_id: "default".to_owned(),
            min_free_bytes: 64 * 1024 * 1024,
            queue_capacity: 65_536,
        }
    }
}

/// `[vault]`: the encrypted store of provider keys that routes inject (`inject_key`).
/// The proxy reads the files; this crate only says where they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultConfig {
    /// The vault file. Default `.portcullis/vault.json`.
    pub path: PathBuf,
    /// The file holding the master key that encrypts the vault. `None` (the default):
    /// the proxy decides where the master key comes from.
    pub master_key_file: Option<PathBuf>,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            path: PathBuf::from(".portcullis/vault.json"),
            master_key_file: None,
        }
    }
}

/// `[upstream]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Extra PEM CA files trusted for upstream certificates, besides the webpki roots.
    pub extra_ca: Vec<PathBuf>,
    /// Fixed name → address mappings that bypass DNS (split horizon, tests).
    pub resolve: Vec<ResolveEntry>,
    /// TCP connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// TLS handshake timeout. Default 10 s.
    pub tls_timeout: Duration,
    /// Time to the response head. Default 60 s.
    pub response_header_timeout: Duration,
    /// How long a pooled connection may sit idle. Default 90 s.
    pub idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            extra_ca: Vec::new(),
            resolve: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// One `--resolve` / `[upstream] resolve` entry: connect to `addr` for `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveEntry {
    /// The name the client asked for.
    pub host: Host,
    /// The port the client asked for.
    pub port: u16,
    /// Where to connect instead.
    pub addr: SocketAddr,
}

impl ResolveEntry {
    /// Parse `HOST:PORT:ADDR:PORT`; `ADDR` is an IP literal and may be `[v6]`.
    /// Used by the CLI flag `--resolve` too.
    pub fn parse(s: &str) -> Result<ResolveEntry, String> {
        let hint = "write HOST:PORT:ADDR:PORT, as in `api.openai.com:443:127.0.0.1:4443`";
        let (host, rest) = match s.split_once(':') {
            Some(parts) => parts,
            None => return Err(format!("`{s}` is not a resolve entry; {hint}")),
        };
        let (port, addr) = match rest.split_once(':') {
            Some(parts) => parts,
            None => return Err(format!("`{s}` is not a resolve entry; {hint}")),
        };
        let host = Host::parse(host).map_err(|e| format!("`{s}`: bad host: {e}"))?;
        let port = parse_port(port)
            .ok_or_else(|| format!("`{s}`: `{port}` is not a port (1-65535); {hint}"))?;
        let addr = parse_ip_port(addr).ok_or_else(|| {
            format!("`{s}`: `{addr}` is not IP:PORT (write IPv6 as `[::1]:443`); {hint}")
        })?;
        Ok(ResolveEntry { host, port, addr })
    }
}

impl fmt::Display for ResolveEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.host, self.port, self.addr)
    }
}

/// `IP:PORT` or `[v6]:PORT`, strictly (no inet_aton spellings), port 1..=65535.
fn parse_ip_port(s: &str) -> Option<SocketAddr> {
    let (ip, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest.split_once("]:")?;
        (ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)?, port)
    } else {
        let (ip, port) = s.rsplit_once(':')?;
        (ip.parse::<IpAddr>().ok()?, port)
    };
    Some(SocketAddr::new(ip, parse_port(port)?))
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a complete request head (slowloris guard), and the
    /// longest pause while its body is read for inspection. Default 10 s.
    pub client_header_timeout: Duration,
    /// A request body that sends nothing for this long is cut off (slow POST
    /// guard): before the decision it gets `408`, while streaming the
    /// upstream request is aborted. Default 30 s.
    pub body_progress_timeout: Duration,
    /// An HTTP/2 client connection with no stream in flight, and none started or ended
    /// for this long, is sent GOAWAY and closed, so that idle connections cannot hold
    /// connection slots for ever; it closes between one and two times this after the
    /// last activity. (An idle HTTP/1 connection closes at `client_header_timeout`,
    /// which also bounds the wait for the next request head.) Default 120 s.
    pub client_idle_timeout: Duration,
    /// Largest request head accepted. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Largest body read for inspection. Default 8 MiB.
    pub max_inspect_body: u64,
    /// Bytes of request bodies held for inspection at once, all tenants together.
    /// Default 256 MiB (32 bodies of the largest size; most bodies are a few KiB).
    pub inspect_memory: u64,
    /// ... and by one tenant's requests. Default 64 MiB, a quarter of the whole, so that
    /// one tenant's large bodies cannot starve the others. At least `max_inspect_body`.
    pub inspect_memory_per_tenant: u64,
    /// Concurrent client connections. Default 10 000.
    pub max_connections: usize,
    /// Open tunnels (CONNECTs and redirected connections) one agent may hold,
    /// so one agent cannot take every connection slot. Default 1 024.
    pub max_connections_per_agent: usize,
    /// Open connections from one client address, counted before anyone is identified,
    /// so that no one address can take every connection slot. Default 2 048.
    pub max_connections_per_peer: usize,
    /// How long shutdown waits for in-flight requests. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_header_timeout: Duration::from_secs(10),
            body_progress_timeout: Duration::from_secs(30),
            client_idle_timeout: Duration::from_secs(120),
            max_header_bytes: 64 * 1024,
            max_inspect_body: 8 * 1024 * 1024,
            inspect_memory: 256 * 1024 * 1024,
            inspect_memory_per_tenant: 64 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_agent: 1024,
            max_connections_per_peer: 2048,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Every problem found in a config file. `Display` prints one `file:line:col: message`
/// per line, sorted by position.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_errors(.errors))]
pub struct ConfigErrors {
    /// At least one.
    pub errors: Vec<ConfigError>,
}

fn render_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ConfigError::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One config problem, with a 1-based position and a message that suggests the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct ConfigError {
    /// The file name given to [`parse_config`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Parse and validate a config file. `name` is the file name used in error messages.
pub fn parse_config(name: &str, text: &str) -> Result<Config, ConfigErrors> {
    let mut cx = Errors {
        file: name,
        text,
        errors: Vec::new(),
        pruned: Vec::new(),
    };
    let mut doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            cx.toml_error(&e);
            return Err(cx.finish());
        }
    };
    // Unknown keys are reported (all of them) and removed first, so that serde's
    // `deny_unknown_fields` does not stop at the first and hide everything else.
    let span = doc.span();
    cx.prune_unknown_keys(doc.get_mut(), span, &schema::ROOT);
    let raw = match RawConfig::deserialize(toml::de::Deserializer::from(doc)) {
        Ok(raw) => raw,
        Err(e) => {
            cx.toml_error(&e);
            return Err(cx.finish());
        }
    };
    let config = cx.config(raw);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(cx.finish())
    }
}
