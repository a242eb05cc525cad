//! The bounded, single-flight leaf cache.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fresh_ca, TestResult};
use portcullis_certs::{CaError, CacheOptions, CacheStats, LeafCache};
use tokio::sync::Barrier;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn cache(
    capacity: usize,
    ttl: Duration,
) -> Result<(tempfile::TempDir, LeafCache), Box<dyn std::error::Error + Send + Sync>> {
    let (tmp, ca) = fresh_ca()?;
    Ok((
        tmp,
        LeafCache::new(
            ca,
            CacheOptions {
                capacity,
                ttl,
                mint_workers: 0,
            },
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_first_requests_for_one_host_mint_exactly_one_certificate() -> TestResult
{
    let (_tmp, cache) = cache(16, DAY)?;
    let cache = Arc::new(cache);
    let barrier = Arc::new(Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = Arc::clone(&cache);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                cache.get("api.openai.com").await
            })
        })
        .collect();
    let mut keys = Vec::with_capacity(tasks.len());
    for task in tasks {
        keys.push(task.await??);
    }

    let stats = cache.stats();
    assert_eq!(stats.mints, 1, "{stats:?}");
    assert_eq!(stats.entries, 1);
    assert_eq!(stats.hits + stats.misses, 100);
    assert!(
        keys.iter().all(|key| Arc::ptr_eq(key, &keys[0])),
        "every caller got the same leaf"
    );
    assert!(cache.mint_seconds_total() > 0.0);
    Ok(())
}

#[tokio::test]
async fn repeated_requests_for_a_host_are_hits() -> TestResult {
    let (_tmp, cache) = cache(16, DAY)?;
    let first = cache.get("api.openai.com").await?;
    let second = cache.get("api.openai.com").await?;
    let folded = cache.get("API.OPENAI.COM.").await?;
    assert!(Arc::ptr_eq(&first, &second));
    assert!(
        Arc::ptr_eq(&first, &folded),
        "the key is the canonical host"
    );
    assert_eq!(
        cache.stats(),
        CacheStats {
            hits: 2,
            misses: 1,
            mints: 1,
            entries: 1
        }
    );
    Ok(())
}

#[tokio::test]
async fn cache_is_bounded_by_capacity() -> TestResult {
    let (_tmp, cache) = cache(3, DAY)?;
    for i in 0..10 {
        cache.get(&format!("host{i}.example.com")).await?;
        assert!(cache.stats().entries <= 3);
    }
    let stats = cache.stats();
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.mints, 10);

    // host0 was evicted long ago, so asking again mints again.
    cache.get("host0.example.com").await?;
    assert_eq!(cache.stats().mints, 11);
    assert_eq!(cache.stats().entries, 3);
    Ok(())
}

#[tokio::test]
async fn cache_evicts_the_least_recently_used_host() -> TestResult {
    let (_tmp, cache) = cache(2, DAY)?;
    let a = cache.get("a.example.com").await?;
    cache.get("b.example.com").await?;
    cache.get("a.example.com").await?; // a is now more recent than b
    cache.get("c.example.com").await?; // evicts b
    let a_again = cache.get("a.example.com").await?;
    assert!(Arc::ptr_eq(&a, &a_again), "a survived");
    assert_eq!(cache.stats().mints, 3);
    cache.get("b.example.com").await?;
    assert_eq!(cache.stats().mints, 4, "b was evicted and minted again");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_reminted() -> TestResult {
    let ttl = Duration::from_secs(60);
    let (_tmp, cache) = cache(16, ttl)?;
    let first = cache.get("api.openai.com").await?;

    // Well before half the ttl: still served from the cache.
    tokio::time::advance(Duration::from_secs(25)).await;
    let still = cache.get("api.openai.com").await?;
    assert!(Arc::ptr_eq(&first, &still));
    assert_eq!(cache.stats().mints, 1);

    // Past half the ttl: dropped and minted again.
    tokio::time::advance(Duration::from_secs(6)).await;
    let fresh = cache.get("api.openai.com").await?;
    assert!(!Arc::ptr_eq(&first, &fresh));
    assert_eq!(cache.stats().mints, 2);
    assert_eq!(cache.stats().entries, 1);

    let again = cache.get("api.openai.com").await?;
    assert!(Arc::ptr_eq(&fresh, &again));
    Ok(())
}

#[tokio::test]
async fn tiny_ttl_entries_are_reminted_on_next_request() -> TestResult {
    let (_tmp, cache) = cache(16, Duration::from_millis(1))?;
    let first = cache.get("api.openai.com").await?;
    let second = cache.get("api.openai.com").await?;
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(cache.stats().mints, 2);
    Ok(())
}

#[tokio::test]
async fn invalid_hosts_give_invalid_host_and_take_no_slot() -> TestResult {
    let (_tmp, cache) = cache(16, DAY)?;
    for bad in ["", "a b", "exa mple.com", "*.example.com", "bad\r\nhost"] {
        match cache.get(bad).await {
            Err(CaError::InvalidHost { .. }) => {}
            other => return Err(format!("{bad:?}: expected InvalidHost, got {other:?}").into()),
        }
    }
    assert_eq!(cache.stats(), CacheStats::default());
    Ok(())
}

#[tokio::test]
async fn served_leaf_names_the_requested_host() -> TestResult {
    let (_tmp, cache) = cache(16, DAY)?;
    let key = cache.get("generativelanguage.googleapis.com").await?;
    assert_eq!(key.cert.len(), 2);
    let (_, leaf) = x509_parser::parse_x509_certificate(&key.cert[0])?;
    let san = leaf.subject_alternative_name()?.ok_or("no SAN")?.value;
    assert_eq!(
        san.general_names,
        vec![x509_parser::extensions::GeneralName::DNSName(
            "generativelanguage.googleapis.com"
        )]
    );
    assert_eq!(&key.cert[1], cache.ca().cert_der());
    Ok(())
}

#[test]
fn cache_and_ca_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LeafCache>();
    assert_send_sync::<portcullis_certs::CertificateAuthority>();
    assert_send_sync::<CaError>();
}
