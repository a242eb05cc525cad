//! Refusals made before anyone was identified (no or a wrong token, an unknown source
//! address, a malformed head before the credentials), recorded at a bounded rate per peer.
//!
//! Such a refusal costs its sender nothing, and without a bound one peer could fill the
//! ledger's queue (every tenant's requests would then fail closed) or its disk. So per
//! window, each peer's first refusals are recorded one by one; past that they are only
//! counted, and when the window closes (or the proxy stops) one aggregate `decision`
//! record per peer, listener and reason carries the count. Nothing is lost: the records
//! of a peer, each counting `count` (1 when absent), add up to the refusals it got.
//! Identified requests are never held back by this.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use portcullis_ledger::{DecisionFacts, Ledger};
use portcullis_rules::{Action, Reason};

use crate::policy::PolicySnapshot;

/// How long one window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Refusals of one peer recorded one by one per window.
const PER_PEER: u32 = 20;
/// Refusals recorded one by one per window, all peers together.
const GLOBAL: u32 = 1000;
/// Peers tracked one by one per window; refusals of further peers are counted together.
const MAX_PEERS: usize = 4096;

/// Whether a refusal gets its own record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Record,
    /// Counted for the window's aggregate record instead.
    Counted,
}

/// Who a window counts: an IPv4 address, an IPv6 /64 (one host usually holds a whole
/// /64), or every peer past [`MAX_PEERS`] together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PeerKey {
    Ip(IpAddr),
    Others,
}

impl PeerKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                PeerKey::Ip(IpAddr::V6(Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
            IpAddr::V6(v6) => PeerKey::Ip(v6.to_ipv4_mapped().map_or(ip, IpAddr::V4)),
            v4 => PeerKey::Ip(v4),
        }
    }

    /// The `peer` field of an aggregate record: `None` for the crowd past the cap.
    fn label(self) -> Option<String> {
        match self {
            PeerKey::Ip(ip @ IpAddr::V6(_)) => Some(format!("{ip}/64")),
            PeerKey::Ip(ip) => Some(ip.to_string()),
            PeerKey::Others => None,
        }
    }
}

#[derive(Default)]
struct PeerWindow {
    recorded: u32,
    /// (listener, reason) -> refusals counted but not recorded.
    counted: HashMap<(String, Reason), u64>,
}

#[derive(Default)]
struct Window {
    peers: HashMap<PeerKey, PeerWindow>,
    recorded: u32,
}

/// The per-peer recording rate of unidentified refusals.
#[derive(Default)]
pub struct Refusals {
    window: Mutex<Window>,
}

impl Refusals {
    /// Decides whether this refusal of `peer` gets its own record; if not, counts it.
    pub fn gate(&self, peer: IpAddr, listener: &str, reason: Reason) -> Gate {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = PeerKey::of(peer);
        if !w.peers.contains_key(&key) && w.peers.len() >= MAX_PEERS {
            key = PeerKey::Others;
        }
        let global_room = w.recorded < GLOBAL;
        let entry = w.peers.entry(key).or_default();
        if key != PeerKey::Others && global_room && entry.recorded < PER_PEER {
            entry.recorded += 1;
            w.recorded += 1;
            return Gate::Record;
        }
        *entry
            .counted
            .entry((listener.to_owned(), reason))
            .or_insert(0) += 1;
        Gate::Counted
    }

    /// Closes the window: writes one aggregate record per peer, listener and reason that
    /// had refusals counted. Counts whose record could not be written go back into the
    /// next window, so the sum stays exact.
    pub async fn flush(&self, ledger: &Ledger, snap: &PolicySnapshot) {
        let closed = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        // All at once, so that they share the writer's batches.
        let writes = closed.peers.into_iter().flat_map(|(key, peer)| {
            peer.counted.into_iter().map(move |((listener, reason), count)| {
                let facts = aggregate(key, &listener, reason, count, snap);
                tracing::info!(
                    peer = facts.peer.as_deref().unwrap_or("others"),
                    listener = %listener,
                    reason = reason.code(),
                    count,
                    "unidentified refusals past the recording rate, recorded as one"
                );
                async move {
                    match ledger.append_decision(facts).await {
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(error = %e, count, "aggregate refusal record not written; kept for the next window");
                            Some((key, listener, reason, count))
                        }
                    }
                }
            })
        });
        let unwritten: Vec<_> = futures_util::future::join_all(writes)
            .await
            .into_iter()
            .flatten()
            .collect();
        if unwritten.is_empty() {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        for (key, listener, reason, count) in unwritten {
            *w.peers
                .entry(key)
                .or_default()
                .counted
                .entry((listener, reason))
                .or_insert(0) += count;
        }
    }
}

fn aggregate(
    key: PeerKey,
    listener: &str,
    reason: Reason,
    count: u64,
    snap: &PolicySnapshot,
) -> DecisionFacts {
    DecisionFacts {
        event_id: portcullis_ledger::new_event_id(),
        listener: listener.to_owned(),
        decision: Action::Deny.as_str().to_owned(),
        reason: reason.code().to_owned(),
        policy_generation: snap.generation,
        policy_hash: snap.policy.hash_hex().to_owned(),
        peer: key.label(),
        count: Some(count),
        ..DecisionFacts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn a_peer_is_recorded_up_to_its_rate_then_counted_and_others_are_not_affected() {
        let r = Refusals::default();
        let a = ip("192.0.2.1");
        let gates: Vec<Gate> = (0..100)
            .map(|_| r.gate(a, "forward", Reason::AuthFailed))
            .collect();
        assert!(gates[..PER_PEER as usize]
            .iter()
            .all(|g| *g == Gate::Record));
        assert!(gates[PER_PEER as usize..]
            .iter()
            .all(|g| *g == Gate::Counted));
        assert_eq!(
            r.gate(ip("192.0.2.2"), "forward", Reason::AuthFailed),
            Gate::Record
        );
        let w = r.window.lock().unwrap_or_else(|p| p.into_inner());
        let counted = &w.peers[&PeerKey::of(a)].counted;
        assert_eq!(counted[&("forward".to_owned(), Reason::AuthFailed)], 80);
    }

    #[test]
    fn one_ipv6_host_cycling_through_its_64_is_one_peer() {
        let r = Refusals::default();
        for i in 0..(PER_PEER + 5) {
            let peer = ip(&format!("2001:db8:1:2::{i:x}"));
            let _ = r.gate(peer, "gw", Reason::AuthFailed);
        }
        let w = r.window.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(w.peers.len(), 1);
        assert_eq!(
            PeerKey::of(ip("2001:db8:1:2::7")).label().as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(
            PeerKey::of(ip("::ffff:192.0.2.9")).label().as_deref(),
            Some("192.0.2.9")
        );
    }

    #[test]
    fn past_the_peer_cap_and_the_global_rate_refusals_are_counted_not_recorded() {
        let r = Refusals::default();
        let mut recorded = 0;
        for i in 0..(MAX_PEERS as u32 + 10) {
            let peer = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if r.gate(peer, "forward", Reason::AuthFailed) == Gate::Record {
                recorded += 1;
            }
        }
        assert_eq!(recorded, GLOBAL);
        let w = r.window.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(w.peers.len(), MAX_PEERS + 1, "the crowd shares one entry");
        assert_eq!(
            w.peers[&PeerKey::Others].counted[&("forward".to_owned(), Reason::AuthFailed)],
            10
        );
    }
}
