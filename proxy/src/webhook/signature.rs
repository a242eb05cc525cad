//! Signing a webhook body, and checking a signature (what a receiver does).

use super::*;

fn mac(secret: &[u8], t: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = match <HmacSha256 as Mac>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `v1` value: lowercase hex HMAC-SHA256(secret, "<t>.<body>").
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    hex::encode(mac(secret, t, body).finalize().into_bytes())
}

/// The whole `X-Portcullis-Signature` value: `t=<t>,v1=<hex>`.
pub fn signature_header(secret: &[u8], t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// Why a signature was refused. Carries neither the secret nor the body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    #[error("signature header has no v1 signature")]
    NoSignature,
    #[error("no v1 signature matches this body and secret")]
    Mismatch,
    #[error("signature timestamp is {age}s old, past the tolerance (replay?)")]
    TooOld { age: u64 },
    #[error("signature timestamp is {ahead}s in the future, past the tolerance (clock skew?)")]
    TooNew { ahead: u64 },
}

/// Checks an `X-Portcullis-Signature` header against `body`: a well-formed
/// header, some `v1` matching in constant time (several are allowed, for
/// secret rotation; unknown schemes are ignored), and a timestamp within
/// `tolerance` of `now` (unix seconds) either way.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut sigs: Vec<[u8; 32]> = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(VerifyError::Malformed("each entry must be key=value"))?;
        match key {
            "t" => {
                if t.is_some() {
                    return Err(VerifyError::Malformed("more than one t="));
                }
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(VerifyError::Malformed("t= must be unix seconds"));
                }
                let parsed = value
                    .parse::<u64>()
                    .map_err(|_| VerifyError::Malformed("t= must be unix seconds"))?;
                t = Some(parsed);
            }
            "v1" => {
                let mut sig = [0u8; 32];
                hex::decode_to_slice(value, &mut sig)
                    .map_err(|_| VerifyError::Malformed("v1= must be 64 hex digits"))?;
                sigs.push(sig);
            }
            "" => return Err(VerifyError::Malformed("empty key")),
            _ => {} // a later scheme (v2=...) this verifier does not know
        }
    }
    let t = t.ok_or(VerifyError::Malformed("no t="))?;
    if sigs.is_empty() {
        return Err(VerifyError::NoSignature);
    }
    let expected = mac(secret, t, body).finalize().into_bytes();
    let matched = sigs.iter().fold(subtle::Choice::from(0), |acc, sig| {
        acc | sig[..].ct_eq(&expected[..])
    });
    if !bool::from(matched) {
        return Err(VerifyError::Mismatch);
    }
    // Checked after the signature, so a stale-time answer is only ever given
    // about a record we really sent.
    let tol = tolerance.as_secs();
    if now > t && now - t > tol {
        return Err(VerifyError::TooOld { age: now - t });
    }
    if t > now && t - now > tol {
        return Err(VerifyError::TooNew { ahead: t - now });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------
