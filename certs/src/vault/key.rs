//! The master key and the per-purpose subkeys derived from it.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{fsio, VaultError};

/// The environment variable that carries the master key.
pub const MASTER_KEY_ENV: &str = "PORTCULLIS_MASTER_KEY";

const KEY_LEN: usize = 32;
/// A key file is one line of base64; anything much larger is not a key file.
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// Fixed HKDF salt: it separates Portcullis's derivations from any other use of the same key.
const HKDF_SALT: &[u8] = b"portcullis master key v1";
const INFO_ENTRY: &[u8] = b"portcullis/vault/entry-encryption/v1";
const INFO_FILE_HMAC: &[u8] = b"portcullis/vault/file-hmac/v1";
/// The webhook name follows this prefix; the prefix differs from the other infos, so no
/// name can make a webhook subkey collide with a vault subkey.
const INFO_WEBHOOK_PREFIX: &[u8] = b"portcullis/webhook-secret/v1/";

/// The 32-byte master key of the vault.
///
/// It is never used directly: every purpose gets its own HKDF-SHA256 subkey. The bytes are
/// wiped when the key drops, and `Debug` prints `MasterKey(<redacted>)`.
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(&mut bytes[..]);
        Self { bytes }
    }

    /// Parse standard base64 (with padding) of exactly 32 bytes. Surrounding whitespace,
    /// such as the newline at the end of a key file, is ignored.
    pub fn from_base64(text: &str) -> Result<Self, VaultError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(bad_key("it is empty"));
        }
        // 32 bytes is 44 characters; reject anything far off before decoding it.
        if text.len() > 64 {
            return Err(bad_key("it is too long"));
        }
        // Decoded straight into a zeroizing buffer, so no copy of the key is left behind.
        let mut buf = Zeroizing::new([0u8; 48]);
        let len = STANDARD
            .decode_slice(text.as_bytes(), &mut buf[..])
            .map_err(|_| bad_key("it is not valid standard base64"))?;
        if len != KEY_LEN {
            return Err(bad_key(&format!("it decodes to {len} bytes, not 32")));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&buf[..KEY_LEN]);
        Ok(Self { bytes })
    }

    /// Read a key file holding the base64 text. Refuses a file that group or others can
    /// read (`0o077` bits), like the CA key loader.
    pub fn from_file(path: &Path) -> Result<Self, VaultError> {
        let text = fsio::read_text(path, MAX_KEY_FILE_BYTES, true)?
            .ok_or_else(|| VaultError::NoKeyFile { path: path.into() })?;
        Self::from_base64(&text)
    }

    /// The key from `PORTCULLIS_MASTER_KEY` (passed in as `env_value`) or from a key file.
    /// The environment wins when both are given; an empty variable counts as unset.
    /// Neither gives [`VaultError::NoMasterKey`].
    pub fn from_env_or_file(
        env_value: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Self, VaultError> {
        match (env_value.filter(|v| !v.trim().is_empty()), file) {
            (Some(text), _) => Self::from_base64(text),
            (None, Some(path)) => Self::from_file(path),
            (None, None) => Err(VaultError::NoMasterKey),
        }
    }

    /// The key as standard base64, for writing a new key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(44));
        STANDARD.encode_string(&self.bytes[..], &mut out);
        out
    }

    /// The subkey for webhook secret `name` (for example, for signing deliveries).
    pub fn webhook_subkey(&self, name: &str) -> Zeroizing<[u8; KEY_LEN]> {
        let mut info = Vec::with_capacity(INFO_WEBHOOK_PREFIX.len() + name.len());
        info.extend_from_slice(INFO_WEBHOOK_PREFIX);
        info.extend_from_slice(name.as_bytes());
        self.derive(&info)
    }

    /// The AES-256-GCM key for vault entries.
    pub(crate) fn entry_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.derive(INFO_ENTRY)
    }

    /// The HMAC-SHA256 key for the vault file and its generation sidecar.
    pub(crate) fn file_hmac_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.derive(INFO_FILE_HMAC)
    }

    fn derive(&self, info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.bytes[..]);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so this cannot fail.
        if hk.expand(info, &mut out[..]).is_err() {
            unreachable!("HKDF-SHA256 can always expand to 32 bytes");
        }
        out
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn bad_key(reason: &str) -> VaultError {
    VaultError::BadMasterKey {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        let key = MasterKey::generate();
        let again = MasterKey::from_base64(&key.to_base64()).expect("valid key");
        assert_eq!(key.bytes[..], again.bytes[..]);
    }

    #[test]
    fn subkeys_differ_per_purpose_and_per_webhook_name() {
        let key = MasterKey::generate();
        let subkeys = [
            key.entry_key(),
            key.file_hmac_key(),
            key.webhook_subkey("a"),
            key.webhook_subkey("b"),
            key.webhook_subkey(""),
        ];
        for (i, a) in subkeys.iter().enumerate() {
            assert_ne!(a[..], key.bytes[..], "subkey {i} equals the master key");
            for b in &subkeys[i + 1..] {
                assert_ne!(a[..], b[..]);
            }
        }
    }

    #[test]
    fn subkeys_are_deterministic() {
        let key = MasterKey::from_base64(&MasterKey::generate().to_base64()).expect("key");
        let same = MasterKey::from_base64(&key.to_base64()).expect("key");
        assert_eq!(key.entry_key()[..], same.entry_key()[..]);
        assert_eq!(key.webhook_subkey("x")[..], same.webhook_subkey("x")[..]);
    }

    #[test]
    fn env_wins_over_file_and_empty_env_counts_as_unset() {
        let key = MasterKey::generate();
        let b64 = key.to_base64();
        let missing = Path::new("/nonexistent/portcullis/key");
        let from_env = MasterKey::from_env_or_file(Some(&b64), Some(missing)).expect("env key");
        assert_eq!(from_env.bytes[..], key.bytes[..]);
        assert!(matches!(
            MasterKey::from_env_or_file(Some("  "), Some(missing)),
            Err(VaultError::NoKeyFile { .. })
        ));
    }
}
