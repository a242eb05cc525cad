//! The one place a refusal or error becomes an HTTP response (SPEC §4.3).
//!
//! Every denial, framing error and upstream failure ends here, so status
//! codes, the JSON body and the `X-Portcullis-*` headers are consistent. The
//! body is OpenAI-shaped so SDKs put our reason into their exception message.
//!
//! A [`Refusal`] carries its [`Decision`]. [`rescue`] makes sure the decision
//! record exists before it answers: if no phase committed one yet, the
//! refusal's decision is what gets recorded, so the ledger and the response
//! cannot disagree.

use std::time::Duration;

use http::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, PROXY_AUTHENTICATE, RETRY_AFTER,
};
use http::{Response, StatusCode};
use portcullis_rules::{Action, Decision, Reason};

use crate::ctx::Ctx;
use crate::http::body::{full, ProxyBody};
use crate::http::headers::{HDR_DECISION, HDR_EVENT_ID, HDR_REASON};
use crate::record::RequestRecord;

/// A request that will not be forwarded (or whose upstream failed), on its way
/// to the client.
#[derive(Debug, Clone)]
pub struct Refusal {
    decision: Decision,
    /// Extra, non-secret detail appended to the human message (which framing
    /// rule was broken, the upstream TLS error kind).
    detail: Option<String>,
    /// Overrides the status the reason maps to (431 for an oversized head).
    status: Option<StatusCode>,
    /// Close the connection after this response.
    close: bool,
    retry_after: Option<Duration>,
}

impl Refusal {
    pub fn new(decision: Decision) -> Self {
        Refusal {
            decision,
            detail: None,
            status: None,
            close: false,
            retry_after: None,
        }
    }

