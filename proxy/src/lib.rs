//! Portcullis: the egress proxy for AI agents.
//!
//! Agents reach the network only through this process. They set
//! `HTTPS_PROXY=http://agent:token@proxy:8080` and trust the Portcullis CA;
//! nothing in the agent's code changes.
//!
//! # The life of a request (forward mode, SPEC §3)
//!
//! 1. **Accept** (`listen`). The listener accepts a TCP connection, takes a
//!    permit from the connection limit and opens one tracing span for it.
//!    Every HTTP/1 byte passes through the strict framing guard
//!    (`http::framing`) before hyper parses it.
//! 2. **CONNECT** (`listen::forward`). The caller is identified
//!    (`identity`: `Proxy-Authorization: Basic`, SHA-256 token hashes compared
//!    in constant time, or a listener's fixed agent), the destination is
//!    pre-checked against the agent's routes and, for IP literals, the SSRF
//!    table, and the verdict is recorded. A refused CONNECT closes the
//!    connection, except on port 443, where the tunnel opens so the refusal
//!    can be answered inside TLS, where the agent's SDK shows it.
//! 3. **Intercept or splice** (`tls`). `tls::intercept` reads the
//!    ClientHello, holds the SNI to the CONNECT host, mints (or fetches from
//!    the single-flight cache in `portcullis-certs`) a leaf, and serves
//!    HTTP/1.1 or HTTP/2 by ALPN. `tls::passthrough` splices raw TCP after
//!    the same SNI check, for as long as the policy in force still grants it.
//! 4. **The driver** (`pipeline`). Every HTTP/1 request and HTTP/2 stream,
//!    and every plain `http://` proxy request, goes through one driver of
//!    small phases, each returning `Result<_, Refusal>`:
//!    - `bind`: framing verdict; the caller (re-checked against the current
//!      policy inside a tunnel, so a rotated token stops at once); the target;
//!      `Host`/`:authority` equal to it (`421`); one canonical path
//!      (`http::path`), from which the upstream URI is built;
//!    - `inspect` and `decide`: the body read up to `max_inspect_body`, then
//!      `portcullis-rules` classifies, scans for vault keys, walks the routes
//!      (first match wins, no match is deny), runs the route's detectors and
//!      narrows, all over one strict parse of that body;
//!    - `admit`: the one DNS lookup, every address checked against the SSRF
//!      table; the checked addresses (`upstream::Checked`) are all the dial
//!      may use. Then the request's token estimate is reserved in every
//!      budget that covers it (`state`), so the request that would cross a
//!      limit is refused (`429`) before it leaves. The counters are in memory,
//!      or in Redis when replicas share them (`state::redis`); Redis out of
//!      reach fails the request closed (`503 state_unavailable`);
//!    - `inject` (choose): on a route with `inject_key`, the tenant's key for
//!      that provider (`vault`), only if the host is that provider's;
//!    - `record`: the decision record, naming the key's slot and version, is
//!      durable before anything leaves (`record`; audit before act). If the
//!      ledger cannot take it, `503`;
//!    - `inject` (apply), `act` and `send`: a deny is answered locally; allow,
//!      warn and narrow forward the (rewritten) request with the agent's own
//!      credentials replaced by the vault key, and stream the response back
//!      unbuffered, redacted, and metered for token usage (`http::usage`),
//!      under an `OutcomeGuard` that writes the outcome record, with the
//!      tokens, and settles the budget reservation however the request ends.
//!
//!    The first refusal goes to `rescue`, the only place that turns one
//!    into a response. It records the refusal's decision first if no phase did,
//!    so the ledger and the response cannot disagree.
//! 5. **Upstream** (`upstream`). Connect to a checked address, verify the
//!    certificate for the real host name (webpki roots plus `extra_ca`), and
//!    pool connections per (tenant, checked destination).
//! 6. **Other ways in.** A `gateway` listener (`listen::gateway`) takes plain
//!    HTTP base-URL requests, `/{provider}/…`, for SDKs that cannot trust a CA:
//!    the agent's token sits where the provider key would, and `bind` turns the
//!    path prefix into the provider's catalog host. It then runs the same driver.
//!    A `transparent` listener (`listen::transparent`) takes connections that
//!    iptables `REDIRECT` sent: the original destination comes from
//!    `SO_ORIGINAL_DST`, the name from the SNI (or `Host`) read and replayed
//!    (`listen::rewind`), and the name must resolve to that destination. The
//!    agent is the listener's fixed agent or its source-CIDR map; from there
//!    it is a tunnel like a CONNECT's. Its DNS responder (`listen::dns`)
//!    answers only names the agent's routes allow and records every refusal.
//!    The admin API (`admin`) serves health, readiness, metrics, reload, the
//!    ledger head and approvals on its own loopback listener. Approvals live
//!    in the same store as budgets, so with Redis any replica lists and
//!    decides a request that another replica holds.
//! 7. **Shutdown** (`app`). Stop accepting, drain in-flight requests for the
//!    grace period, drop what is left (their guards write outcomes), wait for
//!    pending outcome records, then seal the ledger with a final checkpoint.
//!
//! Modules sit on floors and use only lower ones (SPEC §1 and
//! `ARCHITECTURE.md`): `cli` > `app` > `listen`, `tls` > `pipeline` >
//! `rescue`, `record`, `ctx` > `upstream`, `state`, `flow` > `policy`,
//! `identity`, `vault`, `http`.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[macro_use]
mod http;

mod admin;
mod app;
pub mod cli;
mod ctx;
mod flow;
/// Entry points for the fuzz targets and property tests; not a supported API.
#[doc(hidden)]
pub mod fuzzing;
mod identity;
mod listen;
mod memory;
mod metrics;
mod pipeline;
mod policy;
mod record;
mod refusals;
mod rescue;
mod state;
mod tls;
mod upstream;
mod vault;
mod webhook;

pub use app::{start, RunningProxy, Settings, StartError};
pub use policy::{ReloadError, ReloadOutcome};
