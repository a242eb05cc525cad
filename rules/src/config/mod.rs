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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod schema;

use crate::agent::Agent;
use crate::catalog::{
    builtin_provider_ids, ApiStyle, Catalog, KeyInjection, ModelSource, Operation, Provider,
    ProviderHost,
};
use crate::detect::{DetectorMode, Detectors};
use crate::host::{parse_port, Host, HostPattern};
use crate::narrow::NarrowSpec;
use crate::policy::Policy;
use crate::reason::Action;
use crate::route::{Mode, ModelPattern, PathPattern, Route};

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
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9901`.
    pub bind: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 9901)),
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
    /// Time a client has to send a complete request head (slowloris guard). Default 10 s.
    pub client_header_timeout: Duration,
    /// Largest request head accepted. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Largest body read for inspection. Default 8 MiB.
    pub max_inspect_body: u64,
    /// Concurrent client connections. Default 10 000.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_inspect_body: 8 * 1024 * 1024,
            max_connections: 10_000,
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

// ---------------------------------------------------------------------------------------
// Raw structs: exactly the file's shape, every table `deny_unknown_fields`.

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: Option<S<i64>>,
    listeners: Option<S<Vec<S<RawListener>>>>,
    admin: Option<RawAdmin>,
    ca: Option<RawCa>,
    ledger: Option<RawLedger>,
    upstream: Option<RawUpstream>,
    limits: Option<RawLimits>,
    #[serde(default)]
    tenants: Vec<S<RawTenant>>,
    #[serde(default)]
    agents: Vec<S<RawAgent>>,
    #[serde(default)]
    routes: Vec<S<RawRoute>>,
    #[serde(default)]
    providers: Vec<S<RawProvider>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<S<String>>,
    bind: Option<S<String>>,
    mode: Option<S<String>>,
    auth: Option<S<String>>,
    agent: Option<S<String>>,
    force_unauthenticated: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    dir: Option<S<String>>,
    leaf_ttl: Option<S<RawDuration>>,
    cache_capacity: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    dir: Option<S<String>>,
    sync: Option<S<String>>,
    sync_interval: Option<S<RawDuration>>,
    checkpoint_every: Option<S<i64>>,
    checkpoint_interval: Option<S<RawDuration>>,
    segment_max_bytes: Option<S<i64>>,
    replica_id: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    extra_ca: Vec<S<String>>,
    #[serde(default)]
    resolve: Vec<S<String>>,
    connect_timeout: Option<S<RawDuration>>,
    tls_timeout: Option<S<RawDuration>>,
    response_header_timeout: Option<S<RawDuration>>,
    idle_timeout: Option<S<RawDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    client_header_timeout: Option<S<RawDuration>>,
    max_header_bytes: Option<S<i64>>,
    max_inspect_body: Option<S<i64>>,
    max_connections: Option<S<i64>>,
    shutdown_grace: Option<S<RawDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: Option<S<String>>,
    tenant: Option<S<String>>,
    token_sha256: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    id: Option<S<String>>,
    tenants: Option<S<Vec<S<String>>>>,
    agents: Option<S<Vec<S<String>>>>,
    hosts: Option<S<Vec<S<String>>>>,
    ports: Option<S<Vec<S<i64>>>>,
    methods: Option<S<Vec<S<String>>>>,
    paths: Option<S<Vec<S<String>>>>,
    action: Option<S<String>>,
    mode: Option<S<String>>,
    websocket: Option<bool>,
    allow_plaintext: Option<bool>,
    allow_private: Option<Vec<S<String>>>,
    models: Option<S<Vec<S<String>>>>,
    operations: Option<S<Vec<S<String>>>>,
    providers: Option<S<Vec<S<String>>>>,
    detectors: Option<S<RawDetectors>>,
    narrow: Option<S<RawNarrow>>,
    // SPEC §4.1 keys that later versions implement. Accepted here only to say so clearly.
    inject_key: Option<S<toml::Value>>,
    budget: Option<S<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetectors {
    injection: Option<S<String>>,
    secrets: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNarrow {
    max_tokens: Option<S<i64>>,
    fallback_model: Option<S<String>>,
    tools_allow: Option<S<Vec<S<String>>>>,
    force_include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    id: Option<S<String>>,
    hosts: Option<S<Vec<S<String>>>>,
    api: Option<S<String>>,
    model_from: Option<S<Vec<S<String>>>>,
    auth_header: Option<S<String>>,
    auth_format: Option<S<String>>,
}

/// A duration as written. Numbers are read only to explain that a unit is needed.
enum RawDuration {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration string such as \"500ms\", \"10s\", \"5m\", \"2h\" or \"7d\"",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Number(v))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

// ---------------------------------------------------------------------------------------
// Validation: convert raw into public types, recording every error and carrying on.

struct Errors<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Where the tables that had unknown keys removed start.
    pruned: Vec<usize>,
}

/// Where the first declaration of an id was, for "duplicate" messages.
type Seen = HashMap<String, Range<usize>>;

impl Errors<'_> {
    fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            message: message.into(),
        });
    }

    /// An error about a table as a whole (a required key is missing, it sets nothing).
    /// Dropped for a table that had unknown keys: the key is most likely misspelled, and
    /// the unknown-key error already says so.
    fn at_table(&mut self, span: &Range<usize>, message: impl Into<String>) {
        if !self.pruned.contains(&span.start) {
            self.at(span, message);
        }
    }

    /// A syntax or type error from the TOML reader.
    fn toml_error(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        // Serde messages may span lines; keep one line per error.
        self.at(&span, e.message().trim().replace('\n', "; "));
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    fn finish(mut self) -> ConfigErrors {
        // Stable sort: errors at one position keep the order they were found in.
        self.errors.sort_by_key(|e| (e.line, e.col));
        ConfigErrors {
            errors: self.errors,
        }
    }

    /// Record `result`'s error at `span`, and turn it into an `Option`.
    fn check<T>(&mut self, span: &Range<usize>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.at(span, message);
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        match &raw.version {
            None => self.at_table(
                &(0..0),
                "missing `version = 1`; add it as the first line of the file",
            ),
            Some(v) if *v.get_ref() != 1 => self.at(
                &v.span(),
                format!(
                    "unsupported version {}; this Portcullis reads `version = 1`",
                    v.get_ref()
                ),
            ),
            Some(_) => {}
        }

        // References are checked against every declared id, valid or not, so that one
        // broken agent does not also produce an error at each place that names it.
        let tenants = self.tenants(raw.tenants);
        let (agent_ids, agents) = self.agents(raw.agents, &tenants);
        let (provider_ids, providers) = self.providers(raw.providers);
        let known = Known {
            tenants: &tenants,
            agents: &agent_ids,
            providers: &provider_ids,
        };
        let routes = self.routes(raw.routes, &known);
        let admin = self.admin(raw.admin);
        let listeners = self.listeners(raw.listeners, &agent_ids, &admin);
        let ca = self.ca(raw.ca);
        let ledger = self.ledger(raw.ledger);
        let upstream = self.upstream(raw.upstream);
        let limits = self.limits(raw.limits);

        let tenants: Vec<String> = tenants.into_keys_in_order();
        Config {
            listeners,
            admin,
            ca,
            upstream,
            limits,
            ledger,
            policy: Arc::new(Policy::new(
                tenants,
                agents,
                routes,
                Catalog::new(providers),
                self.text,
            )),
        }
    }

    /// A valid, not yet seen id; records an error otherwise.
    fn new_id(&mut self, kind: &str, id: &S<String>, seen: &mut Seen) -> Option<String> {
        let value = id.get_ref();
        if let Err(message) = validate_id(kind, value) {
            self.at(&id.span(), message);
            return None;
        }
        if let Some(first) = seen.get(value) {
            let line = self.line_of(first);
            self.at(
                &id.span(),
                format!("duplicate {kind} id `{value}` (first declared on line {line}); ids must be unique, rename one"),
            );
            return None;
        }
        seen.insert(value.clone(), id.span());
        Some(value.clone())
    }

    fn tenants(&mut self, raw: Vec<S<RawTenant>>) -> OrderedIds {
        let mut seen = Seen::new();
        let mut ids = OrderedIds::default();
        for tenant in raw {
            let span = tenant.span();
            match &tenant.get_ref().id {
                None => self.at_table(&span, "tenant needs an `id`, as in `id = \"acme\"`"),
                Some(id) => {
                    if let Some(id) = self.new_id("tenant", id, &mut seen) {
                        ids.push(id);
                    }
                }
            }
        }
        ids
    }

    fn agents(&mut self, raw: Vec<S<RawAgent>>, tenants: &OrderedIds) -> (OrderedIds, Vec<Agent>) {
        let mut seen = Seen::new();
        let mut ids = OrderedIds::default();
        let mut agents = Vec::new();
        for agent in raw {
            let span = agent.span();
            let agent = agent.into_inner();
            let id = match &agent.id {
                None => {
                    self.at_table(&span, "agent needs an `id`, as in `id = \"research-bot\"`");
                    None
                }
                Some(id) => self.new_id("agent", id, &mut seen),
            };
            if let Some(id) = &id {
                ids.push(id.clone());
            }
            let tenant = match &agent.tenant {
                None => {
                    self.at_table(&span, "agent needs a `tenant`, as in `tenant = \"acme\"`; every agent belongs to exactly one tenant");
                    None
                }
                Some(tenant) if !tenants.contains(tenant.get_ref()) => {
                    self.at(
                        &tenant.span(),
                        format!(
                            "agent refers to unknown tenant `{}`; declare it with [[tenants]] id = \"{}\"",
                            tenant.get_ref(),
                            tenant.get_ref()
                        ),
                    );
                    None
                }
                Some(tenant) => Some(tenant.get_ref().clone()),
            };
            let token = match &agent.token_sha256 {
                None => {
                    self.at_table(&span, "agent needs a `token_sha256` (64 hex characters; `portcullis agent hash-token` prints it)");
                    None
                }
                Some(token) => self.check(&token.span(), parse_token_hash(token.get_ref())),
            };
            if let (Some(id), Some(tenant), Some(token)) = (id, tenant, token) {
                agents.push(Agent::new(id, tenant, token));
            }
        }
        (ids, agents)
    }

    fn routes(&mut self, raw: Vec<S<RawRoute>>, known: &Known<'_>) -> Vec<Route> {
        let mut seen = Seen::new();
        raw.into_iter()
            .map(|route| self.route(route, known, &mut seen))
            .collect()
    }

    fn route(&mut self, raw: S<RawRoute>, known: &Known<'_>, seen: &mut Seen) -> Route {
        let span = raw.span();
        let raw = raw.into_inner();

        let id = match &raw.id {
            None => {
                self.at_table(&span, "route needs an `id`, as in `id = \"acme-openai\"`; it names the route in the ledger");
                String::new()
            }
            Some(id) => self.new_id("route", id, seen).unwrap_or_default(),
        };

        for (key, value) in [("inject_key", &raw.inject_key), ("budget", &raw.budget)] {
            if let Some(value) = value {
                self.at(
                    &value.span(),
                    format!(
                        "`{key}` is not supported yet by this version of Portcullis; remove it"
                    ),
                );
            }
        }

        if let (Some(t), Some(_)) = (&raw.tenants, &raw.agents) {
            self.at(
                &t.span(),
                "a route takes `tenants` or `agents`, not both; split it into two routes",
            );
        }
        let tenants = self.scope_list(raw.tenants, "tenants", "tenant", |id| {
            known.tenants.contains(id)
        });
        let agents = self.scope_list(raw.agents, "agents", "agent", |id| {
            known.agents.contains(id)
        });

        let hosts = self.route_hosts(&span, raw.hosts);
        let action = self.route_action(&span, raw.action.as_ref());
        let mode = self.route_mode(raw.mode.as_ref());
        let allow_plaintext = raw.allow_plaintext.unwrap_or(false);
        let ports = self.route_ports(raw.ports, action, allow_plaintext);
        let methods = self.optional_list(raw.methods.as_ref(), "methods", "method", parse_method);
        let paths = self.optional_list(raw.paths.as_ref(), "paths", "path", PathPattern::parse);

        let models =
            self.optional_list(raw.models.as_ref(), "models", "model", ModelPattern::parse);
        let operations = self.optional_list(
            raw.operations.as_ref(),
            "operations",
            "operation",
            parse_operation,
        );
        let providers = self.optional_list(raw.providers.as_ref(), "providers", "provider", |id| {
            known.provider(id)
        });
        let detectors = self.route_detectors(raw.detectors.as_ref());
        let narrow = self.route_narrow(raw.narrow.as_ref(), raw.action.as_ref(), action, &models);

        if mode == Mode::Passthrough {
            let spans = [
                ("methods", raw.methods.as_ref().map(Spanned::span)),
                ("paths", raw.paths.as_ref().map(Spanned::span)),
                ("models", raw.models.as_ref().map(Spanned::span)),
                ("operations", raw.operations.as_ref().map(Spanned::span)),
                ("detectors", raw.detectors.as_ref().map(Spanned::span)),
                ("narrow", raw.narrow.as_ref().map(Spanned::span)),
            ];
            for (key, span) in spans {
                if let Some(span) = span {
                    self.at(
                        &span,
                        format!("a passthrough route cannot enforce `{key}` (the proxy never sees the requests inside); remove `{key}` or use mode = \"intercept\""),
                    );
                }
            }
        }
        if action == Action::Deny {
            if let Some(raw_detectors) = &raw.detectors {
                self.at(
                    &raw_detectors.span(),
                    "a deny route refuses every request it matches, so `detectors` has nothing to do; remove it, or use action = \"allow\"",
                );
            }
        }

        let allow_private = raw
            .allow_private
            .unwrap_or_default()
            .into_iter()
            .filter_map(|net| self.check(&net.span(), parse_net(net.get_ref())))
            .collect();

        Route {
            id,
            tenants,
            agents,
            hosts,
            ports,
            methods,
            paths,
            action,
            models,
            operations,
            providers,
            detectors,
            narrow,
            mode,
            websocket: raw.websocket.unwrap_or(false),
            allow_plaintext,
            allow_private,
        }
    }

    fn route_hosts(
        &mut self,
        route_span: &Range<usize>,
        raw: Option<S<Vec<S<String>>>>,
    ) -> Vec<HostPattern> {
        let example = "as in `hosts = [\"api.openai.com\"]`";
        let Some(list) = raw else {
            self.at_table(
                route_span,
                format!("route has no `hosts`; add the hosts it covers, {example}"),
            );
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.at(
                &list.span(),
                format!("route has an empty `hosts` list; add the hosts it covers, {example}"),
            );
        }
        list.into_inner()
            .iter()
            .filter_map(|host| self.check(&host.span(), HostPattern::parse(host.get_ref())))
            .collect()
    }

    /// A missing or unusable action becomes `Deny` (the config is rejected anyway).
    fn route_action(&mut self, route_span: &Range<usize>, raw: Option<&S<String>>) -> Action {
        let choices = "\"allow\", \"deny\", \"narrow\" or \"warn\"";
        let Some(action) = raw else {
            self.at_table(route_span, format!("route needs an `action`: {choices}"));
            return Action::Deny;
        };
        match action.get_ref().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "narrow" => Action::Narrow,
            "warn" => Action::Warn,
            other @ "approve" => {
                self.at(
                    &action.span(),
                    format!("action \"{other}\" is not supported yet by this version of Portcullis; use {choices}"),
                );
                Action::Deny
            }
            other => {
                self.at(
                    &action.span(),
                    format!("unknown action \"{other}\"; use {choices}"),
                );
                Action::Deny
            }
        }
    }

    /// `detectors = { injection = "block", secrets = "warn" }`; omitted means off.
    fn route_detectors(&mut self, raw: Option<&S<RawDetectors>>) -> Detectors {
        let mut detectors = Detectors::default();
        let Some(raw) = raw else {
            return detectors;
        };
        let raw = raw.get_ref();
        for (slot, value) in [
            (&mut detectors.injection, &raw.injection),
            (&mut detectors.secrets, &raw.secrets),
        ] {
            if let Some(value) = value {
                match DetectorMode::parse(value.get_ref()) {
                    Some(mode) => *slot = mode,
                    None => self.at(
                        &value.span(),
                        format!(
                            "unknown detector mode \"{}\"; use \"block\", \"warn\" or \"off\"",
                            value.get_ref()
                        ),
                    ),
                }
            }
        }
        detectors
    }

    /// `narrow = { … }`: present exactly when `action = "narrow"`, and sets something.
    fn route_narrow(
        &mut self,
        raw: Option<&S<RawNarrow>>,
        raw_action: Option<&S<String>>,
        action: Action,
        models: &[ModelPattern],
    ) -> Option<NarrowSpec> {
        let Some(table) = raw else {
            if action == Action::Narrow {
                let span = raw_action.map_or(0..0, Spanned::span);
                self.at(
                    &span,
                    "action = \"narrow\" needs a `narrow` table saying how, as in `narrow = { max_tokens = 2048 }`",
                );
            }
            return None;
        };
        if action != Action::Narrow {
            self.at(
                &table.span(),
                "`narrow` only applies to a route with action = \"narrow\"; set the action, or remove `narrow`",
            );
            return None;
        }
        let span = table.span();
        let table = table.get_ref();
        let mut spec = NarrowSpec::default();
        if table.max_tokens.is_none()
            && table.fallback_model.is_none()
            && table.tools_allow.is_none()
            && table.force_include_usage.is_none()
        {
            self.at_table(
                &span,
                "`narrow` sets nothing; give at least one of max_tokens, fallback_model, tools_allow or force_include_usage",
            );
        }
        if let Some(max) = &table.max_tokens {
            spec.max_tokens = self.positive(Some(max.clone()));
        }
        if let Some(model) = &table.fallback_model {
            let name = model.get_ref();
            match ModelPattern::parse(name) {
                Ok(ModelPattern::Exact(_)) => {
                    let covered = models.is_empty() || models.iter().any(|p| p.matches(name));
                    if covered {
                        spec.fallback_model = Some(name.clone());
                    } else {
                        self.at(
                            &model.span(),
                            format!("fallback_model `{name}` is not in this route's `models`, so narrowing would still send a disallowed model; pick one of the listed models"),
                        );
                    }
                }
                Ok(ModelPattern::Prefix(_)) => self.at(
                    &model.span(),
                    format!("fallback_model `{name}` is a pattern; it must name one model, as in \"gpt-4o-mini\""),
                ),
                Err(message) => self.at(&model.span(), message),
            }
        }
        if let Some(tools) = &table.tools_allow {
            let mut names = Vec::new();
            for tool in tools.get_ref() {
                if tool.get_ref().trim().is_empty() {
                    self.at(
                        &tool.span(),
                        "a tools_allow entry is empty; write a tool or function name",
                    );
                } else {
                    names.push(tool.get_ref().clone());
                }
            }
            spec.tools_allow = Some(names);
        }
        spec.force_include_usage = table.force_include_usage.unwrap_or(false);
        Some(spec)
    }

    /// `[[providers]]`: catalog entries. Returns every declared id (valid or not, for
    /// reference checks) with the built-in ids, and the valid entries.
    fn providers(&mut self, raw: Vec<S<RawProvider>>) -> (OrderedIds, Vec<Provider>) {
        let mut ids = OrderedIds::default();
        for id in builtin_provider_ids() {
            ids.push(id.to_owned());
        }
        let mut seen = Seen::new();
        let mut providers = Vec::new();
        for entry in raw {
            let span = entry.span();
            let entry = entry.into_inner();
            let id = match &entry.id {
                None => {
                    self.at_table(&span, "provider needs an `id`, as in `id = \"local-vllm\"`; routes name it in `providers`");
                    None
                }
                Some(id) => {
                    if !ids.contains(id.get_ref()) {
                        ids.push(id.get_ref().clone());
                    }
                    self.new_id("provider", id, &mut seen)
                }
            };
            let hosts = match &entry.hosts {
                None => {
                    self.at_table(&span, "provider has no `hosts`; list the hosts it answers on, as in `hosts = [\"llm.example.com\"]`");
                    None
                }
                Some(list) => {
                    if list.get_ref().is_empty() {
                        self.at(
                            &list.span(),
                            "provider has an empty `hosts` list; list the hosts it answers on",
                        );
                    }
                    let hosts: Vec<ProviderHost> = list
                        .get_ref()
                        .iter()
                        .filter_map(|h| self.check(&h.span(), ProviderHost::parse(h.get_ref())))
                        .collect();
                    Some(hosts)
                }
            };
            let api = match &entry.api {
                None => Some(ApiStyle::OpenAi),
                Some(api) => {
                    let parsed = ApiStyle::parse(api.get_ref());
                    if parsed.is_none() {
                        let names: Vec<&str> = ApiStyle::ALL.iter().map(ApiStyle::as_str).collect();
                        self.at(
                            &api.span(),
                            format!(
                                "unknown api \"{}\"; use one of {}",
                                api.get_ref(),
                                names.join(", ")
                            ),
                        );
                    }
                    parsed
                }
            };
            let model_from = match &entry.model_from {
                None => vec![ModelSource::Body("model".to_owned())],
                Some(list) => {
                    if list.get_ref().is_empty() {
                        self.at(&list.span(), "provider has an empty `model_from` list; remove it for the default [\"body:model\"], or list sources");
                    }
                    list.get_ref()
                        .iter()
                        .filter_map(|m| self.check(&m.span(), ModelSource::parse(m.get_ref())))
                        .collect()
                }
            };
            let header = match &entry.auth_header {
                None => Some("authorization".to_owned()),
                Some(h) => self.check(&h.span(), parse_auth_header(h.get_ref())),
            };
            let format = match &entry.auth_format {
                None => Some("Bearer {key}".to_owned()),
                Some(f) => self.check(&f.span(), parse_auth_format(f.get_ref())),
            };
            if let (Some(id), Some(hosts), Some(api), Some(header), Some(format)) =
                (id, hosts, api, header, format)
            {
                providers.push(Provider {
                    id,
                    hosts,
                    api,
                    model_from,
                    key_injection: KeyInjection { header, format },
                });
            }
        }
        (ids, providers)
    }

    fn route_mode(&mut self, raw: Option<&S<String>>) -> Mode {
        let Some(mode) = raw else {
            return Mode::Intercept;
        };
        match mode.get_ref().as_str() {
            "intercept" => Mode::Intercept,
            "passthrough" => Mode::Passthrough,
            other => {
                self.at(
                    &mode.span(),
                    format!("unknown mode \"{other}\"; use \"intercept\" or \"passthrough\""),
                );
                Mode::Intercept
            }
        }
    }

    /// Default `[443]`, plus 80 with `allow_plaintext`. A deny route covers both by
    /// default, so that it cannot be sidestepped over plain HTTP.
    fn route_ports(
        &mut self,
        raw: Option<S<Vec<S<i64>>>>,
        action: Action,
        allow_plaintext: bool,
    ) -> Vec<u16> {
        let Some(list) = raw else {
            return match (action, allow_plaintext) {
                (Action::Deny, _) | (_, true) => vec![443, 80],
                _ => vec![443],
            };
        };
        if list.get_ref().is_empty() {
            self.at(
                &list.span(),
                "route has an empty `ports` list; list ports, or remove `ports` to use the default [443]",
            );
        }
        let mut ports = Vec::new();
        for port in list.into_inner() {
            let value = *port.get_ref();
            match u16::try_from(value) {
                Ok(p) if p != 0 => ports.push(p),
                _ => self.at(
                    &port.span(),
                    format!("port {value} is out of range; use a port from 1 to 65535"),
                ),
            }
        }
        ports
    }

    /// `methods` / `paths`: absent means "any", so an explicit empty list is a mistake.
    fn optional_list<T>(
        &mut self,
        raw: Option<&S<Vec<S<String>>>>,
        key: &str,
        what: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let Some(list) = raw else {
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.at(
                &list.span(),
                format!("route has an empty `{key}` list; remove `{key}` to allow any {what}, or list them"),
            );
        }
        list.get_ref()
            .iter()
            .filter_map(|item| self.check(&item.span(), parse(item.get_ref())))
            .collect()
    }

    /// A route's `tenants` or `agents` list: present means non-empty, and every id known.
    fn scope_list(
        &mut self,
        list: Option<S<Vec<S<String>>>>,
        key: &str,
        kind: &str,
        known: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let Some(list) = list else {
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.at(
                &list.span(),
                format!("`{key} = []` names no {kind}; list at least one, or remove `{key}` to apply the route to every agent"),
            );
        }
        let mut ids = Vec::new();
        for id in list.into_inner() {
            if known(id.get_ref()) {
                ids.push(id.into_inner());
            } else {
                self.at(
                    &id.span(),
                    format!(
                        "route refers to unknown {kind} `{}`; declare it with [[{key}]] or fix the spelling",
                        id.get_ref()
                    ),
                );
            }
        }
        ids
    }

    fn admin(&mut self, raw: Option<RawAdmin>) -> AdminConfig {
        let mut admin = AdminConfig::default();
        if let Some(bind) = raw.and_then(|raw| raw.bind) {
            if let Some(addr) = self.check(&bind.span(), parse_bind(bind.get_ref())) {
                admin.bind = addr;
            }
        }
        admin
    }

    fn listeners(
        &mut self,
        raw: Option<S<Vec<S<RawListener>>>>,
        agents: &OrderedIds,
        admin: &AdminConfig,
    ) -> Vec<ListenerConfig> {
        let Some(raw) = raw else {
            return vec![ListenerConfig::default()];
        };
        if raw.get_ref().is_empty() {
            self.at(
                &raw.span(),
                "`listeners` is empty; add a [[listeners]] table, or remove the key for the default listener on 127.0.0.1:8080",
            );
        }
        let mut names = Seen::new();
        let mut binds: HashMap<SocketAddr, Range<usize>> = HashMap::new();
        let mut listeners = Vec::new();
        for listener in raw.into_inner() {
            let span = listener.span();
            let listener = listener.into_inner();

            let name = match &listener.name {
                None => "forward".to_owned(),
                Some(name) => name.get_ref().clone(),
            };
            let name_span = listener.name.as_ref().map_or(span.clone(), Spanned::span);
            if let Err(message) = validate_id("listener", &name) {
                self.at(&name_span, message);
            } else if let Some(first) = names.get(&name) {
                let line = self.line_of(first);
                self.at(
                    &name_span,
                    format!("duplicate listener name `{name}` (first used on line {line}); give each listener a unique `name`"),
                );
            } else {
                names.insert(name.clone(), name_span);
            }

            let bind = match &listener.bind {
                None => {
                    self.at(
                        &span,
                        "listener needs a `bind` address, as in `bind = \"127.0.0.1:8080\"`",
                    );
                    None
                }
                Some(bind) => {
                    let addr = self.check(&bind.span(), parse_bind(bind.get_ref()));
                    if let Some(addr) = addr.filter(|addr| addr.port() != 0) {
                        if addr == admin.bind {
                            self.at(
                                &bind.span(),
                                format!(
                                    "listener bind {addr} is also the admin bind; use another port"
                                ),
                            );
                        } else if let Some(first) = binds.get(&addr) {
                            let line = self.line_of(first);
                            self.at(
                                &bind.span(),
                                format!("duplicate listener bind {addr} (first used on line {line}); each listener needs its own address"),
                            );
                        } else {
                            binds.insert(addr, bind.span());
                        }
                    }
                    addr
                }
            };

            let mode = match &listener.mode {
                None => Some(ListenerMode::Forward),
                Some(mode) => match mode.get_ref().as_str() {
                    "forward" => Some(ListenerMode::Forward),
                    other @ ("transparent" | "gateway") => {
                        self.at(
                            &mode.span(),
                            format!("listener mode \"{other}\" is not supported yet by this version of Portcullis; use mode = \"forward\""),
                        );
                        None
                    }
                    other => {
                        self.at(
                            &mode.span(),
                            format!("unknown listener mode \"{other}\"; use mode = \"forward\""),
                        );
                        None
                    }
                },
            };

            let auth = self.listener_auth(&listener, span.clone(), bind, agents);

            if let (Some(bind), Some(mode), Some(auth)) = (bind, mode, auth) {
                listeners.push(ListenerConfig {
                    name,
                    bind,
                    mode,
                    auth,
                });
            }
        }
        listeners
    }

    fn listener_auth(
        &mut self,
        listener: &RawListener,
        span: Range<usize>,
        bind: Option<SocketAddr>,
        agents: &OrderedIds,
    ) -> Option<ListenerAuth> {
        let auth_span = listener.auth.as_ref().map_or(span.clone(), Spanned::span);
        match listener.auth.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("basic") => {
                if let Some(agent) = &listener.agent {
                    self.at(
                        &agent.span(),
                        "`agent` only applies to a listener with auth = \"none\"; remove it, or set auth = \"none\"",
                    );
                    return None;
                }
                Some(ListenerAuth::Basic)
            }
            Some("none") => {
                let Some(agent) = &listener.agent else {
                    self.at(
                        &auth_span,
                        "a listener with auth = \"none\" needs `agent = \"…\"`: the declared agent every connection acts as",
                    );
                    return None;
                };
                let id = agent.get_ref();
                if !agents.contains(id) {
                    self.at(
                        &agent.span(),
                        format!("listener refers to unknown agent `{id}`; declare it with [[agents]] or fix the spelling"),
                    );
                    return None;
                }
                if let Some(bind) = bind {
                    if !bind.ip().is_loopback() && listener.force_unauthenticated != Some(true) {
                        self.at(
                            &auth_span,
                            format!("auth = \"none\" on the non-loopback address {bind} lets anyone who can reach it act as agent `{id}`; bind to 127.0.0.1, use auth = \"basic\", or set force_unauthenticated = true"),
                        );
                        return None;
                    }
                }
                Some(ListenerAuth::None { agent: id.clone() })
            }
            Some(other) => {
                self.at(
                    &auth_span,
                    format!("unknown auth \"{other}\"; use auth = \"basic\" or auth = \"none\""),
                );
                None
            }
        }
    }

    fn ca(&mut self, raw: Option<RawCa>) -> CaConfig {
        let mut ca = CaConfig::default();
        let Some(raw) = raw else { return ca };
        if let Some(dir) = self.dir(raw.dir) {
            ca.dir = dir;
        }
        if let Some(ttl) = self.duration(raw.leaf_ttl, false) {
            ca.leaf_ttl = ttl;
        }
        if let Some(n) = self.positive(raw.cache_capacity) {
            ca.cache_capacity = n;
        }
        ca
    }

    fn ledger(&mut self, raw: Option<RawLedger>) -> LedgerConfig {
        let mut ledger = LedgerConfig::default();
        let Some(raw) = raw else { return ledger };
        if let Some(dir) = self.dir(raw.dir) {
            ledger.dir = dir;
        }
        if let Some(sync) = raw.sync {
            match sync.get_ref().as_str() {
                "always" => ledger.sync = LedgerSync::Always,
                "batch" => ledger.sync = LedgerSync::Batch,
                other => self.at(
                    &sync.span(),
                    format!("unknown ledger sync \"{other}\"; use \"always\" (fsync before forwarding) or \"batch\""),
                ),
            }
        }
        if let Some(value) = self.duration(raw.sync_interval, false) {
            ledger.sync_interval = value;
        }
        if let Some(value) = self.positive(raw.checkpoint_every) {
            ledger.checkpoint_every = value;
        }
        if let Some(value) = self.duration(raw.checkpoint_interval, false) {
            ledger.checkpoint_interval = value;
        }
        if let Some(raw_max) = raw.segment_max_bytes {
            let span = raw_max.span();
            match self.positive::<u64>(Some(raw_max)) {
                Some(value) if value < 4096 => self.at(
                    &span,
                    "segment_max_bytes must be at least 4096 (use e.g. 67108864)",
                ),
                Some(value) => ledger.segment_max_bytes = value,
                None => {}
            }
        }
        if let Some(id) = raw.replica_id {
            match validate_id("replica_id", id.get_ref()) {
                Ok(()) => ledger.replica_id = id.into_inner(),
                Err(message) => self.at(&id.span(), message),
            }
        }
        ledger
    }

    fn upstream(&mut self, raw: Option<RawUpstream>) -> UpstreamConfig {
        let mut upstream = UpstreamConfig::default();
        let Some(raw) = raw else { return upstream };
        for file in raw.extra_ca {
            if let Some(path) = self.dir(Some(file)) {
                upstream.extra_ca.push(path);
            }
        }
        for entry in raw.resolve {
            if let Some(entry) = self.check(&entry.span(), ResolveEntry::parse(entry.get_ref())) {
                upstream.resolve.push(entry);
            }
        }
        let timeouts = [
            (raw.connect_timeout, &mut upstream.connect_timeout),
            (raw.tls_timeout, &mut upstream.tls_timeout),
            (
                raw.response_header_timeout,
                &mut upstream.response_header_timeout,
            ),
            (raw.idle_timeout, &mut upstream.idle_timeout),
        ];
        for (raw, slot) in timeouts {
            if let Some(value) = self.duration(raw, false) {
                *slot = value;
            }
        }
        upstream
    }

    fn limits(&mut self, raw: Option<RawLimits>) -> Limits {
        let mut limits = Limits::default();
        let Some(raw) = raw else { return limits };
        if let Some(value) = self.duration(raw.client_header_timeout, false) {
            limits.client_header_timeout = value;
        }
        if let Some(value) = self.positive(raw.max_header_bytes) {
            limits.max_header_bytes = value;
        }
        if let Some(value) = self.positive(raw.max_inspect_body) {
            limits.max_inspect_body = value;
        }
        if let Some(value) = self.positive(raw.max_connections) {
            limits.max_connections = value;
        }
        // Zero grace is a legitimate "stop now".
        if let Some(value) = self.duration(raw.shutdown_grace, true) {
            limits.shutdown_grace = value;
        }
        limits
    }

    fn dir(&mut self, raw: Option<S<String>>) -> Option<PathBuf> {
        let raw = raw?;
        if raw.get_ref().is_empty() {
            self.at(
                &raw.span(),
                "the path is empty; write a file or directory path",
            );
            return None;
        }
        Some(PathBuf::from(raw.into_inner()))
    }

    fn duration(&mut self, raw: Option<S<RawDuration>>, zero_ok: bool) -> Option<Duration> {
        let raw = raw?;
        let result = match raw.get_ref() {
            RawDuration::Text(text) => parse_duration(text).and_then(|d| {
                if d.is_zero() && !zero_ok {
                    Err(format!(
                        "duration \"{text}\" is zero; use a positive duration such as \"10s\""
                    ))
                } else {
                    Ok(d)
                }
            }),
            RawDuration::Number(n) => Err(format!(
                "durations are strings with a unit; write \"{n}s\" (or \"ms\", \"m\", \"h\", \"d\")"
            )),
        };
        self.check(&raw.span(), result)
    }

    fn positive<T: TryFrom<i64>>(&mut self, raw: Option<S<i64>>) -> Option<T> {
        let raw = raw?;
        let value = *raw.get_ref();
        match T::try_from(value) {
            Ok(n) if value > 0 => Some(n),
            _ => {
                self.at(
                    &raw.span(),
                    format!("{value} is out of range; use a positive number"),
                );
                None
            }
        }
    }
}