    /// A deny with no route behind it (framing, auth, upstream failures).
    pub fn deny(reason: Reason) -> Self {
        Refusal::new(Decision::deny(reason))
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// When the client may try again (budgets and rate limits know).
    #[allow(dead_code)] // set by the budget and rate-limit phase
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The human-readable detail, for a log line where no response carries it.
    pub fn detail_text(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    pub fn status_code(&self) -> StatusCode {
        self.status
            .unwrap_or_else(|| status_for(self.decision.reason))
    }

    /// The human sentence. It leads with the reason code because some SDKs
    /// show only `error.message` in their exception text.
    fn message(&self) -> String {
        let code = self.decision.reason.code();
        match &self.detail {
            Some(d) => format!(
                "Portcullis [{code}]: {} ({d})",
                self.decision.reason.message()
            ),
            None => format!("Portcullis [{code}]: {}", self.decision.reason.message()),
        }
    }
}

/// Answers `refusal` for the request `rec` describes, recording the refusal's
/// decision first if nothing was recorded yet. If the ledger cannot take it,
/// the answer is `503 ledger_unavailable` (fail closed).
pub async fn rescue(ctx: &Ctx, rec: &mut RequestRecord, refusal: Refusal) -> Response<ProxyBody> {
    if !rec.is_committed() {
        rec.decision = refusal.decision.clone();
        if rec
            .commit_refusal(&ctx.ledger, &ctx.metrics, &ctx.webhooks, &ctx.refusals)
            .await
            .is_err()
        {
            return respond(&ledger_unavailable(), Action::Deny, &rec.event_id);
        }
    }
    respond(&refusal, rec.decision.action, &rec.event_id)
}

/// An HTTP/1 connection ended with a request refused where no request
/// reached the driver, so this record is the only evidence of the refusal:
/// hyper answered a head itself (`400`, `414` or `431` for a head the framing
/// guard let through but hyper's own parser refused), or the header-read
/// timeout cut off a head that had started (slowloris; `partial_head` from
/// the guard). Other connection errors (a reset, an idle keep-alive timing
/// out) refuse nothing and are not recorded.
pub async fn record_connection_refusal(
    ctx: &Ctx,
    listener: &str,
    tunnel: Option<(&crate::flow::Target, &crate::identity::Identity)>,
    err: &hyper::Error,
    partial_head: bool,
) {
    let reason = if err.is_parse() {
        Reason::BadFraming
    } else if err.is_timeout() && partial_head {
        Reason::BadRequest
    } else {
        return;
    };
    let snap = ctx.policy.load();
    let mut rec = RequestRecord::new(&snap, listener);
    if let Some((target, who)) = tunnel {
        rec.target = Some(target.clone());
        rec.who = Some(who.clone());
    }
    rec.decision = Decision::deny(reason);
    tracing::info!(error = %err, "request head refused on the connection itself");
    if rec
        .commit(&ctx.ledger, &ctx.metrics, &ctx.webhooks)
        .await
        .is_err()
    {
        tracing::error!("ledger unavailable: a refused request head was not recorded");
    }
}

/// The fail-closed refusal for a ledger that cannot be written.
pub fn ledger_unavailable() -> Refusal {
    Refusal::deny(Reason::LedgerUnavailable)
        .detail("the audit ledger cannot be written")
        .close()
}

/// The response. `recorded` is the action in the ledger record: a deny for
/// every refusal, and the original allow when the upstream failed afterwards.
fn respond(r: &Refusal, recorded: Action, event_id: &str) -> Response<ProxyBody> {
    let status = r.status_code();
    let body = serde_json::json!({
        "error": {
            "type": "portcullis_denied",
            "code": r.decision.reason.code(),
            "message": r.message(),
            "event_id": event_id,
        }
    });
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(HDR_DECISION, HeaderValue::from_static(recorded.as_str()));
    h.insert(
        HDR_REASON,
        HeaderValue::from_static(r.decision.reason.code()),
    );
    if let Ok(v) = HeaderValue::from_str(event_id) {
        h.insert(HDR_EVENT_ID, v);
    }
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        h.insert(
            PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portcullis\""),
        );
    }
    let retry = match (status, r.retry_after) {
        (_, Some(after)) => Some(after.as_secs().max(1)),
        (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE, None) => Some(1),
        _ => None,
    };
    if let Some(secs) = retry {
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if r.close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Status for each reason (SPEC §4.3). Every reason is listed; a reason added
/// to the rules crate later falls to 403 until it is placed here.
pub fn status_for(reason: Reason) -> StatusCode {
    match reason {
        Reason::RouteAllow
        | Reason::RouteNarrow
        | Reason::RouteWarn
        | Reason::RouteApprove
        | Reason::ApprovalGranted
        | Reason::ApprovalGrantUsed => StatusCode::FORBIDDEN,
        Reason::RouteDeny
        | Reason::NoRoute
        | Reason::MethodNotAllowed
        | Reason::PathNotAllowed
        | Reason::PortNotAllowed
        | Reason::PlaintextNotAllowed
        | Reason::WebsocketNotAllowed
        | Reason::SsrfBlocked
        | Reason::ModelNotAllowed
        | Reason::OperationNotAllowed
        | Reason::ProviderNotAllowed
        | Reason::InjectionDetected
        | Reason::SecretDetected
        | Reason::VaultKeyLeak => StatusCode::FORBIDDEN,
        Reason::AuthFailed => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        Reason::HostMismatch => StatusCode::MISDIRECTED_REQUEST,
        Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::BadFraming | Reason::BadRequest | Reason::BodyUnparseable => {
            StatusCode::BAD_REQUEST
        }
        Reason::BodyEncoded => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Reason::BudgetExceeded
        | Reason::RateLimited
        | Reason::ConnectionLimit
        | Reason::DeniedTunnelLimit => StatusCode::TOO_MANY_REQUESTS,
        Reason::ApprovalDenied | Reason::ApprovalTimeout => StatusCode::FORBIDDEN,
        Reason::UpstreamConnect
        | Reason::UpstreamTls
        | Reason::UpstreamError
        | Reason::ResolveFailed => StatusCode::BAD_GATEWAY,
        Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        Reason::LedgerUnavailable
        | Reason::StateUnavailable
        | Reason::KeyUnavailable
        | Reason::MemoryBudget => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// The contract, one row per reason: a new reason must be added here.
    const TABLE: &[(Reason, u16)] = &[
        (Reason::RouteAllow, 403),
        (Reason::RouteDeny, 403),
        (Reason::NoRoute, 403),
        (Reason::MethodNotAllowed, 403),
        (Reason::PathNotAllowed, 403),
        (Reason::PortNotAllowed, 403),
        (Reason::PlaintextNotAllowed, 403),
        (Reason::WebsocketNotAllowed, 403),
        (Reason::HostMismatch, 421),
        (Reason::SsrfBlocked, 403),
        (Reason::BadFraming, 400),
        (Reason::BadRequest, 400),
        (Reason::AuthFailed, 407),
        (Reason::BodyTooLarge, 413),
        (Reason::BodyUnparseable, 400),
        (Reason::BodyEncoded, 415),
        (Reason::BudgetExceeded, 429),
        (Reason::RateLimited, 429),
        (Reason::ApprovalDenied, 403),
        (Reason::ApprovalTimeout, 403),
        (Reason::UpstreamConnect, 502),
        (Reason::UpstreamTls, 502),
        (Reason::UpstreamTimeout, 504),
        (Reason::UpstreamError, 502),
        (Reason::ResolveFailed, 502),
        (Reason::LedgerUnavailable, 503),
        (Reason::StateUnavailable, 503),
        (Reason::ConnectionLimit, 429),
        (Reason::MemoryBudget, 503),
        (Reason::KeyUnavailable, 503),
        (Reason::ModelNotAllowed, 403),
        (Reason::OperationNotAllowed, 403),
        (Reason::ProviderNotAllowed, 403),
        (Reason::InjectionDetected, 403),
        (Reason::SecretDetected, 403),
        (Reason::VaultKeyLeak, 403),
        (Reason::RouteNarrow, 403),
        (Reason::RouteWarn, 403),
        (Reason::RouteApprove, 403),
        (Reason::ApprovalGranted, 403),
        (Reason::ApprovalGrantUsed, 403),
        (Reason::DeniedTunnelLimit, 429),
    ];

    #[test]
    fn every_reason_has_its_status_in_the_table() {
        for r in Reason::ALL {
            let row = TABLE.iter().find(|(t, _)| t == r);
            let Some((_, want)) = row else {
                panic!("{} has no row in the status table", r.code());
            };
            assert_eq!(status_for(*r).as_u16(), *want, "{}", r.code());
        }
        assert_eq!(TABLE.len(), Reason::ALL.len());
    }

    #[tokio::test]
    async fn refusal_body_is_openai_shaped_with_reason_and_event_id() {
        let resp = respond(&Refusal::deny(Reason::NoRoute), Action::Deny, "ev1");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[HDR_EVENT_ID], "ev1");
        assert_eq!(resp.headers()[HDR_DECISION], "deny");
        assert_eq!(resp.headers()[HDR_REASON], "no_route");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "portcullis_denied");
        assert_eq!(v["error"]["code"], "no_route");
        assert_eq!(v["error"]["event_id"], "ev1");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Portcullis [no_route]: "));
    }

    #[test]
    fn auth_refusal_carries_proxy_authenticate() {
        let resp = respond(&Refusal::deny(Reason::AuthFailed), Action::Deny, "e");
        assert_eq!(resp.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(resp.headers().contains_key(PROXY_AUTHENTICATE));
    }

    #[test]
    fn retry_after_carries_the_refusals_own_delay() {
        let r = Refusal::deny(Reason::BudgetExceeded).retry_after(Duration::from_secs(42));
        let resp = respond(&r, Action::Deny, "e");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "42");
        let fail_closed = respond(&ledger_unavailable(), Action::Deny, "e");
        assert_eq!(fail_closed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(fail_closed.headers()[RETRY_AFTER], "1");
        assert_eq!(fail_closed.headers()[CONNECTION], "close");
    }

    #[test]
    fn upstream_failure_after_an_allow_says_allow_with_the_failure_reason() {
        let resp = respond(&Refusal::deny(Reason::UpstreamTls), Action::Allow, "e");
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[HDR_DECISION], "allow");
        assert_eq!(resp.headers()[HDR_REASON], "upstream_tls_failed");
    }
}
