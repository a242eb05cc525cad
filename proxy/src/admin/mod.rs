//! The admin API (SPEC §11): health, readiness, metrics, reload, the ledger
//! head and the policy in force. Loopback by default.
//!
//! A bearer token, stored only as its SHA-256 and compared in constant time,
//! guards everything except `/healthz`, `/readyz` (and `/metrics` when
//! `metrics_public`). Without a configured token only the public endpoints
//! answer. State changes are POST-only.
//!
//! `/readyz` is public because orchestrator probes (Kubernetes, load
//! balancers) cannot present a secret; without the token it says only
//! whether the proxy is ready, and the reasons need the token.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_ledger::Health;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::ctx::Ctx;
use crate::flow::Phase;
use crate::http::body::{full, ProxyBody};
use crate::policy::{reload, reload_result, ReloadError, ReloadOutcome};
use crate::state::{DecideError, Verdict};

/// What the admin API needs besides the shared context.
pub struct AdminSettings {
    pub token_sha256: Option<[u8; 32]>,
    pub metrics_public: bool,
    /// The config file `POST /v1/reload` reads; `None` on the embedded default.
    pub config_path: Option<PathBuf>,
    /// The ledger's directory, whose disk is watched.
    pub ledger_dir: PathBuf,
    /// Below this much free space there, `/readyz` fails.
    pub min_free_bytes: u64,
}

/// Bytes free for an unprivileged writer on the disk that holds `dir`.
fn disk_free(dir: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Serves the admin API until the proxy starts draining.
pub async fn serve(ctx: Arc<Ctx>, settings: Arc<AdminSettings>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.reached(Phase::Draining) => break,
        };
        let Ok((tcp, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (ctx, settings) = (ctx.clone(), settings.clone());
        let span = tracing::info_span!("admin", %peer);
        tokio::spawn(
            async move {
                let svc_ctx = ctx.clone();
                let svc = service_fn(move |req| {
                    let (ctx, settings) = (svc_ctx.clone(), settings.clone());
                    async move { Ok::<_, Infallible>(route(&ctx, &settings, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ctx.limits.client_header_timeout)
                    .serve_connection(TokioIo::new(tcp), svc);
                let _ = serve_with_drain!(
                    conn,
                    ctx.reached(Phase::Draining),
                    ctx.reached(Phase::Closing)
                );
            }
            .instrument(span),
        );
    }
}

async fn route(ctx: &Ctx, s: &AdminSettings, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let public =
        path == "/healthz" || path == "/readyz" || (path == "/metrics" && s.metrics_public);
    if !public && !authorized(s, &req) {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "admin bearer token required"}),
        );
    }
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (Method::GET, "/readyz") => readyz(ctx, s, authorized(s, &req)).await,
        (Method::GET, "/metrics") => {
            // The ledger and the cert cache keep totals; bring the families up to them.
            ctx.metrics.ledger_stats(ctx.ledger.stats());
            if let Ok(free) = disk_free(&s.ledger_dir) {
                ctx.metrics.ledger_disk_free(free);
            }
            let (certs, denied) = (ctx.certs.stats(), ctx.denied_leaves.stats());
            ctx.metrics
                .cert_stats(certs.hits + denied.hits, certs.misses + denied.misses);
            text(StatusCode::OK, ctx.metrics.render())
        }
        (Method::GET, "/v1/policy") => {
            let snap = ctx.policy.load();
            json(
                StatusCode::OK,
                serde_json::json!({
                    "generation": snap.generation,
                    "hash": snap.policy.hash_hex(),
                    "routes": snap.policy.routes().len(),
                }),
            )
        }
        (Method::GET, "/v1/ledger/head") => match ctx.ledger.head() {
            Some(head) => json(
                StatusCode::OK,
                serde_json::json!({
                    "replica": head.replica,
                    "seq": head.seq,
                    "head_seq": head.head_seq,
                    "head_hash": head.head_hash,
                    "segment": head.segment,
                    "ts": head.ts,
                    "signature": head.signature,
                    "hash": head.hash,
                    "pubkey": ctx.ledger.public_key_hex(),
                }),
            ),
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "no checkpoint written yet"}),
            ),
        },
        (Method::POST, "/v1/reload") => reload_now(ctx, s).await,
        (Method::GET, "/v1/approvals") => match ctx.approvals.list().await {
            Ok(list) => json(StatusCode::OK, serde_json::json!({"approvals": list})),
            Err(e) => state_unavailable(&e),
        },
        (Method::POST, p) if p.starts_with("/v1/approvals/") => {
            let id = p.trim_start_matches("/v1/approvals/").to_owned();
            decide(ctx, s, &id, req).await
        }
        (_, p) if p == "/v1/approvals" || p.starts_with("/v1/approvals/") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "list with GET /v1/approvals; decide with POST /v1/approvals/{id}"}),
        ),
        (_, "/healthz" | "/readyz" | "/metrics" | "/v1/policy" | "/v1/ledger/head") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "use GET"}),
        ),
        (_, "/v1/reload") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "state changes are POST-only"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

/// `Authorization: Bearer <token>` whose SHA-256 equals the configured hash.
fn authorized(s: &AdminSettings, req: &Request<Incoming>) -> bool {
    let Some(expected) = &s.token_sha256 else {
        return false;
    };
    let Some(token) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let digest = Sha256::digest(token.trim().as_bytes());
    bool::from(digest.as_slice().ct_eq(expected))
}

