//! The bounded, single-flight leaf cache in front of [`CertificateAuthority::mint_leaf`].
//!
//! Each host has a slot holding a `tokio::sync::OnceCell`. The first request for a host
//! creates the slot and mints the leaf. Requests that arrive meanwhile wait on the same cell,
//! so a burst of N connections mints one certificate. If minting fails, the cell stays
//! empty: the error goes to the caller and the next waiter tries again, so errors are not
//! cached. The map is behind a `std::sync::Mutex` that is held only for the lookup, never
//! across an await or a mint.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::host::LeafHost;
use crate::{CaError, CertificateAuthority};

/// How many leaves to keep and how long each is valid.
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    /// Most hosts kept at once. A capacity of 0 is treated as 1.
    pub capacity: usize,
    /// Validity of each minted leaf. An entry is dropped and minted again once it is past
    /// half of this, so a served leaf always has plenty of life left.
    pub ttl: Duration,
}

/// Counters for metrics (`portcullis_cert_cache_{hits,misses}_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests served from a ready, fresh entry.
    pub hits: u64,
    /// Requests that had to mint, or wait for a mint in flight.
    pub misses: u64,
    /// Certificates minted successfully.
    pub mints: u64,
    /// Hosts currently in the cache, counting mints in flight.
    pub entries: usize,
}

/// Bounded, single-flight cache of leaf certificates, keyed by canonical host.
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    opts: CacheOptions,
    slots: Mutex<Slots>,
    hits: AtomicU64,
    misses: AtomicU64,
    mints: AtomicU64,
    mint_nanos: AtomicU64,
}

#[derive(Default)]
struct Slots {
    by_host: HashMap<String, Slot>,
    /// Logical clock for LRU: bumped on every lookup.
    tick: u64,
}

struct Slot {
    cell: Arc<OnceCell<Ready>>,
    last_used: u64,
}

struct Ready {
    key: Arc<CertifiedKey>,
    /// After this, the entry is stale and gets minted again.
    refresh_at: Instant,
}

impl LeafCache {
    /// An empty cache that mints with `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, opts: CacheOptions) -> Self {
        Self {
            ca,
            opts,
            slots: Mutex::new(Slots::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            mints: AtomicU64::new(0),
            mint_nanos: AtomicU64::new(0),
        }
    }

    /// The leaf for `host` (a DNS name or IP literal), minted at most once however many
    /// callers ask at the same time.
    ///
    /// Minting is CPU work (well under a millisecond for P-256) and runs on the calling task.
    /// If the caller is cancelled mid-mint, a waiting caller takes over.
    pub async fn get(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        // Validate first, so junk never takes a slot.
        let host = LeafHost::parse(host)?;
        let cell = match self.lookup(host.canonical()) {
            Lookup::Hit(key) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(key);
            }
            Lookup::Miss(cell) => cell,
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let ready = cell.get_or_try_init(|| async { self.mint(&host) }).await?;
        Ok(Arc::clone(&ready.key))
    }

