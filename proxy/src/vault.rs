//! The provider keys the proxy holds (SPEC §9), decrypted once at start.
//!
//! The vault file and its cryptography live in `portcullis-certs`; this
//! module opens it with the master key, answers "which key does this tenant
//! use for this provider", and builds the exact-value scanner that blocks a
//! vault key on its way anywhere else and redacts it from responses.

use std::path::Path;

use portcullis_certs::{KeyId, MasterKey, Secret, Vault, VaultError};
use portcullis_rules::VaultScanner;
use zeroize::Zeroize;

/// The keys, or none when no vault is configured.
pub struct Keys {
    vault: Option<Vault>,
}

impl Keys {
    /// No vault: no route may inject a key.
    pub fn none() -> Keys {
        Keys { vault: None }
    }

    /// Opens the vault at `path` with the master key from `PORTCULLIS_MASTER_KEY`
    /// (`env`) or `key_file`. Any failure is an error: the proxy must not start
    /// with keys it cannot read.
    pub fn open(
        path: &Path,
        env: Option<&str>,
        key_file: Option<&Path>,
    ) -> Result<Keys, VaultError> {
        let master = MasterKey::from_env_or_file(env, key_file)?;
        Ok(Keys {
            vault: Some(Vault::open(path, &master)?),
        })
    }

    /// The newest active key of `tenant` for the provider slot `slot`.
    pub fn get(&self, tenant: &str, slot: &str) -> Option<(&Secret, KeyId)> {
        self.vault.as_ref()?.get(tenant, slot)
    }

    /// The scanner for every key's exact value in every encoding.
    pub fn scanner(&self) -> VaultScanner {
        let Some(vault) = &self.vault else {
            return VaultScanner::empty();
        };
        let mut values: Vec<(String, String, Vec<u8>)> = vault
            .values()
            .map(|(tenant, provider, key_id, value)| {
                (
                    format!("{tenant}/{provider}/{key_id}"),
                    provider.to_owned(),
                    value.to_vec(),
                )
            })
            .collect();
        let scanner = VaultScanner::new(&values);
        for (_, _, v) in &mut values {
            v.zeroize();
        }
        scanner
    }
}
