//! The one place that turns a refusal into an HTTP response (SPEC §4.3).
//!
//! Every denial, framing error and upstream failure ends here, so status
//! codes, the JSON body and the `X-Portcullis-*` headers are consistent. The
//! body is OpenAI-shaped so SDKs put our reason into their exception message.

use bytes::Bytes;
use http::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, PROXY_AUTHENTICATE, RETRY_AFTER,
};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use portcullis_rules::Reason;

use crate::body::ProxyBody;

pub const HDR_DECISION: &str = "x-portcullis-decision";
pub const HDR_REASON: &str = "x-portcullis-reason";
pub const HDR_EVENT_ID: &str = "x-portcullis-event-id";

/// A refusal on its way to the client.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: Reason,
    pub event_id: String,
    /// Extra, non-secret detail appended to the human message (e.g. which
    /// framing rule was broken, or the upstream TLS error kind).
    pub detail: Option<String>,
    /// Overrides the status the reason maps to (431 for an oversized head).
    pub status: Option<StatusCode>,
    /// Close the connection after this response.
    pub close: bool,
}

impl Refusal {
    pub fn new(reason: Reason, event_id: impl Into<String>) -> Self {
        Refusal {
            reason,
            event_id: event_id.into(),
            detail: None,
            status: None,
            close: false,
        }
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

    pub fn status_code(&self) -> StatusCode {
        self.status.unwrap_or_else(|| status_for(self.reason))
    }

    /// The human sentence. It leads with the reason code because some SDKs
    /// show only `error.message` in their exception text.
    pub fn message(&self) -> String {
        let code = self.reason.code();
        match &self.detail {
            Some(d) => format!("Portcullis [{code}]: {} ({d})", self.reason.message()),
            None => format!("Portcullis [{code}]: {}", self.reason.message()),
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status_code();
        let body = serde_json::json!({
            "error": {
                "type": "portcullis_denied",
                "code": self.reason.code(),
                "message": self.message(),
                "event_id": self.event_id,
            }
        });
        let mut bytes = body.to_string().into_bytes();
        bytes.push(b'\n');
        let mut resp = Response::new(
            Full::new(Bytes::from(bytes))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(HDR_DECISION, HeaderValue::from_static("deny"));
        h.insert(HDR_REASON, HeaderValue::from_static(self.reason.code()));
        if let Ok(v) = HeaderValue::from_str(&self.event_id) {
            h.insert(HDR_EVENT_ID, v);
        }
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            h.insert(
                PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portcullis\""),
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.close {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Status for each reason (SPEC §4.3).
pub fn status_for(reason: Reason) -> StatusCode {
    match reason {
        Reason::AuthFailed => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        Reason::HostMismatch => StatusCode::MISDIRECTED_REQUEST,
        Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::BadFraming | Reason::BadRequest => StatusCode::BAD_REQUEST,
        Reason::UpstreamConnect
        | Reason::UpstreamTls
        | Reason::UpstreamError
        | Reason::ResolveFailed => StatusCode::BAD_GATEWAY,
        Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        Reason::LedgerUnavailable | Reason::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_maps_to_a_client_or_gateway_error_status() {
        for r in Reason::ALL {
            let s = status_for(*r);
            if matches!(r, Reason::RouteAllow) {
                continue;
            }
            assert!(s.is_client_error() || s.is_server_error(), "{r:?} -> {s}");
        }
    }

    #[tokio::test]
    async fn refusal_body_is_openai_shaped_with_reason_and_event_id() {
        let resp = Refusal::new(Reason::NoRoute, "ev1").into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[HDR_EVENT_ID], "ev1");
        assert_eq!(resp.headers()[HDR_DECISION], "deny");
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
        let resp = Refusal::new(Reason::AuthFailed, "e").into_response();
        assert_eq!(resp.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(resp.headers().contains_key(PROXY_AUTHENTICATE));
    }
}
