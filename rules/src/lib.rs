//! # portcullis-rules: what may leave, and why
//!
//! This crate owns Portcullis's policy: the config file format and its validation, host
//! canonicalization and matching, the SSRF deny table, the provider catalog and request
//! classification, the detectors, narrowing, and the decision function. It is pure: no
//! sockets, no tokio, no files. The proxy reads the config text, hands it to
//! [`parse_config`], and asks the resulting [`Policy`] questions.
//!
//! ## The config file
//!
//! TOML, `version = 1`, unknown keys rejected. Besides listener, admin, CA, ledger,
//! upstream, limit and vault settings ([`VaultConfig`]), it declares who calls and where
//! they may go:
//!
//! ```toml
//! version = 1
//!
//! [[tenants]]
//! id = "acme"
//! budget = { tokens_per_day = 2_000_000 }   # optional; also on agents and routes
//!
//! [[agents]]                    # every agent belongs to one tenant
//! id = "research-bot"
//! tenant = "acme"
//! token_sha256 = "…64 hex…"     # only the hash of the proxy token is stored
//!
//! [[routes]]
//! id = "acme-openai"
//! tenants = ["acme"]            # or agents = [...]; omit both for every agent
//! hosts = ["api.openai.com", "*.openai.azure.com"]
//! methods = ["POST"]            # omit for any
//! paths = ["/v1/chat/completions", "/v1/*"]   # omit for any
//! providers = ["openai", "azure_openai"]      # catalog ids; omit for any
//! operations = ["chat"]                       # omit for any
//! models = ["gpt-4o-mini", "gpt-4.1-*"]       # omit for any
//! detectors = { injection = "block", secrets = "warn" }
//! action = "allow"              # allow | deny | narrow | warn
//! inject_key = "openai"         # vault slot (a catalog id) whose key the proxy sets
//! budget = { tokens_per_day = 200_000, requests_per_minute = 60 }
//! ```
//!
//! `action = "narrow"` takes a `narrow = { max_tokens, fallback_model, tools_allow,
//! force_include_usage }` table; `[[providers]]` entries extend the catalog. A
//! [`BudgetSpec`] (`tokens_per_day`, `requests_per_minute`, `default_reserve`,
//! `hard_cap`) can sit on a route, a tenant ([`Policy::tenant_budget`]) and an agent;
//! this crate only holds the limits, the proxy counts. `inject_key` is refused on deny
//! and passthrough routes and on hosts of another provider; [`Route::key_slot`] names
//! the slot only for a request classified as that provider. The commented example in
//! [`EMBEDDED_DEFAULT`] shows every key.
//!
//! [`parse_config`] reports every problem at once, each as `file:line:col: message` with
//! a suggested fix. [`EMBEDDED_DEFAULT`] is the config used when no file is given: it
//! allows the well-known model provider APIs and nothing else.
//!
//! ## How a decision is made
//!
//! 1. **Identify.** [`Policy::authenticate`] checks `agent_id:token` from
//!    `Proxy-Authorization` against the stored SHA-256, in constant time.
//! 2. **Pre-check.** At `CONNECT host:port`, [`Policy::precheck`] finds the first route
//!    for that agent whose hosts, ports and providers match. Its [`Mode`] says whether
//!    the tunnel is intercepted or passed through. No such route means the tunnel is
//!    refused.
//! 3. **Evaluate.** For each HTTP request inside, [`Policy::evaluate`]:
//!    - *classifies* it against the provider catalog ([`Classification`]: provider,
//!      model, [`Operation`], streaming, key injection);
//!    - scans the URL, headers and body for the vault's own keys ([`VaultScanner`]): a
//!      key on its way to another provider's host is refused, whatever the routes say;
//!    - walks the routes in file order. **The first route that fully matches wins**
//!      (agent or tenant, host, port, method, path, provider, operation, model, plus
//!      plain HTTP and WebSocket permissions). **No match means deny**, with the most
//!      specific near miss as the reason (`model_not_allowed`, `method_not_allowed`, …,
//!      `no_route`). A route that inspects the body ([`Route::requires_inspection`]:
//!      detectors, `models` or narrow) refuses a body it cannot inspect: not read in
//!      full (`body_too_large`), sent with a `Content-Encoding` other than `identity`
//!      (`body_encoded`), or looking like JSON without parsing strictly
//!      (`body_unparseable`);
//!    - runs the route's detectors (prompt injection over the normalized prompt text,
//!      provider key formats anywhere): a blocking hit denies, a warning hit warns;
//!    - narrows the body for a narrow route ([`Narrowed`]: the new body and the names
//!      of the fields that changed);
//!    - reports the response-token bound of what is forwarded
//!      ([`Evaluation::max_output_tokens`]), which a budget reserves up front.
//!
//!    The body is parsed **once, strictly** (UTF-8, no lone surrogate escapes, numbers
//!    within `f64`, nesting at most 128, no key given twice), and classification, the
//!    detectors and narrowing all read that one parse; a body that failed it is never
//!    scanned as raw bytes instead. [`Policy::decide`] is the same walk without a body.
//! 4. **Dial.** Before connecting, the proxy runs every resolved address through
//!    [`classify_ip`]; anything internal is refused unless the route's `allow_private`
//!    covers it ([`Route::allows_private`]).
//! 5. **Respond.** A [`Redactor`] replaces vault keys and key formats in the response
//!    stream with `[REDACTED]`, across chunk boundaries.
//!
//! A [`Decision`] is a value: an [`Action`], a stable [`Reason`] code (the same string
//! in the ledger, the metrics and the client's error body), the deciding route, the
//! detector hits (ids only, never matched text) and the narrowed field names.
//! [`explain`] runs the same evaluation and reports every route it looked at.
//!
//! Hosts are compared only in canonical form ([`Host::parse`]): lowercase, no trailing
//! dot, punycode for IDNs, and every IPv4 spelling (`0x7f.1`, `2130706433`) folded to
//! one address, so there is exactly one way to name a destination.

