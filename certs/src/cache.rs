//! The bounded, single-flight leaf cache in front of [`CertificateAuthority::mint_leaf`].
//!
//! Each host has a slot holding a `tokio::sync::OnceCell`. The first request for a host
//! creates the slot and mints the leaf. Requests that arrive meanwhile wait on the same cell,
//! so a burst of N connections mints one certificate. If minting fails, the cell stays
//! empty: the error goes to the caller and the next waiter tries again, so errors are not
//! cached. The slots are behind a `std::sync::Mutex` that is held only for the lookup, never
//! across an await or a mint.
//!
//! The signature is CPU work, so it runs on tokio's blocking pool, never on an async
//! worker, and at most `mint_workers` mints run at once: a flood of new hosts queues
//! instead of taking every core. Slots sit in a least-recently-used list threaded through
//! a slab, so a hit, an insert and an eviction are each O(1), whatever the capacity.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use crate::host::LeafHost;
use crate::{CaError, CertificateAuthority};

/// How many leaves to keep, how long each is valid, and how many may be minted at once.
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    /// Most hosts kept at once. A capacity of 0 is treated as 1.
    pub capacity: usize,
    /// Validity of each minted leaf. An entry is dropped and minted again once it is past
    /// half of this, so a served leaf always has plenty of life left.
    pub ttl: Duration,
    /// Mints that may run at once on the blocking pool; more wait their turn. 0 means one
    /// per core.
    pub mint_workers: usize,
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
    slots: Mutex<Lru>,
    minting: Arc<Semaphore>,
    hits: AtomicU64,
    misses: AtomicU64,
    mints: AtomicU64,
    mint_nanos: AtomicU64,
    /// Where and how many at once the mints ran, for the tests.
    #[cfg(test)]
    probe: Arc<tests::Probe>,
}

type Cell = Arc<OnceCell<Ready>>;

struct Ready {
    key: Arc<CertifiedKey>,
    /// After this, the entry is stale and gets minted again.
    refresh_at: Instant,
}

impl Ready {
    fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

impl LeafCache {
    /// An empty cache that mints with `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, opts: CacheOptions) -> Self {
        let workers = match opts.mint_workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Self {
            ca,
            opts,
            slots: Mutex::new(Lru::new(opts.capacity.max(1))),
            minting: Arc::new(Semaphore::new(workers)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            mints: AtomicU64::new(0),
            mint_nanos: AtomicU64::new(0),
            #[cfg(test)]
            probe: Arc::default(),
        }
    }

    /// The leaf for `host` (a DNS name or IP literal), minted at most once however many
    /// callers ask at the same time.
    ///
    /// The mint runs on the blocking pool (so this needs a tokio runtime). If the caller is
    /// cancelled mid-mint, a waiting caller takes over.
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
        let ready = cell.get_or_try_init(|| self.mint(host)).await?;
        Ok(Arc::clone(&ready.key))
    }

    /// Whether a fresh leaf for `host` is ready, without minting or changing the LRU order.
    pub fn contains(&self, host: &str) -> bool {
        let Ok(host) = LeafHost::parse(host) else {
            return false;
        };
        let slots = self.lock();
        slots
            .peek(&host.canonical())
            .and_then(|cell| cell.get())
            .is_some_and(Ready::fresh)
    }

