//! What a vault entry holds, and the public descriptions of it.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{ZeroizeOnDrop, Zeroizing};

/// The largest secret the vault stores. Provider keys are well under 1 KiB; session tokens
/// can be a few KiB.
pub(crate) const MAX_SECRET_BYTES: usize = 16 * 1024;

const TAG_API_KEY: u8 = 1;
const TAG_AWS: u8 = 2;

/// A provider credential.
///
/// Every field is `Zeroizing`, so the plaintext is wiped when the secret drops. `Debug`
/// shows the kind only, and `==` compares in constant time.
#[non_exhaustive]
pub enum Secret {
    /// A bearer-style API key (OpenAI, Anthropic, Gemini, …), as raw bytes.
    ApiKey(Zeroizing<Vec<u8>>),
    /// An AWS access key pair, for SigV4 re-signing on Bedrock.
    Aws {
        access_key_id: Zeroizing<String>,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
    },
}

impl Secret {
    /// An API key. Takes ownership, so a `String` or `Vec<u8>` is moved, not copied.
    pub fn api_key(key: impl Into<Vec<u8>>) -> Self {
        Secret::ApiKey(Zeroizing::new(key.into()))
    }

    /// An AWS key pair with an optional session token.
    pub fn aws(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Secret::Aws {
            access_key_id: Zeroizing::new(access_key_id.into()),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.map(Zeroizing::new),
        }
    }

    /// Which kind of secret this is.
    pub fn kind(&self) -> SecretKind {
        match self {
            Secret::ApiKey(_) => SecretKind::ApiKey,
            Secret::Aws { .. } => SecretKind::Aws,
        }
    }

    /// `"…abcd"`: the last four characters of the API key, or of the AWS access key id.
    /// Keys shorter than 12 bytes show `"…"` alone, so that four characters are never
    /// most of the key. Non-printable bytes show as `?`.
    pub fn last4(&self) -> String {
        let bytes: &[u8] = match self {
            Secret::ApiKey(key) => key,
            Secret::Aws { access_key_id, .. } => access_key_id.as_bytes(),
        };
        let mut out = String::from("…");
        if bytes.len() >= 12 {
            out.extend(bytes[bytes.len() - 4..].iter().map(|&b| {
                if b.is_ascii_graphic() {
                    char::from(b)
                } else {
                    '?'
                }
            }));
        }
        out
    }

    /// The values the proxy must never let leave towards a wrong host: the API key, or the
    /// AWS secret access key and session token. (The access key id is not secret, and the
    /// pattern detector already knows its `AKIA`/`ASIA` shape.)
    pub(crate) fn secret_values(&self) -> impl Iterator<Item = &[u8]> {
        let values: [Option<&[u8]>; 2] = match self {
            Secret::ApiKey(key) => [Some(&key[..]), None],
            Secret::Aws {
                secret_access_key,
                session_token,
                ..
            } => [
                Some(secret_access_key.as_bytes()),
                session_token.as_ref().map(|t| t.as_bytes()),
            ],
        };
        values.into_iter().flatten()
    }

    /// Reject secrets that cannot be right, before they are stored.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let fields: [&[u8]; 3] = match self {
            Secret::ApiKey(key) => [key, b"x", b"x"],
            Secret::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            } => [
                access_key_id.as_bytes(),
                secret_access_key.as_bytes(),
                session_token.as_ref().map_or(&b"x"[..], |t| t.as_bytes()),
            ],
        };
        if fields.iter().any(|f| f.is_empty()) {
            return Err("a key, key id, secret or session token is empty");
        }
        if fields.iter().map(|f| f.len()).sum::<usize>() > MAX_SECRET_BYTES {
            return Err("the secret is larger than 16 KiB");
        }
        Ok(())
    }

    /// The plaintext that is encrypted: a tag byte, then each field as a big-endian `u32`
    /// length and its bytes (AWS adds a 0/1 byte for the optional session token). Written
    /// into a buffer sized up front, so it never reallocates and leaves no copy behind.
    pub(crate) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let fields: usize = match self {
            Secret::ApiKey(key) => 4 + key.len(),
            Secret::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                9 + access_key_id.len()
                    + secret_access_key.len()
                    + session_token.as_ref().map_or(0, |t| 4 + t.len())
            }
        };
        // 1 tag byte, plus 16 spare bytes for the AES-GCM tag, which is appended in place.
        let mut out = Zeroizing::new(Vec::with_capacity(1 + fields + 16));
        match self {
            Secret::ApiKey(key) => {
                out.push(TAG_API_KEY);
                put_field(&mut out, key);
            }
            Secret::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                out.push(TAG_AWS);
                put_field(&mut out, access_key_id.as_bytes());
                put_field(&mut out, secret_access_key.as_bytes());
                match session_token {
                    Some(token) => {
                        out.push(1);
                        put_field(&mut out, token.as_bytes());
                    }
                    None => out.push(0),
                }
            }
        }
        out
    }

    /// The inverse of [`Secret::encode`]. The error names what is wrong, never the content.
    pub(crate) fn decode(mut bytes: &[u8]) -> Result<Self, &'static str> {
        let secret = match take_byte(&mut bytes)? {
            TAG_API_KEY => Secret::ApiKey(Zeroizing::new(take_field(&mut bytes)?.to_vec())),
            TAG_AWS => {
                let access_key_id = take_text(&mut bytes)?;
                let secret_access_key = take_text(&mut bytes)?;
                let session_token = match take_byte(&mut bytes)? {
                    0 => None,
                    1 => Some(take_text(&mut bytes)?),
                    _ => return Err("the decrypted secret has a bad session-token flag"),
                };
                Secret::Aws {
                    access_key_id,
                    secret_access_key,
                    session_token,
                }
            }
            _ => return Err("the decrypted secret is of an unknown kind"),
        };
        if !bytes.is_empty() {
            return Err("the decrypted secret has trailing bytes");
        }
        Ok(secret)
    }
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    // Fields are bounded by MAX_SECRET_BYTES (see `check`), far below u32::MAX.
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

