//! Who is calling (SPEC §3 step 2): `Proxy-Authorization: Basic`, or the
//! listener's fixed agent for `auth = "none"` sidecars.

use base64::Engine;
use http::HeaderMap;
use portcullis_rules::{ListenerAuth, Policy};
use zeroize::Zeroizing;

/// An authenticated caller. Owned, so it can outlive a policy reload; the
/// agent is looked up again in whichever generation decides a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub agent: String,
    pub tenant: String,
}

/// Authenticates the request headers for a listener. `None` means 407.
pub fn identify(policy: &Policy, auth: &ListenerAuth, headers: &HeaderMap) -> Option<Identity> {
    match auth {
        ListenerAuth::None { agent } => policy.agent(agent).map(|a| Identity {
            agent: a.id.clone(),
            tenant: a.tenant.clone(),
        }),
        _ => {
            // Only one Proxy-Authorization header is acceptable.
            let mut values = headers.get_all(http::header::PROXY_AUTHORIZATION).iter();
            let value = values.next()?;
            if values.next().is_some() {
                return None;
            }
            let value = value.to_str().ok()?;
            let (scheme, b64) = value.trim().split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            let decoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()?,
            );
            let colon = decoded.iter().position(|b| *b == b':')?;
            let agent_id = std::str::from_utf8(&decoded[..colon]).ok()?;
            let token = &decoded[colon + 1..];
            policy.authenticate(agent_id, token).map(|a| Identity {
                agent: a.id.clone(),
                tenant: a.tenant.clone(),
            })
        }
    }
}