/// 200 when every check passes, else 503 with the failing ones.
async fn readyz(ctx: &Ctx, s: &AdminSettings, detailed: bool) -> Response<ProxyBody> {
    let mut failing: Vec<String> = Vec::new();
    if let Health::Unhealthy(why) = ctx.ledger.health() {
        failing.push(format!("ledger: {why}"));
    }
    // Before the disk fills (and appends fail closed), take the replica out.
    let free = disk_free(&s.ledger_dir);
    match &free {
        Ok(free) if *free < s.min_free_bytes => failing.push(format!(
            "ledger disk: {} MiB free, below min_free_bytes ({} MiB)",
            free / (1024 * 1024),
            s.min_free_bytes / (1024 * 1024)
        )),
        Ok(_) => {}
        Err(e) => failing.push(format!("ledger disk: cannot read free space: {e}")),
    }
    // Asked now (one PING under the state timeout), so readiness follows Redis.
    let state = ctx.state.check().await;
    if let Err(e) = &state {
        failing.push(format!("state: {e}"));
    }
    if !ctx.is_running() {
        failing.push("draining: the proxy is shutting down".into());
    }
    let snap = ctx.policy.load();
    let body = serde_json::json!({
        "ready": failing.is_empty(),
        "checks": {
            "ca": true,
            "policy": {"generation": snap.generation, "valid": true},
            "ledger": matches!(ctx.ledger.health(), Health::Healthy),
            "ledger_disk_free_bytes": free.as_ref().ok(),
            "state": state.is_ok(),
            "vault": true,
        },
        "failing": failing,
    });
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !detailed {
        return json(status, serde_json::json!({"ready": failing.is_empty()}));
    }
    json(status, body)
}

/// `POST /v1/approvals/{id}` with `{"decision":"approve"|"deny","grant":"once"|"for:10m"}`.
async fn decide(
    ctx: &Ctx,
    s: &AdminSettings,
    id: &str,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let bad = |msg: &str| json(StatusCode::BAD_REQUEST, serde_json::json!({"error": msg}));
    let Ok(body) = http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
        .map(|b| b.to_bytes())
    else {
        return bad("the body could not be read (at most 4 KiB)");
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return bad("the body is not JSON: {\"decision\":\"approve\"|\"deny\",\"grant\":\"once\"|\"for:10m\"}");
    };
    let verdict = match (v["decision"].as_str(), v["grant"].as_str()) {
        (Some("deny"), _) => Verdict::Deny,
        (Some("approve"), None | Some("once")) => Verdict::Approve { grant: None },
        (Some("approve"), Some(g)) => match g.strip_prefix("for:").and_then(parse_grant) {
            Some(d) => Verdict::Approve { grant: Some(d) },
            None => return bad("grant is \"once\" or \"for:<n>s|m|h\", as in \"for:10m\""),
        },
        _ => return bad("decision is \"approve\" or \"deny\""),
    };
    // The admin token itself is never recorded: a short prefix of its hash names it.
    let approver = s
        .token_sha256
        .map(|h| format!("admin:{}", &hex::encode(h)[..12]))
        .unwrap_or_else(|| "admin".into());
    match ctx.approvals.decide(id, verdict, &approver).await {
        Ok(held) => {
            tracing::info!(id, route = %held.route, ?verdict, "approval decided");
            json(
                StatusCode::OK,
                serde_json::json!({"id": id, "decision": v["decision"], "route": held.route}),
            )
        }
        Err(DecideError::Unavailable(why)) => {
            tracing::error!(id, error = %why, "approval state unavailable: nothing decided");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "approval state unavailable: nothing was decided", "reason": "state_unavailable"}),
            )
        }
        Err(e) => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// The shared state cannot be asked: `503`, and the log says why.
fn state_unavailable(e: &crate::state::StateError) -> Response<ProxyBody> {
    tracing::error!(error = %e, "approval state unavailable");
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": "approval state unavailable", "reason": "state_unavailable"}),
    )
}

/// `10s`, `10m`, `2h`: a grant's length (at most a day).
fn parse_grant(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (secs > 0 && secs <= 86_400).then(|| Duration::from_secs(secs))
}

async fn reload_now(ctx: &Ctx, s: &AdminSettings) -> Response<ProxyBody> {
    let Some(path) = &s.config_path else {
        return json(
            StatusCode::CONFLICT,
            serde_json::json!({"error": ReloadError::NoFile.to_string()}),
        );
    };
    let result = reload(&ctx.policy, &ctx.ledger, path, "api").await;
    ctx.metrics.reload(reload_result(&result));
    match result {
        Ok(ReloadOutcome::Applied { generation }) => json(
            StatusCode::OK,
            serde_json::json!({"result": "applied", "generation": generation}),
        ),
        Ok(_) => json(StatusCode::OK, serde_json::json!({"result": "unchanged"})),
        Err(ReloadError::Invalid(errors)) => {
            let list: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
            json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"result": "invalid", "errors": list}),
            )
        }
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"result": "error", "error": e.to_string()}),
        ),
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    let mut body = v.to_string();
    body.push('\n');
    respond(status, "application/json", body)
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    respond(status, crate::metrics::CONTENT_TYPE, body)
}

fn respond(status: StatusCode, ct: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
