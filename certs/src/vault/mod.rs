//! The provider-key vault (SPEC §9): one JSON file of AES-256-GCM encrypted provider keys,
//! per tenant, with a whole-file HMAC and a generation counter.
//!
//! # File format (version 1)
//!
//! ```json
//! { "version": 1, "generation": 7,
//!   "entries": [ { "tenant": "acme", "provider": "openai", "key_id": "prod", "version": 2,
//!                  "active": true, "nonce": "<b64, 12 bytes>", "ciphertext": "<b64>" } ],
//!   "hmac": "<hex HMAC-SHA256>" }
//! ```
//!
//! - Keys: HKDF-SHA256 of the [`MasterKey`] gives one subkey for entry encryption, one for
//!   the file HMAC (and the sidecar), and [`MasterKey::webhook_subkey`] for webhook secrets.
//! - Entries: AES-256-GCM with a fresh random 96-bit nonce on every write of the entry.
//!   The AAD is `tenant ‖ provider ‖ key_id ‖ version`, each as a big-endian `u32` length
//!   and its bytes, so a ciphertext moved to another tenant, slot, label or version fails
//!   to decrypt. The plaintext is a small length-prefixed encoding of the [`Secret`].
//! - HMAC: over a domain tag and the compact JSON of `{version, generation, entries}`,
//!   rebuilt from the parsed values. It catches deleted, added, re-activated or edited
//!   entries. It is checked (in constant time) before anything is decrypted.
//! - `generation` goes up by one on every save. The file is written atomically (temporary
//!   file in the same directory, mode 0600, fsync, rename, fsync of the directory).
//!
//! # Rollback
//!
//! The HMAC cannot tell an old file from a new one: both are genuine. So the highest
//! generation this host has seen is kept in a sidecar, `<vault path>.generation` (mode 0600,
//! HMAC'd with the same subkey), updated on every save and whenever `open` sees a higher
//! generation. [`Vault::open`] refuses a file older than the sidecar with
//! [`VaultError::RolledBack`]: that is an attacker (or a careless restore) bringing back a
//! removed key. A **missing sidecar is accepted** (the first open on a host, or after a
//! migration) and is then written; so the sidecar must be kept with the vault, and
//! deleting it is what an operator does on purpose to accept an older file.
//!
//! # Slots and lookup
//!
//! A slot is `(tenant, provider)`; the provider is what a route names in `inject_key`
//! (for example `"openai"`). `key_id` is a label inside the slot (`"prod"`, `"2025-q3"`).
//! Versions are numbered per slot: each [`Vault::put`] gets the slot's highest version
//! plus one, whatever its label. [`Vault::get`] returns the active entry with the highest
//! version, so rotating a key is `put` of the new one, then `rm` of the old label.
//! Older versions stay active (and usable as a fall-back) until they are removed.
//!
//! [`Vault::rm`] marks every version of `(tenant, provider, key_id)` inactive rather than
//! deleting it: the version numbers are never reused (so a ledger `key_id` such as
//! `openai/prod@v3` always means one key), and the removed key stays in
//! [`Vault::values`], so the exact-value scanner still blocks it if it leaks. Bringing an
//! inactive entry back means an older file, which the HMAC and the sidecar refuse.
//!
//! Mutations are meant for one writer at a time (the CLI); the proxy only reads.

mod error;
mod format;
mod fsio;
mod key;
mod secret;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use error::VaultError;
pub use key::{MasterKey, MASTER_KEY_ENV};
pub use secret::{EntryInfo, KeyId, Secret, SecretKind};

use format::{FileKeys, RawEntry};

/// A vault file larger than this is refused rather than read.
pub(crate) const MAX_VAULT_FILE_BYTES: u64 = 64 << 20;
const MAX_SIDECAR_BYTES: u64 = 4096;
const MAX_NAME_LEN: usize = 64;

/// An open, fully decrypted vault.
///
/// It holds the derived subkeys, not the master key. `Debug` shows the path and counts only.
pub struct Vault {
    path: PathBuf,
    sidecar: PathBuf,
    keys: FileKeys,
    generation: u64,
    entries: Vec<Entry>,
    /// tenant → provider → index of the newest active entry of that slot.
    newest: HashMap<String, HashMap<String, usize>>,
}