    /// Counters so far, plus the current number of entries.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            mints: self.mints.load(Ordering::Relaxed),
            entries: self.lock().len(),
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
        let mut slots = self.lock();
        if let Some(cell) = slots.touch(&host) {
            match cell.get() {
                Some(ready) if ready.fresh() => return Lookup::Hit(Arc::clone(&ready.key)),
                // Stale: a new, empty cell makes exactly one caller mint its replacement.
                Some(_) => *cell = Arc::new(OnceCell::new()),
                // Mint in flight (or the last attempt failed): join it.
                None => {}
            }
            return Lookup::Miss(Arc::clone(cell));
        }
        let cell: Cell = Arc::new(OnceCell::new());
        slots.insert(host.into(), Arc::clone(&cell));
        Lookup::Miss(cell)
    }

    async fn mint(&self, host: LeafHost) -> Result<Ready, CaError> {
        let canonical = host.canonical();
        // The semaphore is never closed; if it were, the mint fails (closed) instead of panicking.
        let permit = Arc::clone(&self.minting)
            .acquire_owned()
            .await
            .map_err(|_| CaError::Mint("the minting pool is closed".into()))?;
        let (ca, ttl, name) = (Arc::clone(&self.ca), self.opts.ttl, canonical.clone());
        #[cfg(test)]
        let probe = Arc::clone(&self.probe);
        // Off the async workers. The permit moves in, so a cancelled caller cannot let more
        // than `mint_workers` signatures run at once.
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            #[cfg(test)]
            let _running = probe.enter();
            let started = std::time::Instant::now();
            let minted = ca.mint_leaf(&name, ttl);
            (minted, started.elapsed())
        });
        let (minted, spent) = job
            .await
            .map_err(|err| CaError::Mint(format!("the mint task did not finish: {err}")))?;
        let spent = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.mint_nanos.fetch_add(spent, Ordering::Relaxed);

        match minted {
            Ok(leaf) => {
                // Refresh at half the leaf's real lifetime (it may be capped by the CA's expiry).
                let lifetime = leaf
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                let fresh_for = lifetime / 2;
                self.mints.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(host = %canonical, ?fresh_for, "minted leaf certificate");
                Ok(Ready {
                    key: leaf.into_certified_key(),
                    refresh_at: Instant::now() + fresh_for,
                })
            }
            Err(err) => {
                tracing::warn!(host = %canonical, error = %err, "minting leaf certificate failed");
                Err(err)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // No code path panics while holding the lock, and the list stays consistent even if one did.
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
    Miss(Cell),
}

/// No node.
const NIL: usize = usize::MAX;

/// A bounded LRU map from host to cell: a hash index into a slab of nodes, which are
/// linked most recent first. Nothing is ever removed except by eviction, which reuses
/// the evicted node's place, so the slab needs no free list.
struct Lru {
    capacity: usize,
    index: HashMap<Arc<str>, usize>,
    nodes: Vec<Node>,
    /// Most recently used.
    head: usize,
    /// Least recently used: the next to go.
    tail: usize,
}

struct Node {
    host: Arc<str>,
    cell: Cell,
    prev: usize,
    next: usize,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            index: HashMap::new(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// The cell for `host`, made the most recently used.
    fn touch(&mut self, host: &str) -> Option<&mut Cell> {
        let at = *self.index.get(host)?;
        self.unlink(at);
        self.push_front(at);
        Some(&mut self.nodes[at].cell)
    }

    /// The cell for `host`, leaving the order alone.
    fn peek(&self, host: &str) -> Option<&Cell> {
        self.index.get(host).map(|&at| &self.nodes[at].cell)
    }

    /// Add a host that is not in the list yet. When full, the least recently used host
    /// makes room, and is returned.
    fn insert(&mut self, host: Arc<str>, cell: Cell) -> Option<Arc<str>> {
        if self.nodes.len() < self.capacity {
            let at = self.nodes.len();
            self.nodes.push(Node {
                host: Arc::clone(&host),
                cell,
                prev: NIL,
                next: NIL,
            });
            self.index.insert(host, at);
            self.push_front(at);
            return None;
        }
        let at = self.tail;
        self.unlink(at);
        let node = &mut self.nodes[at];
        let evicted = std::mem::replace(&mut node.host, Arc::clone(&host));
        node.cell = cell;
        self.index.remove(&evicted);
        self.index.insert(host, at);
        self.push_front(at);
        Some(evicted)
    }

    fn unlink(&mut self, at: usize) {
        let (prev, next) = (self.nodes[at].prev, self.nodes[at].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
    }

    fn push_front(&mut self, at: usize) {
        let old = self.head;
        self.nodes[at].prev = NIL;
        self.nodes[at].next = old;
        match old {
            NIL => self.tail = at,
            h => self.nodes[h].prev = at,
        }
        self.head = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread::ThreadId;

    /// Records each mint's thread and the most mints running at once. Each mint is held
    /// for a while, so that unbounded mints would overlap.
    #[derive(Default)]
    pub(super) struct Probe {
        threads: Mutex<Vec<ThreadId>>,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    pub(super) struct Running<'a>(&'a Probe);

    impl Probe {
        pub(super) fn enter(&self) -> Running<'_> {
            self.threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(std::thread::current().id());
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            Running(self)
        }
    }

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn cache() -> Result<(tempfile::TempDir, LeafCache), Box<dyn std::error::Error + Send + Sync>> {
        cache_with(4, 0)
    }

    fn cache_with(
        capacity: usize,
        mint_workers: usize,
    ) -> Result<(tempfile::TempDir, LeafCache), Box<dyn std::error::Error + Send + Sync>> {
        let tmp = tempfile::tempdir()?;
        let ca = CertificateAuthority::init(tmp.path())?;
        let opts = CacheOptions {
            capacity,
            ttl: Duration::from_secs(3600),
            mint_workers,
        };
        Ok((tmp, LeafCache::new(Arc::new(ca), opts)))
    }

    // A current-thread runtime has one async worker: the test's own thread.
    #[tokio::test(flavor = "current_thread")]
    async fn mints_run_on_the_blocking_pool_not_on_the_async_worker() -> TestResult {
        let (_tmp, cache) = cache()?;
        cache.get("a.example.com").await?;
        cache.get("b.example.com").await?;
        let threads = cache.probe.threads.lock().map_err(|_| "poisoned")?.clone();
        assert_eq!(threads.len(), 2);
        assert!(
            threads.iter().all(|t| *t != std::thread::current().id()),
            "a mint ran on the async worker"
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_than_mint_workers_mints_run_at_once() -> TestResult {
        let (_tmp, cache) = cache_with(64, 2)?;
        let cache = Arc::new(cache);
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.get(&format!("h{i}.example.com")).await })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        assert_eq!(cache.stats().mints, 12);
        assert_eq!(
            cache.probe.most.load(Ordering::SeqCst),
            2,
            "two workers, both used"
        );
        Ok(())
    }

    fn miss(lookup: Lookup) -> Result<Cell, &'static str> {
        match lookup {
            Lookup::Miss(cell) => Ok(cell),
            Lookup::Hit(_) => Err("expected a miss"),
        }
    }

    /// Hosts from most to least recently used, walking the links (and checking them).
    fn order(lru: &Lru) -> Vec<String> {
        let mut out = Vec::new();
        let (mut at, mut prev) = (lru.head, NIL);
        while at != NIL {
            assert_eq!(
                lru.nodes[at].prev, prev,
                "back link of {}",
                lru.nodes[at].host
            );
            assert_eq!(lru.index.get(&lru.nodes[at].host), Some(&at));
            out.push(lru.nodes[at].host.to_string());
            (prev, at) = (at, lru.nodes[at].next);
        }
        assert_eq!(lru.tail, prev);
        assert_eq!(out.len(), lru.len());
        out
    }

    fn cell() -> Cell {
        Arc::new(OnceCell::new())
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

    #[test]
    fn lru_evicts_the_least_recently_touched_host_and_keeps_its_capacity() {
        let mut lru = Lru::new(3);
        for host in ["a", "b", "c"] {
            assert_eq!(lru.insert(host.into(), cell()), None);
        }
        assert_eq!(order(&lru), ["c", "b", "a"]);
        assert!(lru.touch("a").is_some());
        assert!(lru.touch("b").is_some());
        assert_eq!(order(&lru), ["b", "a", "c"]);
        assert_eq!(lru.insert("d".into(), cell()).as_deref(), Some("c"));
        assert_eq!(order(&lru), ["d", "b", "a"]);
        assert!(lru.touch("c").is_none(), "c is gone");
        // Peeking does not save a host from eviction.
        assert!(lru.peek("a").is_some());
        assert_eq!(lru.insert("e".into(), cell()).as_deref(), Some("a"));
        assert_eq!(order(&lru), ["e", "d", "b"]);
        assert_eq!(lru.nodes.len(), 3, "evictions reuse the slab");
    }

    #[test]
    fn lru_of_one_replaces_its_only_host() {
        let mut lru = Lru::new(0);
        assert_eq!(lru.insert("a".into(), cell()), None);
        assert!(lru.touch("a").is_some());
        assert_eq!(lru.insert("b".into(), cell()).as_deref(), Some("a"));
        assert_eq!(order(&lru), ["b"]);
    }

    /// A scan for the oldest entry (what this cache did before) makes each eviction cost
    /// the capacity, so the evicting half below would take thousands of times the filling
    /// half. With the list, both halves cost the same per host.
    #[test]
    fn eviction_costs_no_more_than_an_insert_at_any_capacity() {
        const N: usize = 20_000;
        let cache_like = |lru: &mut Lru, from: usize| {
            let started = std::time::Instant::now();
            for i in from..from + N {
                let host = format!("host{i}.example.com");
                if lru.touch(&host).is_none() {
                    lru.insert(host.into(), cell());
                }
            }
            started.elapsed()
        };
        let mut lru = Lru::new(N);
        let fill = cache_like(&mut lru, 0);
        let evict = cache_like(&mut lru, N);
        assert_eq!(lru.len(), N);
        assert!(
            evict < fill * 20 + Duration::from_millis(200),
            "evicting {N} hosts took {evict:?}, filling took {fill:?}"
        );
        assert_eq!(
            order(&lru).last().map(String::as_str),
            Some("host20000.example.com")
        );
    }
}
