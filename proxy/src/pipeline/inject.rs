//! Phase `inject` (SPEC §9): on routes with `inject_key`, the agent's own
//! credentials are removed and the provider key from the vault is set in the
//! provider's header. The agent never holds a key.
//!
//! The key is chosen before the decision is recorded (the record names its
//! slot and version, never the key) and set on the request only after that.
//! It goes only to a host the catalog classifies as that key's provider, and
//! hyper sends headers only over a connection whose certificate verified for
//! that host.

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::Uri;
use portcullis_certs::Secret;
use portcullis_rules::{Reason, Route};
use zeroize::Zeroizing;

use super::bind::Bound;
use crate::record::RequestRecord;
use crate::rescue::Refusal;
use crate::vault::Keys;

/// Every header a client could carry a provider credential in.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// The header to set, its value marked sensitive (never logged by hyper or h2).
pub struct Injection {
    header: HeaderName,
    value: HeaderValue,
}

/// Chooses the key for this request, or refuses it (fail closed: a route that
/// injects never forwards without a key).
pub fn plan(
    keys: &Keys,
    rec: &mut RequestRecord,
    route: &Route,
    bound: &Bound,
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
    let Some(format) = class.and_then(|c| c.key_injection.as_ref()) else {
        return Err(unavailable(
            "the catalog has no key header for this provider",
        ));
    };
    let Some((secret, key_id)) = keys.get(&bound.who.tenant, slot) else {
        return Err(unavailable(
            "no key in the vault for this tenant and provider",
        ));
    };
    let Secret::ApiKey(key) = secret else {
        return Err(unavailable(
            "this slot holds AWS credentials, which need SigV4 signing",
        ));
    };
    let (before, after) = format.format.split_once("{key}").unwrap_or(("", ""));
    let mut bytes = Zeroizing::new(Vec::with_capacity(before.len() + key.len() + after.len()));
    bytes.extend_from_slice(before.as_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(after.as_bytes());
    let header = HeaderName::from_bytes(format.header.as_bytes())
        .map_err(|_| unavailable("the catalog's key header name is invalid"))?;
    let mut value = HeaderValue::from_bytes(&bytes)
        .map_err(|_| unavailable("the vault key is not a valid header value"))?;
    value.set_sensitive(true);
    rec.key_id = Some(key_id.to_string());
    Ok(Some(Injection { header, value }))
}

/// Strips the client's credentials (headers and the `key` query parameter)
/// and sets the vault key.
pub fn apply(parts: &mut Parts, upstream_uri: &mut Uri, injection: Injection) {
    for name in CREDENTIAL_HEADERS {
        parts.headers.remove(*name);
    }
    if let Some(uri) = without_query_param(upstream_uri, "key") {
        *upstream_uri = uri;
    }
    parts.headers.insert(injection.header, injection.value);
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