/// The ids a route may refer to.
struct Known<'a> {
    tenants: &'a OrderedIds,
    agents: &'a OrderedIds,
    providers: &'a OrderedIds,
}

impl Known<'_> {
    fn provider(&self, id: &str) -> Result<String, String> {
        if self.providers.contains(id) {
            Ok(id.to_owned())
        } else {
            Err(format!(
                "unknown provider `{id}`; use a catalog id ({}) or declare it with [[providers]]",
                self.providers.order.join(", ")
            ))
        }
    }
}

fn parse_operation(s: &str) -> Result<Operation, String> {
    Operation::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Operation::ALL.iter().map(Operation::as_str).collect();
        format!("unknown operation `{s}`; use one of {}", names.join(", "))
    })
}

/// A header the proxy may set for a provider key: a lowercase token that is not a
/// framing or hop-by-hop header.
fn parse_auth_header(s: &str) -> Result<String, String> {
    let token = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!(
            "auth_header `{s}` is not a header name; write one like \"authorization\" or \"x-api-key\""
        ));
    }
    let lower = s.to_ascii_lowercase();
    const FORBIDDEN: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
    ];
    if FORBIDDEN.contains(&lower.as_str()) {
        return Err(format!(
            "auth_header `{s}` is a framing or hop-by-hop header; keys go in a header such as \"authorization\""
        ));
    }
    Ok(lower)
}

