//! Who is calling (SPEC §3 step 2): `Proxy-Authorization: Basic`, or the
//! listener's fixed agent for `auth = "none"` sidecars, or (on transparent
//! listeners) the agent its source-CIDR map gives the peer's address.
//!
//! A tunnel authenticates once, at CONNECT, but lives across reloads. So an
//! [`Identity`] keeps what it was proven with (the SHA-256 of the token, and
//! the tenant), and [`Identity::still_valid`] re-checks both against the
//! policy in force before every request inside the tunnel: a rotated token or
//! an agent moved to another tenant stops working on its next request.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use http::HeaderMap;

use portcullis_rules::{ListenerAuth, Policy};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// An authenticated caller. Owned, so it can outlive a policy reload.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub agent: String,
    pub tenant: String,
    proof: Proof,
}

/// What the caller proved itself with.
#[derive(Clone, PartialEq, Eq)]
enum Proof {
    /// The SHA-256 of the proxy token it presented.
    Token([u8; 32]),
    /// The listener's fixed agent (`auth = "none"`).
    Listener,
}

impl fmt::Debug for Identity {
    /// The token digest is left out: a hash of a weak token can be brute-forced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("agent", &self.agent)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Whether the policy in force still accepts this caller as the same
    /// agent of the same tenant with the same token.
    /// A gateway caller, proven by its token alone.
    pub fn from_token(policy: &Policy, token: &[u8]) -> Option<Identity> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        policy.authenticate_token(token).map(|a| Identity {
            agent: a.id.clone(),
            tenant: a.tenant.clone(),
            proof: Proof::Token(digest),
        })
    }

    /// A declared agent, vouched for by the listener's config rather than a token.
    fn configured(policy: &Policy, agent: &str) -> Option<Identity> {
        policy.agent(agent).map(|a| Identity {
            agent: a.id.clone(),
            tenant: a.tenant.clone(),
            proof: Proof::Listener,
        })
    }

    pub fn still_valid(&self, policy: &Policy) -> bool {
        let agent = match &self.proof {
            Proof::Token(digest) => policy.authenticate_digest(&self.agent, digest),
            Proof::Listener => policy.agent(&self.agent),
        };
        agent.is_some_and(|a| a.tenant == self.tenant)
    }
}

/// Who a connection from `peer` is, where the listener's config says (a
/// fixed agent, or the source-CIDR map). `None`: nobody; refuse it.
pub fn identify_peer(policy: &Policy, auth: &ListenerAuth, peer: IpAddr) -> Option<Identity> {
    Identity::configured(policy, auth.agent_for_peer(peer)?)
}

/// Authenticates the request headers for a listener. `None` means 407.
pub fn identify(policy: &Policy, auth: &ListenerAuth, headers: &HeaderMap) -> Option<Identity> {
    match auth {
        ListenerAuth::None { agent } => return Identity::configured(policy, agent),
        // Only a peer address can say who these are; see `identify_peer`.
        ListenerAuth::Sources(_) => return None,
        _ => {}
    }
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
    let digest: [u8; 32] = Sha256::digest(&decoded[colon + 1..]).into();
    policy
        .authenticate_digest(agent_id, &digest)
        .map(|a| Identity {
            agent: a.id.clone(),
            tenant: a.tenant.clone(),
            proof: Proof::Token(digest),
        })
}
