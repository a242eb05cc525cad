//! The on-disk format: the JSON file, its HMAC, the entry AAD and encryption, and the
//! generation sidecar.

use std::path::Path;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{MasterKey, Secret, VaultError};

/// The only vault format version so far.
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const NONCE_LEN: usize = 12;
/// Domain tags keep the file HMAC and the sidecar HMAC from ever verifying each other.
const FILE_TAG: &[u8] = b"portcullis-vault-file-v1\n";
const SIDECAR_TAG: &[u8] = b"portcullis-vault-generation-v1\n";

type HmacSha256 = Hmac<Sha256>;

/// The subkeys a vault works with, derived once from the master key, so an open vault
/// holds neither the master key nor any key for other purposes.
pub(crate) struct FileKeys {
    cipher: Aes256Gcm,
    hmac: Zeroizing<[u8; 32]>,
}

impl FileKeys {
    pub(crate) fn new(key: &MasterKey) -> Self {
        let entry_key = key.entry_key();
        Self {
            cipher: Aes256Gcm::new((&*entry_key).into()),
            hmac: key.file_hmac_key(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        match <HmacSha256 as Mac>::new_from_slice(&self.hmac[..]) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }
}

/// The vault file as it is on disk. Unknown fields are refused: a field the HMAC does not
/// cover must not be accepted.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub version: u32,
    pub generation: u64,
    pub entries: Vec<RawEntry>,
    /// Lowercase hex HMAC-SHA256 over [`signed_bytes`].
    pub hmac: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEntry {
    pub tenant: String,
    pub provider: String,
    pub key_id: String,
    pub version: u32,
    pub active: bool,
    /// Standard base64 of the 12-byte AES-GCM nonce.
    pub nonce: String,
    /// Standard base64 of the AES-256-GCM ciphertext and its 16-byte tag.
    pub ciphertext: String,
}

/// Everything in the file but the `hmac`, in a fixed field order.
#[derive(Serialize)]
struct Signed<'a> {
    version: u32,
    generation: u64,
    entries: &'a [RawEntry],
}

/// The canonical bytes the file HMAC covers: a domain tag, then compact JSON of
/// `{version, generation, entries}`. They are rebuilt from the parsed values, so
/// whitespace and field order in the file do not matter, but every value does.
fn signed_bytes(version: u32, generation: u64, entries: &[RawEntry]) -> Vec<u8> {
    let signed = Signed {
        version,
        generation,
        entries,
    };
    let mut out = FILE_TAG.to_vec();
    // Serializing plain structs of strings and integers into a Vec cannot fail.
    if let Err(err) = serde_json::to_writer(&mut out, &signed) {
        unreachable!("serializing the vault body failed: {err}");
    }
    out
}

fn file_mac(keys: &FileKeys, version: u32, generation: u64, entries: &[RawEntry]) -> HmacSha256 {
    let mut mac = keys.mac();
    mac.update(&signed_bytes(version, generation, entries));
    mac
}

/// The file HMAC as written in the `hmac` field.
pub(crate) fn file_hmac_hex(
    keys: &FileKeys,
    version: u32,
    generation: u64,
    entries: &[RawEntry],
) -> String {
    hex::encode(
        file_mac(keys, version, generation, entries)
            .finalize()
            .into_bytes(),
    )
}

/// Serialize a complete file, HMAC included.
pub(crate) fn write_file(keys: &FileKeys, generation: u64, entries: Vec<RawEntry>) -> Vec<u8> {
    let hmac = file_hmac_hex(keys, FORMAT_VERSION, generation, &entries);
    let raw = RawFile {
        version: FORMAT_VERSION,
        generation,
        entries,
        hmac,
    };
    let mut out = match serde_json::to_vec_pretty(&raw) {
        Ok(out) => out,
        Err(err) => unreachable!("serializing the vault file failed: {err}"),
    };
    out.push(b'\n');
    out
}

/// Parse the file's JSON and check its format version. The HMAC is not checked yet.
pub(crate) fn parse_file(path: &Path, text: &str) -> Result<RawFile, VaultError> {
    let raw: RawFile = serde_json::from_str(text).map_err(|err| json_error(path, &err))?;
    if raw.version != FORMAT_VERSION {
        return Err(VaultError::UnsupportedVersion {
            path: path.into(),
            found: raw.version,
        });
    }
    Ok(raw)
}

/// Where and what kind of JSON error, but not serde's message: it can quote values from
/// the file, and a mangled file could hold anything.
fn json_error(path: &Path, err: &serde_json::Error) -> VaultError {
    let kind = match err.classify() {
        serde_json::error::Category::Io => "unreadable JSON",
        serde_json::error::Category::Syntax => "JSON syntax error",
        serde_json::error::Category::Data => "a missing, unknown or mistyped field",
        serde_json::error::Category::Eof => "JSON cut short",
    };
    VaultError::malformed(
        path,
        format!("{kind} at line {} column {}", err.line(), err.column()),
    )
}

/// Check the file HMAC, in constant time. A mismatch is [`VaultError::WrongMasterKey`].
pub(crate) fn verify_file(path: &Path, keys: &FileKeys, raw: &RawFile) -> Result<(), VaultError> {
    let tag = hex::decode(&raw.hmac)
        .map_err(|_| VaultError::malformed(path, "the `hmac` field is not hex"))?;
    file_mac(keys, raw.version, raw.generation, &raw.entries)
        .verify_slice(&tag)
        .map_err(|_| VaultError::WrongMasterKey { path: path.into() })
}

/// The AAD of an entry: each field as a big-endian `u32` length and its bytes, so that no
/// shift of a boundary (`"ab","c"` against `"a","bc"`) gives the same AAD.
pub(crate) fn aad(tenant: &str, provider: &str, key_id: &str, version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + tenant.len() + provider.len() + key_id.len() + 4);
    for field in [tenant.as_bytes(), provider.as_bytes(), key_id.as_bytes()] {
        // Names are at most 64 bytes (checked before use), far below u32::MAX.
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&4u32.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out
}

/// Encrypt `secret` under a fresh random nonce. Returns `(nonce, ciphertext ‖ tag)`.
pub(crate) fn seal(
    keys: &FileKeys,
    aad: &[u8],
    secret: &Secret,
) -> Result<([u8; NONCE_LEN], Vec<u8>), VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut buf = secret.encode();
    keys.cipher
        .encrypt_in_place(Nonce::from_slice(&nonce), aad, &mut *buf)
        .map_err(|_| VaultError::Encrypt)?;
    Ok((nonce, buf.to_vec()))
}

