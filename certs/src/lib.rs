//! Portcullis certificates: every piece of secret key material the proxy holds lives in
//! this crate.
//!
//! To read a client's HTTPS request, the proxy ends the client's TLS session itself. It
//! can only do that with a certificate for the requested host that the client trusts.
//! So Portcullis runs a small **local certificate authority** and mints a **leaf
//! certificate** for each host on demand. The agent host trusts the CA once, through
//! `SSL_CERT_FILE` and friends (SPEC §0, §2).
//!
//! # What lives here
//!
//! - [`CertificateAuthority`]: creates the CA (`ca.pem`, mode 0644, and `ca.key`, mode 0600)
//!   or loads it from its directory. It never overwrites an existing CA, and it refuses to
//!   load a key that group or others can read. The CA is ECDSA P-256, `CA:TRUE` with path
//!   length 0, and valid for ten years.
//! - [`CertificateAuthority::mint_leaf`]: one short-lived ECDSA P-256 leaf per host. It has
//!   a random serial, a single SAN equal to the host (an IP SAN for IP literals), EKU
//!   `serverAuth`, and the chain `[leaf, ca]`. Every leaf of a CA instance carries the
//!   same leaf key pair, made at start and kept only in memory, so a mint is one signature.
//!   [`MintedLeaf::into_certified_key`] turns it into what rustls serves.
//! - [`LeafCache`]: a bounded, single-flight cache in front of minting. When many
//!   connections open at once for a new host, exactly one certificate is minted and the
//!   others wait for it. Failures are never cached. Once an entry has used half of its
//!   lifetime it is minted again, so a client never gets a leaf that is about to expire.
//!   When the cache is full it evicts the least recently used host, in O(1). Mints run on
//!   tokio's blocking pool, a bounded number at a time.
//! - [`Vault`]: the provider-key vault (SPEC §9), one JSON file (mode 0600, written
//!   atomically) of per-tenant provider keys. Each entry is AES-256-GCM encrypted with its
//!   `tenant ‖ provider ‖ key_id ‖ version` as AAD, so it cannot be moved to another slot.
//!   An HMAC over the whole file catches deleted or re-activated entries, and a
//!   generation counter checked against a `<vault>.generation` sidecar catches an older
//!   copy restored in its place. [`Vault::open`] decrypts everything up front and fails
//!   closed. Subkeys come from the [`MasterKey`] (`PORTCULLIS_MASTER_KEY` or a key file)
//!   through HKDF-SHA256. [`Vault::get`] gives the proxy the newest active key of a
//!   route's `inject_key` slot; [`Vault::values`] feeds the exact-value scanner.
//! - [`sigv4::sign`]: AWS Signature Version 4, so the proxy can re-sign a Bedrock request
//!   with the AWS key pair from a vault slot (SPEC §9). [`bedrock_region`] reads the region
//!   from a Bedrock runtime host. Secret and derived keys stay in `Zeroizing` buffers.
//!
//! # Where it sits in a request
//!
//! In SPEC §3 step 4 the proxy answers `CONNECT` and reads the ClientHello. Then it calls
//! [`LeafCache::get`] with the CONNECT host and serves the returned
//! `Arc<rustls::sign::CertifiedKey>`. This crate opens no sockets. Its only async code is
//! the cache: the wait for a mint, and the hand-off of the mint to the blocking pool.
//!
//! ```no_run
//! # async fn demo() -> Result<(), portcullis_certs::CaError> {
//! use std::{path::Path, sync::Arc, time::Duration};
//! use portcullis_certs::{CacheOptions, CertificateAuthority, LeafCache};
//!
//! let (ca, created) = CertificateAuthority::load_or_init(Path::new(".portcullis/ca"))?;
//! if created {
//!     println!("new CA {}", ca.fingerprint_sha256());
//! }
//! let cache = LeafCache::new(
//!     Arc::new(ca),
//!     CacheOptions { capacity: 10_000, ttl: Duration::from_secs(24 * 3600), mint_workers: 0 },
//! );
//! let certified_key = cache.get("api.openai.com").await?;
//! # let _ = certified_key;
//! # Ok(()) }
//! ```
//!
//! Errors are the [`CaError`] enum for the CA and the [`VaultError`] enum for the vault.
//! Their messages say what to do next, for example "run `portcullis ca init`" or "run
//! `chmod 600 …`", and never contain key material.
#![forbid(unsafe_code)]

mod ca;
mod cache;
mod error;
mod host;
pub mod sigv4;
mod store;
pub mod vault;

pub use ca::{CertificateAuthority, MintedLeaf};
pub use cache::{CacheOptions, CacheStats, LeafCache};
pub use error::CaError;
pub use sigv4::{bedrock_region, sign, SignedHeaders, SigningRequest};
pub use vault::{
    EntryInfo, KeyId, MasterKey, Secret, SecretKind, Vault, VaultError, MASTER_KEY_ENV,
};
