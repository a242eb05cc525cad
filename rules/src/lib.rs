//! # portcullis-rules: what may leave, and why
//!
//! This crate owns Portcullis's policy: the config file format and its validation, host
//! canonicalization and matching, the SSRF deny table, and the decision function. It is
//! pure: no sockets, no tokio, no files. The proxy reads the config text, hands it to
//! [`parse_config`], and asks the resulting [`Policy`] questions.
//!
//! ## The config file
//!
//! TOML, `version = 1`, unknown keys rejected. Besides listener, admin, CA, ledger,
//! upstream and limit settings, it declares who calls and where they may go:
//!
//! ```toml
//! version = 1
//!
//! [[tenants]]
//! id = "acme"
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
//! action = "allow"              # allow | deny
//! ```
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
//!    for that agent whose hosts and ports match. Its [`Mode`] says whether the tunnel is
//!    intercepted or passed through. No such route means the tunnel is refused.
//! 3. **Decide.** For each HTTP request inside, [`Policy::decide`] walks the routes in
//!    file order. **The first route that fully matches wins** (agent or tenant, host,
//!    port, method, path, plus plain HTTP and WebSocket permissions). **No match means
//!    deny**, with the most specific near miss as the reason (`method_not_allowed`,
//!    `path_not_allowed`, …, `no_route`).
//! 4. **Dial.** Before connecting, the proxy runs every resolved address through
//!    [`classify_ip`]; anything internal is refused unless the route's `allow_private`
//!    covers it ([`Route::allows_private`]).
//!
//! A [`Decision`] is a value: an [`Action`], a stable [`Reason`] code (the same string
//! in the ledger, the metrics and the client's error body) and the deciding route.
//!
//! Hosts are compared only in canonical form ([`Host::parse`]): lowercase, no trailing
//! dot, punycode for IDNs, and every IPv4 spelling (`0x7f.1`, `2130706433`) folded to
//! one address, so there is exactly one way to name a destination.

#![forbid(unsafe_code)]

mod config;
mod decision;
mod host;
mod policy;
mod ssrf;

pub use config::{
    parse_config, AdminConfig, CaConfig, Config, ConfigError, ConfigErrors, LedgerConfig,
    LedgerSync, Limits, ListenerAuth, ListenerConfig, ListenerMode, ResolveEntry, UpstreamConfig,
    EMBEDDED_DEFAULT,
};
pub use decision::{Action, Decision, Reason};
pub use host::{split_host_port, Host, HostError, HostPattern};
pub use policy::{Agent, Mode, PathPattern, Policy, RequestFacts, Route};
pub use ssrf::{classify_ip, SsrfClass};
