//! Portcullis: the egress proxy for AI agents.
//!
//! Agents reach the network only through this process. They set
//! `HTTPS_PROXY=http://agent:token@proxy:8080` and trust the Portcullis CA;
//! nothing in the agent's code changes.
//!
//! # The life of a request (forward mode, SPEC §3)
//!
//! 1. **Accept** ([`server`]). A listener accepts a TCP connection, takes a
//!    permit from the connection limit, and opens one tracing span for it.
//! 2. **Frame-check** ([`framing`]). Every HTTP/1 byte a client sends passes
//!    through a strict framing guard before hyper parses it: CL+TE, duplicate
//!    Content-Length, unknown Transfer-Encoding, bare CR/LF, NUL, obs-fold and
//!    repeated Host are answered with `400 bad_framing` and a closed
//!    connection. This runs on the proxy connection and again inside each
//!    intercepted tunnel.
//! 3. **Identify** ([`identity`]). `Proxy-Authorization: Basic` is checked
//!    against SHA-256 token hashes in constant time (`407` otherwise), or the
//!    listener names a fixed agent (`auth = "none"`, loopback sidecars).
//! 4. **Pre-check** ([`forward`]). `CONNECT host:port` must match a route the
//!    agent has; an IP literal (in any spelling) is checked against the SSRF
//!    table at once. A denial on port 443 is still intercepted so the SDK can
//!    read the reason inside TLS; elsewhere the CONNECT itself is refused.
//! 5. **Intercept or pass through** ([`tunnel`]). Passthrough routes splice
//!    raw TCP after checking that the ClientHello's SNI equals the CONNECT
//!    host. Otherwise the proxy reads the ClientHello, mints (or fetches from
//!    the single-flight cache in `portcullis-certs`) a leaf for the CONNECT
//!    host, and serves HTTP/1.1 or HTTP/2 by ALPN.
//! 6. **Per request** ([`pipeline`]), for every HTTP/1 request and HTTP/2
//!    stream: bind `Host`/`:authority` to the CONNECT host (`421`), classify,
//!    run detectors, decide with `portcullis-rules` (first matching route wins,
//!    no match is deny), write the audit record, then act. A denial is an
//!    OpenAI-shaped JSON error built in exactly one place, [`rescue`].
//! 7. **Upstream** ([`upstream`]). Resolve, refuse any SSRF-class address
//!    unless the operator pinned it or the route allows it, connect to that
//!    exact address, verify the certificate for the real host, and pool the
//!    connection per (tenant, route).
//! 8. **Stream back** ([`body`]). Response frames are passed through as they
//!    arrive (every SSE event is flushed at once) while a metering wrapper
//!    counts bytes and reports how the stream ended: complete, client abort
//!    or upstream error.
//!
//! Steps not yet built (classification, detectors, the ledger, budgets,
//! approvals) have their places marked in [`pipeline`].

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod audit;
pub mod body;
pub mod cli;
pub mod forward;
pub mod framing;
pub mod identity;
pub mod pipeline;
pub mod rescue;
pub mod server;
pub mod tunnel;
pub mod upstream;

pub use server::{start, RunningProxy, Settings, StartError};
