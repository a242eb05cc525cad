//! AWS Signature Version 4 request signing, for re-signing Bedrock requests (SPEC §9).
//!
//! On a Bedrock host the proxy strips the agent's own SigV4 headers and calls [`sign`] with
//! the request exactly as it will go upstream and the AWS key pair from the vault. The
//! algorithm is AWS's published one. On the paths, queries and headers that SDKs send, its
//! output matches botocore's. Queries are sorted by their encoded pairs, as in botocore and
//! AWS's documentation; `aws-sigv4` sorts the decoded pairs, which differs only in rare cases
//! such as `a-` against `a/`:
//!
//! 1. A canonical request: method, canonical URI, canonical query string, canonical headers,
//!    signed header names and the payload hash, one per line.
//! 2. A string to sign: `AWS4-HMAC-SHA256`, the `x-amz-date`, the credential scope
//!    `{date}/{region}/{service}/aws4_request` and the hex SHA-256 of the canonical request.
//! 3. A signing key derived as `kDate → kRegion → kService → kSigning`, an HMAC-SHA256 chain
//!    starting from `"AWS4" + secret`, and the hex HMAC of the string to sign under it.
//!
//! The secret, every derived key and the session token live only in [`Zeroizing`] buffers,
//! and [`SignedHeaders`]'s `Debug` prints neither the signature nor the token.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, UtcOffset};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The payload hash to use when the body is not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Headers the signer sets itself; a caller's copy of any of them is ignored, so a stale
/// agent value can never end up signed next to ours.
const SIGNER_HEADERS: [&str; 5] = [
    "authorization",
    "host",
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-security-token",
];

/// Headers never signed, as in botocore: hop-by-hop headers and ones that proxies and HTTP
/// stacks rewrite in transit, which would break the signature on the way.
const UNSIGNED_HEADERS: [&str; 11] = [
    "connection",
    "expect",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-amzn-trace-id",
];

/// What is signed: the request exactly as it will be sent.
#[derive(Clone, Copy)]
pub struct SigningRequest<'a> {
    /// The HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// The real host, e.g. `bedrock-runtime.us-east-1.amazonaws.com`, with the port only if
    /// it is not the default one. It is sent (and signed) as the `host` header.
    pub host: &'a str,
    /// The absolute path as sent on the wire, with its `%XX` escapes.
    pub path: &'a str,
    /// The raw query string as sent, without the `?`.
    pub query: Option<&'a str>,
    /// The headers that will be sent besides the ones the signer adds; names in any case.
    /// `host`, `authorization` and the `x-amz-*` headers the signer sets are ignored here,
    /// and so are hop-by-hop headers and `user-agent`, which are never signed.
    pub headers: &'a [(&'a str, &'a str)],
    /// The hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_sha256_hex: &'a str,
    /// Whether `x-amz-content-sha256` is signed (and must then be sent). True for Bedrock;
    /// AWS's generic test vectors sign only `host` and `x-amz-date`.
    pub sign_content_sha256: bool,
}

/// The headers to add to the request. Send `x-amz-content-sha256` whenever
/// [`SigningRequest::sign_content_sha256`] was set, and the security token whenever present.
pub struct SignedHeaders {
    /// The `Authorization` header value.
    pub authorization: Zeroizing<String>,
    /// The `X-Amz-Date` header value, `YYYYMMDD'T'HHMMSS'Z'`.
    pub x_amz_date: String,
    /// The `X-Amz-Content-SHA256` header value: the payload hash that was signed.
    pub x_amz_content_sha256: String,
    /// The `X-Amz-Security-Token` header value, for temporary credentials.
    pub x_amz_security_token: Option<Zeroizing<String>>,
}