/// The header value with `{key}` exactly once, and no control characters.
fn parse_auth_format(s: &str) -> Result<String, String> {
    if s.matches("{key}").count() != 1 {
        return Err(format!(
            "auth_format `{s}` must contain `{{key}}` exactly once, as in \"Bearer {{key}}\""
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("auth_format has a control character (a line break?); write the header value on one line".to_owned());
    }
    Ok(s.to_owned())
}

/// Declared ids in file order, with a fast membership test.
#[derive(Default)]
struct OrderedIds {
    order: Vec<String>,
    set: HashSet<String>,
}

impl OrderedIds {
    fn push(&mut self, id: String) {
        self.set.insert(id.clone());
        self.order.push(id);
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn into_keys_in_order(self) -> Vec<String> {
        self.order
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Ids name things in the ledger, metrics and `Proxy-Authorization` (where `:` would
/// split the agent id), so they are kept to a safe alphabet.
fn validate_id(kind: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} id `{id}` is not valid; use 1 to 64 ASCII letters, digits, `-`, `_` or `.`"
        ))
    }
}

fn parse_token_hash(s: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    let hint = "`portcullis agent hash-token` prints it";
    if s.len() != 64 {
        return Err(format!(
            "token_sha256 must be 64 hex characters (the SHA-256 of the token), got {} characters; {hint}",
            s.chars().count()
        ));
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        format!("token_sha256 has a character that is not 0-9 or a-f; it must be the hex SHA-256 of the token; {hint}")
    })?;
    Ok(out)
}

/// Methods a route may name. A typo (`PSOT`) would silently never match, so unknown
/// methods are refused rather than accepted as opaque tokens.
const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "QUERY",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
];