/// Decode and decrypt one entry. The error says which step failed, never the content.
pub(crate) fn unseal(
    keys: &FileKeys,
    raw: &RawEntry,
) -> Result<([u8; NONCE_LEN], Vec<u8>, Secret), &'static str> {
    let nonce_bytes = STANDARD
        .decode(&raw.nonce)
        .map_err(|_| "its nonce is not valid base64")?;
    let nonce: [u8; NONCE_LEN] = nonce_bytes
        .try_into()
        .map_err(|_| "its nonce is not 12 bytes")?;
    let ciphertext = STANDARD
        .decode(&raw.ciphertext)
        .map_err(|_| "its ciphertext is not valid base64")?;
    let aad = aad(&raw.tenant, &raw.provider, &raw.key_id, raw.version);
    // Decrypted in place in a zeroizing buffer, so the plaintext leaves no copy behind.
    let mut buf = Zeroizing::new(ciphertext.clone());
    keys.cipher
        .decrypt_in_place(Nonce::from_slice(&nonce), &aad, &mut *buf)
        .map_err(|_| {
            "decryption failed (its ciphertext, nonce, tenant, provider, key id or version \
             was changed)"
        })?;
    let secret = Secret::decode(&buf)?;
    Ok((nonce, ciphertext, secret))
}

/// The generation sidecar: `{"version":1,"generation":N,"hmac":"…"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    version: u32,
    generation: u64,
    hmac: String,
}