#![forbid(unsafe_code)]

mod agent;
mod body;
mod budget;
mod catalog;
mod config;
mod decision;
mod detect;
mod evaluate;
mod explain;
mod host;
mod narrow;
mod policy;
mod reason;
mod route;
mod ssrf;
mod webhook;

pub use agent::Agent;
pub use budget::BudgetSpec;
pub use catalog::{
    builtin_provider_ids, ApiStyle, Classification, DestinationKind, KeyInjection, ModelSource,
    Operation, Provider, ProviderHost,
};
pub use config::{
    parse_config, AdminConfig, CaConfig, Config, ConfigError, ConfigErrors, DnsConfig,
    LedgerConfig, LedgerSync, Limits, ListenerAuth, ListenerConfig, ListenerMode, ResolveEntry,
    SourceAgent, UpstreamConfig, VaultConfig, EMBEDDED_DEFAULT,
};
pub use config::{RedisUrl, StateBackend, StateConfig, DEFAULT_STATE_TIMEOUT};
pub use decision::Decision;
pub use detect::injection::{
    detect_injection, detect_injection_layers, detect_injection_with, injection_pattern_ids,
    normalize_text, Layers, Sensitivity,
};
pub use detect::redact::{redact, Redactor, REDACTED};
pub use detect::secrets::{detect_secrets, secret_format_ids};
pub use detect::vault::{VaultHit, VaultScanner};
pub use detect::{warm_detectors, DetectorHit, DetectorMode, Detectors};
pub use evaluate::{Evaluation, Inspection};
pub use explain::{explain, Explanation, RouteStep};
pub use host::{split_host_port, Host, HostError, HostPattern};
pub use narrow::{NarrowSpec, Narrowed};
pub use policy::Policy;
pub use reason::{Action, Reason};
pub use route::{Mode, ModelPattern, PathPattern, RequestFacts, Route};
pub use ssrf::{classify_ip, SsrfClass};
pub use webhook::{WebhookSpec, WEBHOOK_EVENTS};