struct Entry {
    tenant: String,
    provider: String,
    key_id: String,
    version: u32,
    active: bool,
    nonce: [u8; format::NONCE_LEN],
    ciphertext: Vec<u8>,
    secret: Secret,
}

impl Vault {
    /// Create a new, empty vault at `path` (generation 1) and its sidecar.
    ///
    /// Refuses with [`VaultError::AlreadyExists`] if the vault file or its sidecar exists:
    /// a sidecar without a vault means a vault was here, and starting over at generation 1
    /// would look like a rollback.
    pub fn create(path: &Path, key: &MasterKey) -> Result<Self, VaultError> {
        let sidecar = Self::sidecar_path(path);
        for existing in [path, &sidecar] {
            if fsio::exists(existing)? {
                return Err(VaultError::AlreadyExists {
                    path: existing.into(),
                });
            }
        }
        let mut vault = Self {
            path: path.into(),
            sidecar,
            keys: FileKeys::new(key),
            generation: 0,
            entries: Vec::new(),
            newest: HashMap::new(),
        };
        vault.commit(|_| {})?;
        tracing::info!(path = %path.display(), "created key vault");
        Ok(vault)
    }

    /// Open the vault at `path`: check the HMAC, check the generation against the sidecar,
    /// then decrypt every entry. Any failure is an error; nothing is half-opened.
    ///
    /// A missing sidecar is accepted (first open on this host) and written; so is a sidecar
    /// behind the file (a crash between the two writes of a save), which is raised. Either
    /// write needs the vault's directory to be writable, and its failure is an error.
    pub fn open(path: &Path, key: &MasterKey) -> Result<Self, VaultError> {
        let keys = FileKeys::new(key);
        let text = fsio::read_text(path, MAX_VAULT_FILE_BYTES, false)?
            .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
        let raw = format::parse_file(path, &text)?;
        format::verify_file(path, &keys, &raw)?;

        let sidecar = Self::sidecar_path(path);
        let seen = match fsio::read_text(&sidecar, MAX_SIDECAR_BYTES, false)? {
            Some(text) => Some(format::read_sidecar(&sidecar, &keys, &text)?),
            None => None,
        };
        if let Some(seen) = seen {
            if raw.generation < seen {
                return Err(VaultError::RolledBack {
                    path: path.into(),
                    found: raw.generation,
                    expected_at_least: seen,
                });
            }
        }

        let entries = decrypt_entries(path, &keys, raw.entries)?;

        let mut vault = Self {
            path: path.into(),
            sidecar,
            keys,
            generation: raw.generation,
            entries,
            newest: HashMap::new(),
        };
        vault.reindex();
        if seen.is_none_or(|seen| seen < vault.generation) {
            vault.write_sidecar()?;
        }
        Ok(vault)
    }