impl fmt::Debug for SignedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signature is a bearer credential until the request expires, and the token is
        // a secret: neither is printed.
        f.debug_struct("SignedHeaders")
            .field("authorization", &"<redacted>")
            .field("x_amz_date", &self.x_amz_date)
            .field("x_amz_content_sha256", &self.x_amz_content_sha256)
            .field(
                "x_amz_security_token",
                &self.x_amz_security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Signs `req` for `region` and `service` at time `now`.
pub fn sign(
    req: &SigningRequest<'_>,
    access_key_id: &str,
    secret_access_key: &str,
    session_token: Option<&str>,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> SignedHeaders {
    let amz_date = amz_date(now);
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let (canonical, signed_headers) = canonical_request_at(req, &amz_date, session_token);
    let to_sign = string_to_sign_from(&amz_date, &scope, &canonical);

    let key = signing_key(secret_access_key, date, region, service);
    let signature = Zeroizing::new(hex::encode(*hmac_sha256(&key[..], to_sign.as_bytes())));

    // Built in place so no unzeroized copy of the signature is left behind by reallocation.
    let mut authorization = Zeroizing::new(String::with_capacity(
        ALGORITHM.len()
            + access_key_id.len()
            + scope.len()
            + signed_headers.len()
            + signature.len()
            + 40,
    ));
    for part in [
        ALGORITHM,
        " Credential=",
        access_key_id,
        "/",
        &scope,
        ", SignedHeaders=",
        &signed_headers,
        ", Signature=",
        &signature,
    ] {
        authorization.push_str(part);
    }

    SignedHeaders {
        authorization,
        x_amz_date: amz_date,
        x_amz_content_sha256: req.payload_sha256_hex.to_owned(),
        x_amz_security_token: session_token.map(|t| Zeroizing::new(t.to_owned())),
    }
}

/// The canonical request [`sign`] would sign at `now`, for diagnostics and tests. It holds
/// the session token, so it is returned in a [`Zeroizing`] buffer.
pub fn canonical_request(
    req: &SigningRequest<'_>,
    session_token: Option<&str>,
    now: OffsetDateTime,
) -> Zeroizing<String> {
    canonical_request_at(req, &amz_date(now), session_token).0
}

/// The string to sign [`sign`] would sign at `now`, for diagnostics and tests.
pub fn string_to_sign(
    req: &SigningRequest<'_>,
    session_token: Option<&str>,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> String {
    let amz_date = amz_date(now);
    let scope = format!("{}/{region}/{service}/aws4_request", &amz_date[..8]);
    let (canonical, _) = canonical_request_at(req, &amz_date, session_token);
    string_to_sign_from(&amz_date, &scope, &canonical)
}

/// Region from a Bedrock runtime host: `bedrock-runtime.{region}.amazonaws.com` or
/// `bedrock-runtime-fips.{region}.amazonaws.com`, lowercase, optionally with a `:port` or a
/// trailing dot. `None` for any other host.
pub fn bedrock_region(host: &str) -> Option<&str> {
    let host = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let rest = host
        .strip_prefix("bedrock-runtime.")
        .or_else(|| host.strip_prefix("bedrock-runtime-fips."))?;
    let region = rest.strip_suffix(".amazonaws.com")?;
    let valid = region.starts_with(|c: char| c.is_ascii_lowercase())
        && !region.ends_with('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some(region)
}

/// `x-amz-date` format: `20150830T123600Z`, always in UTC.
fn amz_date(now: OffsetDateTime) -> String {
    let t = now.to_offset(UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn string_to_sign_from(amz_date: &str, scope: &str, canonical: &str) -> String {
    let digest = hex::encode(Sha256::digest(canonical.as_bytes()));
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{digest}")
}

/// The canonical request and its signed-headers list.
fn canonical_request_at(
    req: &SigningRequest<'_>,
    amz_date: &str,
    session_token: Option<&str>,
) -> (Zeroizing<String>, String) {
    let uri = canonical_uri(req.path);
    let query = canonical_query(req.query.unwrap_or(""));
    let (headers, signed) = canonical_headers(req, amz_date, session_token);

    // Sized up front: the buffer holds the session token, and growing it would leave
    // unzeroized copies behind.
    let mut out = Zeroizing::new(String::with_capacity(
        req.method.len()
            + uri.len()
            + query.len()
            + headers.len()
            + signed.len()
            + req.payload_sha256_hex.len()
            + 8,
    ));
    for part in [
        req.method,
        "\n",
        &uri,
        "\n",
        &query,
        "\n",
        &headers,
        "\n",
        &signed,
        "\n",
        req.payload_sha256_hex,
    ] {
        out.push_str(part);
    }
    (out, signed)
}

/// The canonical URI for services other than S3, as botocore and `aws-sigv4` compute it.
///
/// Dot segments and empty segments are removed (botocore's `remove_dot_segments`). Each
/// remaining segment is brought to AWS's single encoding of its raw value, then encoded once
/// more, which turns each `%` into `%25`: `v1%3A0` on the wire becomes `v1%253A0`. For a
/// path already encoded the AWS way, as every SDK sends it, that is exactly the SDKs'
/// `%` → `%25`; a raw `:` or a lowercase `%3a` is first normalised to `%3A`.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() * 2);
    if path.starts_with('/') {
        out.push('/');
    }
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        let once = uri_encode(&percent_decode(segment, false));
        out.push_str(&once.replace('%', "%25"));
    }
    if path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// The canonical query string: pairs split on `&` and the first `=`, decoded as
/// `application/x-www-form-urlencoded` (so `+` is a space, as in `aws-sigv4`), re-encoded
/// with AWS's rules and sorted by encoded name, then encoded value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(name, true)),
                uri_encode(&percent_decode(value, true)),
            )
        })
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(query.len() * 2);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The canonical header block (each line ending in `\n`) and the signed-headers list.
fn canonical_headers(
    req: &SigningRequest<'_>,
    amz_date: &str,
    session_token: Option<&str>,
) -> (String, String) {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(req.headers.len() + 4);
    for (name, value) in req.headers {
        let name = name.trim().to_ascii_lowercase();
        if SIGNER_HEADERS.contains(&name.as_str()) || UNSIGNED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        headers.push((name, trim_all(value)));
    }
    headers.push(("host".to_owned(), trim_all(req.host)));
    headers.push(("x-amz-date".to_owned(), amz_date.to_owned()));
    if req.sign_content_sha256 {
        headers.push((
            "x-amz-content-sha256".to_owned(),
            trim_all(req.payload_sha256_hex),
        ));
    }
    if let Some(token) = session_token {
        headers.push(("x-amz-security-token".to_owned(), trim_all(token)));
    }
    // Stable, so repeated headers keep the order they are sent in when joined with `,`.
    headers.sort_by(|a, b| a.0.cmp(&b.0));

    let capacity = headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut block = String::with_capacity(capacity);
    let mut signed = String::new();
    let mut previous: Option<&str> = None;
    for (name, value) in &headers {
        if previous == Some(name.as_str()) {
            block.pop(); // the previous line's `\n`
            block.push(',');
        } else {
            if previous.is_some() {
                signed.push(';');
            }
            signed.push_str(name);
            block.push_str(name);
            block.push(':');
        }
        block.push_str(value);
        block.push('\n');
        previous = Some(name);
    }
    (block, signed)
}

/// Trims a header value and collapses each run of spaces and tabs into one space.
fn trim_all(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Decodes `%XX` escapes (a `%` not followed by two hex digits stays literal) and, for query
/// components, `+` as a space.
fn percent_decode(s: &str, plus_is_space: bool) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex_value(b)),
                bytes.get(i + 2).and_then(|&b| hex_value(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// AWS `UriEncode`: unreserved `A-Z a-z 0-9 - _ . ~` kept, every other byte `%XX` uppercase.
fn uri_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    seed.extend_from_slice(b"AWS4");
    seed.extend_from_slice(secret.as_bytes());
    let k_date = hmac_sha256(&seed, date.as_bytes());
    let k_region = hmac_sha256(&k_date[..], region.as_bytes());
    let k_service = hmac_sha256(&k_region[..], service.as_bytes());
    hmac_sha256(&k_service[..], b"aws4_request")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(data);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uri_double_encodes_escapes_and_drops_dot_segments() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("//a//b/"), "/a/b/");
        assert_eq!(canonical_uri("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_uri("/v1%3A0"), "/v1%253A0");
        assert_eq!(canonical_uri("/v1%3a0"), "/v1%253A0");
        assert_eq!(canonical_uri("/v1:0"), "/v1%253A0");
        assert_eq!(canonical_uri("/a%2Fb"), "/a%252Fb");
        assert_eq!(canonical_uri("/-_.~"), "/-_.~");
    }

    #[test]
    fn canonical_query_sorts_by_encoded_name_then_value() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=2&a=1&c"), "a=1&a=2&b=2&c=");
        assert_eq!(canonical_query("k=a%20b&j=a+b"), "j=a%20b&k=a%20b");
        assert_eq!(canonical_query("x=%2f%7e*"), "x=%2F~%2A");
        assert_eq!(canonical_query("&&a=1&"), "a=1");
    }

    #[test]
    fn trim_all_collapses_spaces_and_tabs() {
        assert_eq!(trim_all("  a \t  b   c  "), "a b c");
        assert_eq!(trim_all(""), "");
    }

    #[test]
    fn signing_key_matches_aws_documented_example() {
        // AWS General Reference, "Examples of how to derive a signing key for SigV4".
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(*key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }
}