fn sidecar_mac(keys: &FileKeys, generation: u64) -> HmacSha256 {
    let mut mac = keys.mac();
    mac.update(SIDECAR_TAG);
    mac.update(&generation.to_be_bytes());
    mac
}

pub(crate) fn write_sidecar(keys: &FileKeys, generation: u64) -> Vec<u8> {
    let raw = RawSidecar {
        version: FORMAT_VERSION,
        generation,
        hmac: hex::encode(sidecar_mac(keys, generation).finalize().into_bytes()),
    };
    let mut out = match serde_json::to_vec(&raw) {
        Ok(out) => out,
        Err(err) => unreachable!("serializing the generation sidecar failed: {err}"),
    };
    out.push(b'\n');
    out
}

/// Parse and verify a sidecar; returns the generation it records.
pub(crate) fn read_sidecar(path: &Path, keys: &FileKeys, text: &str) -> Result<u64, VaultError> {
    let raw: RawSidecar = serde_json::from_str(text).map_err(|err| json_error(path, &err))?;
    if raw.version != FORMAT_VERSION {
        return Err(VaultError::UnsupportedVersion {
            path: path.into(),
            found: raw.version,
        });
    }
    let tag =
        hex::decode(&raw.hmac).map_err(|_| VaultError::SidecarUnverified { path: path.into() })?;
    sidecar_mac(keys, raw.generation)
        .verify_slice(&tag)
        .map_err(|_| VaultError::SidecarUnverified { path: path.into() })?;
    Ok(raw.generation)
}

/// Recompute the file HMAC of `path` with `key` and write it back, leaving everything else
/// as it is. Tests use this to edit an entry so that only the AEAD check can catch the edit.
pub(crate) fn reseal(path: &Path, key: &MasterKey) -> Result<(), VaultError> {
    let text = super::fsio::read_text(path, super::MAX_VAULT_FILE_BYTES, false)?
        .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
    let raw = parse_file(path, &text)?;
    super::fsio::replace(
        path,
        &write_file(&FileKeys::new(key), raw.generation, raw.entries),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_length_prefix_keeps_field_boundaries_apart() {
        assert_ne!(aad("ab", "c", "k", 1), aad("a", "bc", "k", 1));
        assert_ne!(aad("a", "b", "c1", 1), aad("a", "b", "c", 1));
        assert_ne!(aad("a", "b", "c", 1), aad("a", "b", "c", 2));
        assert_ne!(aad("a", "", "bc", 1), aad("a", "b", "c", 1));
    }

    #[test]
    fn seal_uses_a_fresh_nonce_every_time() {
        let keys = FileKeys::new(&MasterKey::generate());
        let secret = Secret::api_key("sk-test-0123456789");
        let (n1, c1) = seal(&keys, b"aad", &secret).expect("seal");
        let (n2, c2) = seal(&keys, b"aad", &secret).expect("seal");
        assert_ne!(n1, n2);
        assert_ne!(c1, c2);
    }

    #[test]
    fn sidecar_round_trips_and_refuses_another_key() {
        let key = FileKeys::new(&MasterKey::generate());
        let path = Path::new("v.generation");
        let bytes = write_sidecar(&key, 7);
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        assert_eq!(read_sidecar(path, &key, text).expect("verifies"), 7);
        let edited = text.replace("\"generation\":7", "\"generation\":8");
        assert!(matches!(
            read_sidecar(path, &key, &edited),
            Err(VaultError::SidecarUnverified { .. })
        ));
        assert!(matches!(
            read_sidecar(path, &FileKeys::new(&MasterKey::generate()), text),
            Err(VaultError::SidecarUnverified { .. })
        ));
    }

    #[test]
    fn file_hmac_does_not_depend_on_whitespace() {
        let key = FileKeys::new(&MasterKey::generate());
        let bytes = write_file(&key, 3, Vec::new());
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        let compact: String = text.split_whitespace().collect();
        let raw = parse_file(Path::new("v"), &compact).expect("parses");
        verify_file(Path::new("v"), &key, &raw).expect("still verifies");
    }
}
