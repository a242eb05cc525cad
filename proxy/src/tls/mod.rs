//! Inside a CONNECT tunnel or a redirected TLS connection (SPEC §3 step 4, §12): [`intercept`] terminates TLS
//! with a minted leaf and serves the requests inside; [`passthrough`] splices
//! raw TCP after checking the SNI.

mod intercept;
mod passthrough;

pub use intercept::{intercept, serve_h1};
pub use passthrough::{passthrough, read_client_hello};

use crate::flow::{Target, TunnelVerdict};
use crate::identity::Identity;

/// What a CONNECT established.
pub struct Tunnel {
    pub listener: String,
    pub who: Identity,
    pub target: Target,
    pub verdict: TunnelVerdict,
}
