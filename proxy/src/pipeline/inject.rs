//! Phase `inject` (SPEC §9): on routes with `inject_key`, the agent's own
//! credentials are removed and the provider key from the vault is set in the
//! provider's header. The agent never holds a key.
//!
//! The key is chosen before the decision is recorded (the record names its
//! slot and version, never the key) and set on the request only after that.
//! It goes only to a host the catalog classifies as that key's provider, and
//! hyper sends headers only over a connection whose certificate verified for
//! that host. A slot holding AWS credentials re-signs Bedrock requests with
//! SigV4 for the real host and region instead, after the agent's own
//! signature is stripped.

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::Uri;
use portcullis_certs::{bedrock_region, sign, Secret, SigningRequest};
use portcullis_rules::{KeyInjection, Reason, Route};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::bind::Bound;
use crate::flow::Target;
use crate::record::RequestRecord;
use crate::rescue::Refusal;
use crate::vault::Keys;

/// Every header a client could carry a provider credential in.
pub(super) const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// How the chosen key goes on the request.
pub struct Injection(How);

enum How {
    /// A header from the catalog, its value marked sensitive (never logged by
    /// hyper or h2).
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    /// AWS credentials: the request is signed with SigV4 for the real host
    /// and region once it is final.
    SigV4 {
        access_key_id: Zeroizing<String>,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
        region: String,
        payload_sha256: String,
    },
}

/// Chooses the key for this request, or refuses it (fail closed: a route that
/// injects never forwards without a key).
pub fn plan(
    keys: &Keys,
    rec: &mut RequestRecord,
    route: &Route,
    bound: &Bound,
    whole_body: Option<&[u8]>,
) -> Result<Option<Injection>, Refusal> {
    let Some(wanted) = route.inject_key.as_deref() else {
        return Ok(None);
    };
    let class = rec.classification.as_ref();
    // A key only ever goes to its own provider's hosts.
    let Some(slot) = class.and_then(|c| route.key_slot(c)) else {
        return Err(Refusal::deny(Reason::VaultKeyLeak)
            .detail(format!("this destination is not a {wanted} host")));
    };
    let unavailable =
        |detail: &str| Refusal::deny(Reason::KeyUnavailable).detail(detail.to_owned());
    let Some((secret, key_id)) = keys.get(&bound.who.tenant, slot) else {
        return Err(unavailable(
            "no key in the vault for this tenant and provider",
        ));
    };
    let how = match secret {
        Secret::ApiKey(key) => {
            let Some(format) = class.and_then(|c| c.key_injection.as_ref()) else {
                return Err(unavailable(
                    "the catalog has no key header for this provider",
                ));
            };
            header(format, key)
                .ok_or_else(|| unavailable("the vault key is not a valid header value"))?
        }
        Secret::Aws {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let host = bound.target.host.to_string();
            let Some(region) = bedrock_region(&host) else {
                return Err(unavailable(
                    "AWS credentials are only used to sign Bedrock runtime requests",
                ));
            };
            // SigV4 signs the body's hash, so the body must have been read whole.
            let Some(body) = whole_body else {
                return Err(Refusal::deny(Reason::BodyTooLarge)
                    .detail("signing the request needs the whole body within max_inspect_body"));
            };
            How::SigV4 {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
                region: region.to_owned(),
                payload_sha256: hex::encode(Sha256::digest(body)),
            }
        }
        _ => return Err(unavailable("this kind of key cannot be injected")),
    };
    rec.key_id = Some(key_id.to_string());
    Ok(Some(Injection(how)))
}

fn header(format: &KeyInjection, key: &[u8]) -> Option<How> {
    let (before, after) = format.format.split_once("{key}").unwrap_or(("", ""));
    let mut bytes = Zeroizing::new(Vec::with_capacity(before.len() + key.len() + after.len()));
    bytes.extend_from_slice(before.as_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(after.as_bytes());
    let name = HeaderName::from_bytes(format.header.as_bytes()).ok()?;
    let mut value = HeaderValue::from_bytes(&bytes).ok()?;
    value.set_sensitive(true);
    Some(How::Header { name, value })
}

/// Strips the client's credentials (headers, its own SigV4 signature, and the
/// `key` query parameter) and puts the vault key on the request.
pub fn apply(parts: &mut Parts, upstream_uri: &mut Uri, target: &Target, injection: Injection) {
    for name in CREDENTIAL_HEADERS {
        parts.headers.remove(*name);
    }
    let amz: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-amz-"))
        .cloned()
        .collect();
    for name in amz {
        parts.headers.remove(name);
    }
    if let Some(uri) = without_query_param(upstream_uri, "key") {
        *upstream_uri = uri;
    }
    match injection.0 {
        How::Header { name, value } => {
            parts.headers.insert(name, value);
        }
        How::SigV4 {
            access_key_id,
            secret_access_key,
            session_token,
            region,
            payload_sha256,
        } => {
            let host = target.authority();
            let req = SigningRequest {
                method: parts.method.as_str(),
                host: &host,
                path: upstream_uri.path(),
                query: upstream_uri.query(),
                headers: &[],
                payload_sha256_hex: &payload_sha256,
                sign_content_sha256: true,
            };
            let signed = sign(
                &req,
                &access_key_id,
                &secret_access_key,
                session_token.as_deref().map(String::as_str),
                &region,
                "bedrock",
                time::OffsetDateTime::now_utc(),
            );
            let mut set = |name: &'static str, value: &str, sensitive: bool| {
                if let Ok(mut v) = HeaderValue::from_str(value) {
                    v.set_sensitive(sensitive);
                    parts.headers.insert(name, v);
                }
            };
            set("authorization", &signed.authorization, true);
            set("x-amz-date", &signed.x_amz_date, false);
            set("x-amz-content-sha256", &signed.x_amz_content_sha256, false);
            if let Some(token) = &signed.x_amz_security_token {
                set("x-amz-security-token", token, true);
            }
        }
    }
}

/// `uri` without every `name=…` query parameter, or `None` if it had none.
fn without_query_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let is_named = |pair: &&str| pair.split('=').next() == Some(name);
    if !query.split('&').any(|p| is_named(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_named(p)).collect();
    let pq = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_query_parameter_is_removed_and_others_kept() {
        let u: Uri = "https://h/v1/x?alt=sse&key=AIzaSECRET&b=2".parse().unwrap();
        let out = without_query_param(&u, "key").unwrap();
        assert_eq!(out.to_string(), "https://h/v1/x?alt=sse&b=2");
        let u: Uri = "https://h/v1/x?key=AIzaSECRET".parse().unwrap();
        assert_eq!(
            without_query_param(&u, "key").unwrap().to_string(),
            "https://h/v1/x"
        );
        let u: Uri = "https://h/v1/x?keys=1".parse().unwrap();
        assert!(without_query_param(&u, "key").is_none());
    }
}