fn parse_method(s: &str) -> Result<String, String> {
    let is_token = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if s == "*" {
        return Err("`*` is not a method; remove `methods` to allow any method".to_owned());
    }
    if !is_token {
        return Err(format!(
            "method `{s}` is not an HTTP method token; write it like \"GET\" or \"POST\""
        ));
    }
    let upper = s.to_ascii_uppercase();
    if upper == "CONNECT" {
        return Err("CONNECT opens the tunnel and is checked by `hosts` and `ports`; routes match the requests inside it, so remove it".to_owned());
    }
    if !KNOWN_METHODS.contains(&upper.as_str()) {
        return Err(format!(
            "unknown method `{s}`; use one of {}",
            KNOWN_METHODS.join(", ")
        ));
    }
    Ok(upper)
}

/// A CIDR (`127.0.0.0/8`) or a bare IP (a /32 or /128).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    Err(format!(
        "`{s}` is not a network; write a CIDR such as \"127.0.0.0/8\" or \"fd00::/8\", or a single IP"
    ))
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("`{s}` is not a bind address; write IP:PORT, as in \"127.0.0.1:8080\" or \"[::1]:8080\"")
    })
}

/// `"500ms"`, `"10s"`, `"5m"`, `"2h"`, `"7d"`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{s}` is not a duration; write a whole number and a unit, as in \"500ms\", \"10s\", \"5m\", \"2h\" or \"7d\""
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_accepts_each_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn duration_rejects_missing_unit_sign_space_and_overflow() {
        for bad in [
            "10",
            "s",
            "",
            "-1s",
            "1.5s",
            "10 s",
            "10sec",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let text = "a = \"é\"\nb = 1";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, text.find('b').unwrap_or(0)), (2, 1));
        // The closing quote after a two-byte character is column 7.
        assert_eq!(line_col(text, 7), (1, 7));
    }

    #[test]
    fn method_is_uppercased_and_typos_are_refused() {
        assert_eq!(parse_method("post"), Ok("POST".to_owned()));
        assert!(parse_method("PSOT").is_err());
        assert!(parse_method("GE T").is_err());
        assert!(parse_method("*").is_err());
        assert!(parse_method("CONNECT").is_err());
    }
}