    /// `<vault path>.generation`: where the highest generation seen is kept.
    pub fn sidecar_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".generation");
        PathBuf::from(name)
    }

    /// The vault file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The generation of the file as last read or written.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Store `secret` in slot `(tenant, provider)` under label `key_id`, and save.
    /// Returns its version: the slot's highest version plus one. Older versions stay.
    pub fn put(
        &mut self,
        tenant: &str,
        provider: &str,
        key_id: &str,
        secret: Secret,
    ) -> Result<u32, VaultError> {
        check_names(tenant, provider, key_id)?;
        secret
            .check()
            .map_err(|reason| VaultError::InvalidSecret { reason })?;
        let highest = self
            .entries
            .iter()
            .filter(|e| e.tenant == tenant && e.provider == provider)
            .map(|e| e.version)
            .max()
            .unwrap_or(0);
        let version = highest
            .checked_add(1)
            .ok_or_else(|| VaultError::VersionsExhausted {
                tenant: tenant.into(),
                provider: provider.into(),
            })?;
        let aad = format::aad(tenant, provider, key_id, version);
        let (nonce, ciphertext) = format::seal(&self.keys, &aad, &secret)?;
        self.entries.push(Entry {
            tenant: tenant.into(),
            provider: provider.into(),
            key_id: key_id.into(),
            version,
            active: true,
            nonce,
            ciphertext,
            secret,
        });
        self.commit(|vault| {
            vault.entries.pop();
        })?;
        Ok(version)
    }

    /// Mark every version of `(tenant, provider, key_id)` inactive, and save. Returns how
    /// many versions were active. Unknown keys give [`VaultError::NoSuchKey`].
    pub fn rm(&mut self, tenant: &str, provider: &str, key_id: &str) -> Result<usize, VaultError> {
        check_names(tenant, provider, key_id)?;
        let matching: Vec<usize> = (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                e.tenant == tenant && e.provider == provider && e.key_id == key_id
            })
            .collect();
        if matching.is_empty() {
            return Err(VaultError::NoSuchKey {
                tenant: tenant.into(),
                provider: provider.into(),
                key_id: key_id.into(),
            });
        }
        let deactivated: Vec<usize> = matching
            .into_iter()
            .filter(|&i| self.entries[i].active)
            .collect();
        if deactivated.is_empty() {
            return Ok(0);
        }
        for &i in &deactivated {
            self.entries[i].active = false;
        }
        let count = deactivated.len();
        self.commit(move |vault| {
            for i in deactivated {
                vault.entries[i].active = true;
            }
        })?;
        Ok(count)
    }

    /// Re-encrypt every entry under `new` with fresh nonces, re-HMAC the file, bump the
    /// generation and rewrite the sidecar. Afterwards only `new` opens the vault.
    pub fn rotate_master(&mut self, new: &MasterKey) -> Result<(), VaultError> {
        let new_keys = FileKeys::new(new);
        let mut sealed = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let aad = format::aad(&e.tenant, &e.provider, &e.key_id, e.version);
            sealed.push(format::seal(&new_keys, &aad, &e.secret)?);
        }
        let old_keys = std::mem::replace(&mut self.keys, new_keys);
        let old_sealed: Vec<_> = self
            .entries
            .iter_mut()
            .zip(sealed)
            .map(|(e, (nonce, ciphertext))| {
                (
                    std::mem::replace(&mut e.nonce, nonce),
                    std::mem::replace(&mut e.ciphertext, ciphertext),
                )
            })
            .collect();
        self.commit(move |vault| {
            vault.keys = old_keys;
            for (e, (nonce, ciphertext)) in vault.entries.iter_mut().zip(old_sealed) {
                e.nonce = nonce;
                e.ciphertext = ciphertext;
            }
        })?;
        tracing::info!(path = %self.path.display(), "re-encrypted the key vault under a new master key");
        Ok(())
    }

    /// Every entry, sorted by tenant, provider, key id and version. Secrets show as
    /// their last four characters only.
    pub fn list(&self) -> Vec<EntryInfo> {
        let mut out: Vec<EntryInfo> = self
            .entries
            .iter()
            .map(|e| EntryInfo {
                tenant: e.tenant.clone(),
                provider: e.provider.clone(),
                key_id: e.key_id.clone(),
                version: e.version,
                active: e.active,
                kind: e.secret.kind(),
                last4: e.secret.last4(),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.tenant, &a.provider, &a.key_id, a.version).cmp(&(
                &b.tenant,
                &b.provider,
                &b.key_id,
                b.version,
            ))
        });
        out
    }

    /// The key to inject for `tenant` on a route with `inject_key = provider_slot`: the
    /// active entry of slot `(tenant, provider_slot)` with the highest version.
    pub fn get(&self, tenant: &str, provider_slot: &str) -> Option<(&Secret, KeyId)> {
        let &i = self.newest.get(tenant)?.get(provider_slot)?;
        let e = &self.entries[i];
        let id = KeyId {
            provider: e.provider.clone(),
            key_id: e.key_id.clone(),
            version: e.version,
        };
        Some((&e.secret, id))
    }

    /// `(tenant, provider, key_id, value)` for every secret value in the vault, active or
    /// not: API keys, AWS secret access keys and session tokens. This feeds the proxy's
    /// exact-value scanner (SPEC §6 b).
    pub fn values(&self) -> impl Iterator<Item = (&str, &str, &str, &[u8])> {
        self.entries.iter().flat_map(|e| {
            e.secret.secret_values().map(move |value| {
                (
                    e.tenant.as_str(),
                    e.provider.as_str(),
                    e.key_id.as_str(),
                    value,
                )
            })
        })
    }

    /// Save the current entries as the next generation, then record it in the sidecar.
    ///
    /// If the vault file cannot be written, `undo` puts the in-memory state back, so it
    /// matches the file again. If only the sidecar fails, the change is saved and kept;
    /// the error says so through its path, and the next `open` repairs the sidecar.
    fn commit(&mut self, undo: impl FnOnce(&mut Self)) -> Result<(), VaultError> {
        let Some(next) = self.generation.checked_add(1) else {
            undo(self);
            return Err(VaultError::malformed(
                &self.path,
                "the generation counter is exhausted",
            ));
        };
        let raws: Vec<RawEntry> = self.entries.iter().map(Entry::raw).collect();
        let bytes = format::write_file(&self.keys, next, raws);
        if let Err(err) = fsio::replace(&self.path, &bytes) {
            undo(self);
            return Err(err);
        }
        self.generation = next;
        self.reindex();
        self.write_sidecar()
    }

    fn write_sidecar(&self) -> Result<(), VaultError> {
        fsio::replace(
            &self.sidecar,
            &format::write_sidecar(&self.keys, self.generation),
        )
    }

    fn reindex(&mut self) {
        self.newest.clear();
        for (i, e) in self.entries.iter().enumerate() {
            if !e.active {
                continue;
            }
            let slot = self
                .newest
                .entry(e.tenant.clone())
                .or_default()
                .entry(e.provider.clone())
                .or_insert(i);
            if self.entries[*slot].version < e.version {
                *slot = i;
            }
        }
    }
}