fn take_byte(bytes: &mut &[u8]) -> Result<u8, &'static str> {
    let (&first, rest) = bytes
        .split_first()
        .ok_or("the decrypted secret is truncated")?;
    *bytes = rest;
    Ok(first)
}

fn take_field<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    const TRUNCATED: &str = "the decrypted secret is truncated";
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or(TRUNCATED)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| TRUNCATED)?;
    if rest.len() < len {
        return Err(TRUNCATED);
    }
    let (field, rest) = rest.split_at(len);
    *bytes = rest;
    Ok(field)
}

fn take_text(bytes: &mut &[u8]) -> Result<Zeroizing<String>, &'static str> {
    let field = take_field(bytes)?;
    let text = std::str::from_utf8(field).map_err(|_| "an AWS field is not UTF-8")?;
    // An exact-size allocation, copied from the zeroizing plaintext buffer.
    Ok(Zeroizing::new(text.to_owned()))
}

impl PartialEq for Secret {
    /// Constant time in the contents (lengths and kinds may leak through timing).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Secret::ApiKey(a), Secret::ApiKey(b)) => bool::from(a[..].ct_eq(&b[..])),
            (
                Secret::Aws {
                    access_key_id: a_id,
                    secret_access_key: a_secret,
                    session_token: a_token,
                },
                Secret::Aws {
                    access_key_id: b_id,
                    secret_access_key: b_secret,
                    session_token: b_token,
                },
            ) => {
                let tokens = match (a_token, b_token) {
                    (Some(a), Some(b)) => a.as_bytes().ct_eq(b.as_bytes()),
                    (None, None) => subtle::Choice::from(1),
                    _ => subtle::Choice::from(0),
                };
                let same = a_id.as_bytes().ct_eq(b_id.as_bytes())
                    & a_secret.as_bytes().ct_eq(b_secret.as_bytes())
                    & tokens;
                bool::from(same)
            }
            _ => false,
        }
    }
}

impl Eq for Secret {}

// Every field is `Zeroizing`, so dropping a `Secret` wipes it.
impl ZeroizeOnDrop for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::ApiKey(_) => f.write_str("Secret::ApiKey(<redacted>)"),
            Secret::Aws { .. } => f.write_str("Secret::Aws(<redacted>)"),
        }
    }
}

/// The kind of a [`Secret`], as `vault list` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SecretKind {
    ApiKey,
    Aws,
}

impl SecretKind {
    /// `"api_key"` or `"aws"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::ApiKey => "api_key",
            SecretKind::Aws => "aws",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which stored key served a request, for the ledger's `key_id` field.
/// Displays as `"{provider}/{key_id}@v{version}"`. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId {
    pub provider: String,
    pub key_id: String,
    pub version: u32,
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@v{}", self.provider, self.key_id, self.version)
    }
}

/// One row of `vault list`: everything about an entry except the secret, which shows as
/// its last four characters only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    pub tenant: String,
    pub provider: String,
    pub key_id: String,
    pub version: u32,
    pub active: bool,
    pub kind: SecretKind,
    pub last4: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Secret> {
        vec![
            Secret::api_key("sk-proj-0123456789abcdef"),
            Secret::aws("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG", None),
            Secret::aws(
                "ASIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG",
                Some("tok".into()),
            ),
        ]
    }

    #[test]
    fn encode_decode_round_trips_every_kind() {
        for secret in samples() {
            let decoded = Secret::decode(&secret.encode()).expect("decodes");
            assert!(decoded == secret, "{secret:?} did not round-trip");
        }
    }

    #[test]
    fn decode_rejects_truncated_and_trailing_bytes() {
        for secret in samples() {
            let bytes = secret.encode();
            for cut in 0..bytes.len() {
                assert!(Secret::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(Secret::decode(&longer).is_err());
        }
    }

    #[test]
    fn equality_compares_contents() {
        assert!(Secret::api_key("sk-aaaa") == Secret::api_key("sk-aaaa"));
        assert!(Secret::api_key("sk-aaaa") != Secret::api_key("sk-aaab"));
        assert!(Secret::aws("A", "s", None) != Secret::aws("A", "s", Some("t".into())));
        assert!(Secret::api_key("A") != Secret::aws("A", "s", None));
    }

    #[test]
    fn last4_shows_four_characters_at_most() {
        assert_eq!(Secret::api_key("sk-proj-0123456789abcd").last4(), "…abcd");
        assert_eq!(
            Secret::aws("AKIAIOSFODNN7EXAMPLE", "x", None).last4(),
            "…MPLE"
        );
        assert_eq!(Secret::api_key("short-key").last4(), "…");
    }

    #[test]
    fn aws_values_are_the_secret_and_the_session_token() {
        let s = Secret::aws("AKIAIOSFODNN7EXAMPLE", "secret", Some("token".into()));
        let values: Vec<&[u8]> = s.secret_values().collect();
        assert_eq!(values, vec![&b"secret"[..], &b"token"[..]]);
    }

    #[test]
    fn key_id_displays_provider_label_and_version() {
        let id = KeyId {
            provider: "openai".into(),
            key_id: "prod".into(),
            version: 3,
        };
        assert_eq!(id.to_string(), "openai/prod@v3");
    }
}