    /// Counters so far, plus the current number of entries.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            mints: self.mints.load(Ordering::Relaxed),
            entries: self.lock().by_host.len(),
        }
    }

    /// Cumulative seconds spent minting, failed attempts included (for `portcullis_cert_mint_seconds`).
    pub fn mint_seconds_total(&self) -> f64 {
        Duration::from_nanos(self.mint_nanos.load(Ordering::Relaxed)).as_secs_f64()
    }

    /// The CA this cache mints with.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// Under the lock: a fresh key, or the cell to mint into (or wait on).
    fn lookup(&self, host: String) -> Lookup {
        let now = Instant::now();
        let mut slots = self.lock();
        slots.tick += 1;
        let tick = slots.tick;

        if let Some(slot) = slots.by_host.get_mut(&host) {
            slot.last_used = tick;
            match slot.cell.get() {
                Some(ready) if now < ready.refresh_at => {
                    return Lookup::Hit(Arc::clone(&ready.key))
                }
                // Stale: a new, empty cell makes exactly one caller mint its replacement.
                Some(_) => slot.cell = Arc::new(OnceCell::new()),
                // Mint in flight (or the last attempt failed): join it.
                None => {}
            }
            return Lookup::Miss(Arc::clone(&slot.cell));
        }

        if slots.by_host.len() >= self.opts.capacity.max(1) {
            // O(n) scan, but only on a miss into a full cache, where the mint costs far more.
            let oldest = slots
                .by_host
                .iter()
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(host, _)| host.clone());
            if let Some(oldest) = oldest {
                slots.by_host.remove(&oldest);
            }
        }
        let cell = Arc::new(OnceCell::new());
        slots.by_host.insert(
            host,
            Slot {
                cell: Arc::clone(&cell),
                last_used: tick,
            },
        );
        Lookup::Miss(cell)
    }

    fn mint(&self, host: &LeafHost) -> Result<Ready, CaError> {
        let started = Instant::now();
        let minted = self
            .ca
            .mint_leaf(&host.canonical(), self.opts.ttl)
            .and_then(|leaf| {
                // Refresh at half the leaf's real lifetime (it may be capped by the CA's expiry).
                let lifetime = leaf
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                let key = leaf.into_certified_key()?;
                Ok((key, lifetime / 2))
            });
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.mint_nanos.fetch_add(spent, Ordering::Relaxed);

        match minted {
            Ok((key, fresh_for)) => {
                self.mints.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(host = %host.canonical(), ?fresh_for, "minted leaf certificate");
                Ok(Ready {
                    key,
                    refresh_at: Instant::now() + fresh_for,
                })
            }
            Err(err) => {
                tracing::warn!(host = %host.canonical(), error = %err, "minting leaf certificate failed");
                Err(err)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // No code path panics while holding the lock, and the map stays consistent even if one did.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCache")
            .field("opts", &self.opts)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

enum Lookup {
    Hit(Arc<CertifiedKey>),
    Miss(Arc<OnceCell<Ready>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn cache() -> Result<(tempfile::TempDir, LeafCache), Box<dyn std::error::Error + Send + Sync>> {
        let tmp = tempfile::tempdir()?;
        let ca = CertificateAuthority::init(tmp.path())?;
        let opts = CacheOptions {
            capacity: 4,
            ttl: Duration::from_secs(3600),
        };
        Ok((tmp, LeafCache::new(Arc::new(ca), opts)))
    }

    fn miss(lookup: Lookup) -> Result<Arc<OnceCell<Ready>>, &'static str> {
        match lookup {
            Lookup::Miss(cell) => Ok(cell),
            Lookup::Hit(_) => Err("expected a miss"),
        }
    }

    // The multi-threaded test in tests/cache.rs cannot force callers to overlap a mint;
    // this pins down the mechanism that makes overlapping callers share one mint.
    #[tokio::test]
    async fn lookup_during_a_mint_in_flight_joins_the_same_cell() -> TestResult {
        let (_tmp, cache) = cache()?;
        let first = miss(cache.lookup("example.com".into()))?;
        let second = miss(cache.lookup("example.com".into()))?;
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(cache.stats().entries, 1);
        Ok(())
    }

    #[tokio::test]
    async fn failed_mint_is_not_cached_and_the_next_caller_mints() -> TestResult {
        let (_tmp, cache) = cache()?;
        let cell = miss(cache.lookup("example.com".into()))?;
        let failed = cell
            .get_or_try_init(|| async { Err::<Ready, _>(CaError::Mint("injected".into())) })
            .await;
        assert!(matches!(failed, Err(CaError::Mint(_))));

        let retry = miss(cache.lookup("example.com".into()))?;
        assert!(Arc::ptr_eq(&cell, &retry), "the empty slot is reused");
        assert!(!retry.initialized(), "the error was not stored");
        cache.get("example.com").await?;
        assert_eq!(cache.stats().mints, 1);
        Ok(())
    }
}