impl Entry {
    fn raw(&self) -> RawEntry {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        RawEntry {
            tenant: self.tenant.clone(),
            provider: self.provider.clone(),
            key_id: self.key_id.clone(),
            version: self.version,
            active: self.active,
            nonce: STANDARD.encode(self.nonce),
            ciphertext: STANDARD.encode(&self.ciphertext),
        }
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("generation", &self.generation)
            .field("entries", &self.entries.len())
            .field("active", &self.entries.iter().filter(|e| e.active).count())
            .finish_non_exhaustive()
    }
}

/// Check and decrypt every entry of a file whose HMAC has been verified: valid names, one
/// entry per slot version, and an AEAD that opens. The first bad entry fails the whole file.
fn decrypt_entries(
    path: &Path,
    keys: &FileKeys,
    raw_entries: Vec<RawEntry>,
) -> Result<Vec<Entry>, VaultError> {
    let mut entries = Vec::with_capacity(raw_entries.len());
    for raw_entry in raw_entries {
        let bad = |reason| VaultError::BadEntry {
            path: path.into(),
            tenant: raw_entry.tenant.clone(),
            provider: raw_entry.provider.clone(),
            key_id: raw_entry.key_id.clone(),
            version: raw_entry.version,
            reason,
        };
        if check_names(&raw_entry.tenant, &raw_entry.provider, &raw_entry.key_id).is_err() {
            return Err(bad("its tenant, provider or key id is not a valid name"));
        }
        let duplicate = entries.iter().any(|e: &Entry| {
            e.tenant == raw_entry.tenant
                && e.provider == raw_entry.provider
                && e.version == raw_entry.version
        });
        if duplicate {
            return Err(bad("another entry of the slot has the same version"));
        }
        let (nonce, ciphertext, secret) = format::unseal(keys, &raw_entry).map_err(bad)?;
        entries.push(Entry {
            tenant: raw_entry.tenant,
            provider: raw_entry.provider,
            key_id: raw_entry.key_id,
            version: raw_entry.version,
            active: raw_entry.active,
            nonce,
            ciphertext,
            secret,
        });
    }
    Ok(entries)
}

