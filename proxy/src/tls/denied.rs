//! Leaves for destinations the policy already denied when the tunnel opened.
//!
//! A denial on port 443 (and a redirected TLS connection to a denied name) is answered
//! inside TLS, so the agent's SDK can show the reason; that takes a leaf for the denied
//! host. An agent can make up denied names without end, so these leaves come from their
//! own small cache, minted by at most one blocking thread: a flood of them cannot push
//! real hosts' leaves out of the main cache, nor take more than one core. And each agent
//! may have only a few new ones minted per second (a token bucket): past that, the
//! tunnel itself is refused with `denied_tunnel_limit` (429), and recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use portcullis_certs::{CaError, CacheOptions, CacheStats, CertificateAuthority, LeafCache};
use rustls::sign::CertifiedKey;

/// Leaves kept for denied hosts: enough for an agent's honest mistakes to be served
/// from memory, far below the main cache.
pub const DENIED_CACHE_CAPACITY: usize = 256;
/// New denied-host leaves one agent may have minted back to back.
pub const DENIED_MINT_BURST: u32 = 16;
/// New denied-host leaves per second one agent earns back.
pub const DENIED_MINTS_PER_SEC: u32 = 4;

/// The denied-host leaf cache and the per-agent budget in front of it.
pub struct DeniedLeaves {
    cache: LeafCache,
    buckets: Mutex<HashMap<String, Bucket>>,
    burst: f64,
    per_sec: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl DeniedLeaves {
    pub fn new(ca: Arc<CertificateAuthority>, ttl: Duration) -> Self {
        Self::with_limits(ca, ttl, DENIED_MINT_BURST, DENIED_MINTS_PER_SEC)
    }

    fn with_limits(ca: Arc<CertificateAuthority>, ttl: Duration, burst: u32, per_sec: u32) -> Self {
        let opts = CacheOptions {
            capacity: DENIED_CACHE_CAPACITY,
            ttl,
            mint_workers: 1,
        };
        Self {
            cache: LeafCache::new(ca, opts),
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_sec),
        }
    }

    /// May `agent` open a tunnel to the denied `host`? A leaf already cached costs
    /// nothing; one still to be minted takes a token from the agent's bucket.
    pub fn admit(&self, agent: &str, host: &str) -> bool {
        if self.cache.contains(host) {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        // Keyed by authenticated agent ids, so the map is as big as the policy's agent list.
        let bucket = match buckets.get_mut(agent) {
            Some(b) => b,
            None => buckets.entry(agent.to_owned()).or_insert(Bucket {
                tokens: self.burst,
                at: now,
            }),
        };
        let earned = now.duration_since(bucket.at).as_secs_f64() * self.per_sec;
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The leaf for a denied host (single-flight, minted off the async workers).
    pub async fn get(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        self.cache.get(host).await
    }

    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn leaves(burst: u32, per_sec: u32) -> (tempfile::TempDir, DeniedLeaves) {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init(&tmp.path().join("ca")).unwrap();
        let leaves =
            DeniedLeaves::with_limits(Arc::new(ca), Duration::from_secs(3600), burst, per_sec);
        (tmp, leaves)
    }

    #[test]
    fn each_agent_gets_its_own_burst_of_new_denied_hosts() {
        let (_tmp, leaves) = leaves(3, 0);
        for i in 0..3 {
            assert!(leaves.admit("a", &format!("h{i}.denied.test")));
        }
        assert!(!leaves.admit("a", "h3.denied.test"), "a's burst is spent");
        assert!(leaves.admit("b", "h0.denied.test"), "b has its own bucket");
    }

    #[tokio::test]
    async fn a_cached_denied_leaf_is_served_without_a_token() {
        let (_tmp, leaves) = leaves(1, 0);
        assert!(leaves.admit("a", "known.denied.test"));
        leaves.get("known.denied.test").await.unwrap();
        assert!(!leaves.admit("a", "new.denied.test"));
        assert!(leaves.admit("a", "known.denied.test"), "already minted");
        assert_eq!(leaves.stats().mints, 1);
    }

    #[test]
    fn tokens_come_back_with_time() {
        let (_tmp, leaves) = leaves(1, 1000);
        assert!(leaves.admit("a", "h0.denied.test"));
        std::thread::sleep(Duration::from_millis(20));
        assert!(leaves.admit("a", "h1.denied.test"));
    }
}
