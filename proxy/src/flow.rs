//! The per-request value types: where a request goes, how its client came
//! in, what a tunnel's CONNECT decided, and ids.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_rules::{Decision, Host, ListenerAuth, Route};
use rand::RngCore;
use tokio::sync::OwnedSemaphorePermit;

use crate::identity::Identity;
use crate::metrics::ConnectionGauge;

/// How the upstream is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// Where a request goes: the CONNECT target, or an absolute URL's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    pub scheme: Scheme,
}

impl Target {
    /// `host[:port]` as it goes in an upstream URI (port omitted when default).
    pub fn authority(&self) -> String {
        let host = match &self.host {
            Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            h => h.to_string(),
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// What CONNECT decided for a tunnel: one value, so "intercepted but refused"
/// and "passed through without a route" cannot be expressed.
#[derive(Clone, Debug)]
pub enum TunnelVerdict {
    /// Terminate TLS and run every request inside through the driver, which
    /// walks the routes again for each one.
    Intercept,
    /// Splice raw TCP after checking the SNI.
    Passthrough(Arc<Route>),
    /// Refused at CONNECT, but on port 443: terminate TLS anyway and answer
    /// each request with this decision, so the agent's SDK can show why.
    Refused(Decision),
}

/// How the client came in, and so where a request's target comes from.
#[derive(Clone, Debug)]
pub enum Entry {
    /// Inside an intercepted CONNECT tunnel: the target is fixed, and the
    /// identity was proven at CONNECT (re-checked on every request).
    Tunnel {
        target: Target,
        verdict: TunnelVerdict,
        who: Identity,
    },
    /// Absolute-form `http://` requests on the proxy connection: each names
    /// its own target and carries its own credentials.
    Plain { auth: ListenerAuth },
    /// A base-URL gateway: `/{provider}/…` names the provider, and the agent's
    /// token sits where the provider key would (or the listener has a fixed agent).
    Gateway { auth: ListenerAuth },
}

/// The framing layer a request arrived on.
#[derive(Clone, Debug)]
pub enum Wire {
    /// HTTP/1 behind the framing guard, whose synthetic refusals carry this nonce.
    Http1 {
        nonce: String,
    },
    Http2,
}

/// One client connection (or tunnel), shared by every request on it.
pub struct Flow {
    pub listener: String,
    pub entry: Entry,
    pub wire: Wire,
    /// The connection's slot: long-lived work that outlives the HTTP
    /// connection (a tunnel, a WebSocket relay) holds it too.
    pub slot: Arc<ConnSlot>,
}

/// One client connection's share of the proxy: its permit under the
/// connection limit, and its place in `portcullis_active_connections`. Both
/// are released when the last piece of work on the connection ends.
pub struct ConnSlot {
    /// The client's address (recorded on refusals made before anyone was identified).
    peer: IpAddr,
    _permit: OwnedSemaphorePermit,
    _peer_slot: PeerConn,
    _gauge: ConnectionGauge,
    /// On a gateway connection: the slots of the agents that used it.
    agents: std::sync::Mutex<Vec<AgentConn>>,
    /// Requests in flight (from the driver's start to the end of the response
    /// body), and a tick per start and end: the idle watcher samples both, so
    /// a request costs two atomic adds and no timer.
    busy: AtomicU32,
    ticks: AtomicU64,
}

impl ConnSlot {
    pub fn new(
        peer: IpAddr,
        permit: OwnedSemaphorePermit,
        peer_slot: PeerConn,
        gauge: ConnectionGauge,
    ) -> Arc<ConnSlot> {
        Arc::new(ConnSlot {
            peer,
            _permit: permit,
            _peer_slot: peer_slot,
            _gauge: gauge,
            agents: std::sync::Mutex::new(Vec::new()),
            busy: AtomicU32::new(0),
            ticks: AtomicU64::new(0),
        })
    }

    /// Marks a request in flight until the returned value is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.ticks.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in flight, and none
    /// started or ended, for a whole `after` (so between one and two `after`s
    /// after its last activity). A held approval or a long stream is in flight,
    /// so it never counts as idle.
    pub async fn idle(&self, after: Duration) {
        let mut seen = self.ticks.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(after).await;
            let now = self.ticks.load(Ordering::Relaxed);
            if now == seen && self.busy.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = now;
        }
    }

    /// Counts this connection against `agent`'s cap, once per agent, for as long
    /// as it is open. False at the cap.
    pub fn hold_agent(&self, conns: &Arc<AgentConns>, agent: &str, cap: usize) -> bool {
        let mut held = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if held.iter().any(|s| s.key == agent) {
            return true;
        }
        match conns.take(&agent.to_owned(), cap) {
            Some(slot) => {
                held.push(slot);
                true
            }
            None => false,
        }
    }

    pub fn peer(&self) -> IpAddr {
        self.peer
    }
}

/// One request in flight on a connection (see [`ConnSlot::busy`]).
pub struct Busy(Arc<ConnSlot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Open connections per key, against a cap: tunnels and gateway connections
/// per agent (`[limits] max_connections_per_agent`), connections per client
/// address (`max_connections_per_peer`). Touched once when one opens and once
/// when it closes.
pub struct OpenCounts<K> {
    open: std::sync::Mutex<std::collections::HashMap<K, usize>>,
}

impl<K> Default for OpenCounts<K> {
    fn default() -> Self {
        OpenCounts {
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> OpenCounts<K> {
    /// A slot for one more of `key`, or `None` at the cap.
    pub fn take(self: &Arc<Self>, key: &K, cap: usize) -> Option<OpenSlot<K>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(OpenSlot {
            counts: self.clone(),
            key: key.clone(),
        })
    }
}

/// One open connection; gives its slot back when dropped.
pub struct OpenSlot<K: std::hash::Hash + Eq + Clone> {
    counts: Arc<OpenCounts<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for OpenSlot<K> {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Open tunnels and gateway connections per agent.
pub type AgentConns = OpenCounts<String>;
pub type AgentConn = OpenSlot<String>;
/// Open connections per client address.
pub type PeerConns = OpenCounts<IpAddr>;
pub type PeerConn = OpenSlot<IpAddr>;

/// Where the process is in its life. Connections watch it: on `Draining`
/// they finish what is in flight; on `Closing` they drop it, which writes the
/// outcome of anything still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    Draining,
    Closing,
}

pub fn new_event_id() -> String {
    portcullis_ledger::new_event_id()
}

/// A per-connection secret for the framing guard's synthetic requests.
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}