/// Names are 1 to 64 characters of `[A-Za-z0-9._-]`: safe in file names, log lines and
/// the `provider/key_id@vN` form, and never mistaken for each other.
fn check_names(tenant: &str, provider: &str, key_id: &str) -> Result<(), VaultError> {
    for (field, name) in [
        ("tenant", tenant),
        ("provider", provider),
        ("key id", key_id),
    ] {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(VaultError::InvalidName {
                field,
                len: name.len(),
            });
        }
    }
    Ok(())
}

/// Helpers for tests that edit a vault file by hand. Not part of the supported API.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;

    use super::{MasterKey, VaultError};

    /// Recompute the file HMAC of the vault at `path` with `key`, so that an edited entry
    /// passes the HMAC and only the per-entry AEAD check can catch the edit.
    pub fn reseal(path: &Path, key: &MasterKey) -> Result<(), VaultError> {
        super::format::reseal(path, key)
    }
}

/// Entry points for the fuzz targets (`fuzz/`) and the property tests. Not part of the
/// supported API.
///
/// [`Vault::open`] reads two files and writes the sidecar, which is too slow and too
/// stateful for a fuzzer. These run the same parse, HMAC check and decryption on text in
/// memory, and give the fuzzer the secret codec, so it can check round trips.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use super::format::{self, FileKeys, RawEntry};
    use super::{decrypt_entries, MasterKey, Secret, VaultError};

    /// One decrypted entry.
    #[derive(Debug, PartialEq)]
    pub struct OpenedEntry {
        pub tenant: String,
        pub provider: String,
        pub key_id: String,
        pub version: u32,
        pub active: bool,
        pub secret: Secret,
    }

    /// What [`super::Vault::open`] does with the file's text, without the sidecar: parse,
    /// check the HMAC, decrypt every entry. With `reseal` the HMAC is first recomputed
    /// with `key`, as only a holder of the key could, so that an edited file gets past
    /// the HMAC and only the per-entry checks can refuse it.
    pub fn open_text(
        text: &str,
        key: &MasterKey,
        reseal: bool,
    ) -> Result<Vec<OpenedEntry>, VaultError> {
        let path = Path::new("fuzz-vault.json");
        let keys = FileKeys::new(key);
        let mut raw = format::parse_file(path, text)?;
        if reseal {
            raw.hmac = format::file_hmac_hex(&keys, raw.version, raw.generation, &raw.entries);
        }
        format::verify_file(path, &keys, &raw)?;
        let entries = decrypt_entries(path, &keys, raw.entries)?;
        Ok(entries
            .into_iter()
            .map(|e| OpenedEntry {
                tenant: e.tenant,
                provider: e.provider,
                key_id: e.key_id,
                version: e.version,
                active: e.active,
                secret: e.secret,
            })
            .collect())
    }

    /// A complete vault file of `entries` (each freshly sealed), as [`super::Vault`] saves it.
    pub fn write_text(
        key: &MasterKey,
        generation: u64,
        entries: &[OpenedEntry],
    ) -> Result<Vec<u8>, VaultError> {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        let keys = FileKeys::new(key);
        let mut raws = Vec::with_capacity(entries.len());
        for e in entries {
            let aad = format::aad(&e.tenant, &e.provider, &e.key_id, e.version);
            let (nonce, ciphertext) = format::seal(&keys, &aad, &e.secret)?;
            raws.push(RawEntry {
                tenant: e.tenant.clone(),
                provider: e.provider.clone(),
                key_id: e.key_id.clone(),
                version: e.version,
                active: e.active,
                nonce: STANDARD.encode(nonce),
                ciphertext: STANDARD.encode(ciphertext),
            });
        }
        Ok(format::write_file(&keys, generation, raws))
    }

    /// The plaintext encoding of a secret, as it is encrypted.
    pub fn encode_secret(secret: &Secret) -> Vec<u8> {
        secret.encode().to_vec()
    }

    /// Decode a decrypted plaintext.
    pub fn decode_secret(bytes: &[u8]) -> Result<Secret, &'static str> {
        Secret::decode(bytes)
    }
}
