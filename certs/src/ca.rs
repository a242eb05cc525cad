//! The local CA: create it once, load it on every start, mint leaves with it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::host::LeafHost;
use crate::{store, CaError};

const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca.key";
const CA_COMMON_NAME: &str = "Portcullis Local CA";
const CA_ORGANIZATION: &str = "Portcullis";
/// Ten years, give or take the leap days.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// Backdating absorbs clock skew between the proxy and its clients.
const CA_BACKDATE: time::Duration = time::Duration::days(1);
const LEAF_BACKDATE: time::Duration = time::Duration::hours(1);

/// The local certificate authority: its certificate and the key that signs leaves.
///
/// The key never leaves this struct. `Debug` shows only public facts.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: LeafKey,
    subject: String,
    fingerprint: String,
    not_after: OffsetDateTime,
}

/// The one key pair every leaf of this process is minted for (what mitmproxy does too).
///
/// A fresh key per leaf bought nothing: every leaf is signed by our CA, whose key sits in
/// the same memory, and the cache holds every leaf key for the life of the process anyway.
/// Whoever can read one leaf key can read them all, and the CA key that mints any leaf.
/// Forward secrecy comes from the ephemeral (EC)DHE of each handshake, not from the
/// certificate key, and a handshake's signature covers its transcript (certificate
/// included), so it cannot be replayed for another host. What sharing buys: a mint is one
/// signature instead of a key generation, a signature and a key parse, and a cached leaf
/// holds no key of its own. The key is generated at start, lives only in memory (never on
/// disk), and is replaced by a restart.
struct LeafKey {
    public: SubjectPublicKeyInfo,
    signer: Arc<dyn SigningKey>,
}

impl LeafKey {
    fn generate() -> Result<Self, CaError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let public = SubjectPublicKeyInfo::from_der(&pair.subject_public_key_info())?;
        let der = Zeroizing::new(pair.serialize_der());
        let signer = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(der.as_slice()),
        ))
        .map_err(|err| CaError::Mint(format!("rustls cannot use the leaf key: {err}")))?;
        Ok(Self { public, signer })
    }
}

impl CertificateAuthority {
    /// Create a new ECDSA P-256 CA in `dir`. `dir` is created with mode 0700 if it is missing.
    /// The CA is written to `dir/ca.pem` (0644) and `dir/ca.key` (0600). The key file is
    /// created with mode 0600 and `create_new`, so it is never world readable, even briefly.
    ///
    /// The certificate has CN "Portcullis Local CA" and O "Portcullis", basicConstraints
    /// CA:TRUE with pathlen 0, and keyUsage keyCertSign and cRLSign. It is valid for ten
    /// years from one day ago, and its serial is random.
    ///
    /// Never overwrites: if either file exists, this returns [`CaError::AlreadyExists`].
    pub fn init(dir: &Path) -> Result<Self, CaError> {
        let cert_path = Self::cert_path(dir);
        let key_path = Self::key_path(dir);
        for path in [&key_path, &cert_path] {
            if store::exists(path)? {
                return Err(CaError::AlreadyExists { path: path.clone() });
            }
        }
        store::create_private_dir(dir)?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert_pem = ca_params()?.self_signed(&key)?.pem();

        // The key is written first: if the process dies between the two writes, the next
        // start reports an incomplete CA instead of trusting a certificate with no key.
        let key_pem = Zeroizing::new(key.serialize_pem());
        store::write_new(&key_path, key_pem.as_bytes(), 0o600)?;
        if let Err(err) = store::write_new(&cert_path, cert_pem.as_bytes(), 0o644) {
            // The key file is ours (create_new), and it is useless without its certificate.
            let _ = std::fs::remove_file(&key_path);
            return Err(err);
        }
        store::sync_dir(dir);

        let ca = Self::from_parts(cert_pem, key, &cert_path, &key_path)?;
        tracing::info!(
            dir = %dir.display(),
            fingerprint = %ca.fingerprint,
            "created local CA"
        );
        Ok(ca)
    }

    /// Load the CA from `dir`.
    ///
    /// Refuses a key file whose mode has any group or other bit (`0o077`). Also refuses a
    /// certificate that is not a CA, or one whose public key does not match the key file.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = Self::cert_path(dir);
        let key_path = Self::key_path(dir);
        match (store::exists(&cert_path)?, store::exists(&key_path)?) {
            (false, false) => return Err(CaError::NotFound { path: dir.into() }),
            (true, false) => return Err(incomplete(cert_path, key_path)),
            (false, true) => return Err(incomplete(key_path, cert_path)),
            (true, true) => {}
        }

        let key_pem = store::read_private(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|err| {
            CaError::bad_pem(&key_path, format!("not a usable PKCS#8 private key: {err}"))
        })?;
        let cert_pem = store::read_public(&cert_path)?;
        let ca = Self::from_parts(cert_pem, key, &cert_path, &key_path)?;
        if ca.not_after <= OffsetDateTime::now_utc() {
            tracing::warn!(
                cert = %cert_path.display(),
                "the CA certificate has expired; minting will fail until it is replaced"
            );
        }
        Ok(ca)
    }

    /// Load the CA if both files exist, or create it if neither does. If only one exists,
    /// this returns [`CaError::Incomplete`]. The `bool` is `true` when the CA was created
    /// by this call.
    pub fn load_or_init(dir: &Path) -> Result<(Self, bool), CaError> {
        let cert_path = Self::cert_path(dir);
        let key_path = Self::key_path(dir);
        match (store::exists(&cert_path)?, store::exists(&key_path)?) {
            (true, true) => Ok((Self::load(dir)?, false)),
            (false, false) => Ok((Self::init(dir)?, true)),
            (true, false) => Err(incomplete(cert_path, key_path)),
            (false, true) => Err(incomplete(key_path, cert_path)),
        }
    }

    /// `dir/ca.pem`: the certificate that clients trust.
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join(CERT_FILE)
    }

    /// `dir/ca.key`: the signing key, mode 0600.
    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join(KEY_FILE)
    }

    /// The CA certificate in PEM form, as `ca export` prints it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER form, for rustls root stores and leaf chains.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the certificate DER, as uppercase hex pairs joined by `:` (the format
    /// that `openssl x509 -fingerprint -sha256` prints).
    pub fn fingerprint_sha256(&self) -> String {
        self.fingerprint.clone()
    }

    /// The subject distinguished name, e.g. `CN=Portcullis Local CA, O=Portcullis`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The end of the CA certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }

    /// Mint a leaf for `host`: a canonical lowercase DNS name, or an IP literal, which gets
    /// an IP SAN.
    ///
    /// The leaf has this process's shared ECDSA P-256 leaf key (see `LeafKey`: one key pair
    /// made at start, never written) and a random positive 126-bit serial. Its SAN is
    /// exactly the host, its CN is the host, its EKU is serverAuth, and it is not a CA. It
    /// is valid from one hour ago until `now + ttl`, or until the CA's own `not_after` if that
    /// comes first. The chain is `[leaf, ca]`.
    ///
    /// Errors: [`CaError::InvalidHost`] for anything that is not a DNS name or IP literal,
    /// and [`CaError::Mint`] if the CA has expired or signing fails.
    pub fn mint_leaf(&self, host: &str, ttl: Duration) -> Result<MintedLeaf, CaError> {
        let host = LeafHost::parse(host)?;
        let now = whole_seconds(OffsetDateTime::now_utc());
        if self.not_after <= now {
            return Err(CaError::Mint(format!(
                "the CA certificate ({}) expired at {}; replace it (`portcullis ca init` in a new directory)",
                self.subject, self.not_after
            )));
        }
        // A ttl too large to represent simply means "as long as the CA lives".
        let wanted_end = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .map(whole_seconds);
        let not_after = match wanted_end {
            Some(end) if end < self.not_after => end,
            _ => self.not_after,
        };

        let mut params = CertificateParams::default();
        params.serial_number = Some(random_serial());
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = not_after;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host.canonical());
        params.distinguished_name = name;
        params.subject_alt_names = vec![match &host {
            LeafHost::Dns(dns) => SanType::DnsName(dns.clone().try_into()?),
            LeafHost::Ip(ip) => SanType::IpAddress(*ip),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;

        let leaf = params.signed_by(&self.leaf_key.public, &self.issuer)?;
        Ok(MintedLeaf {
            chain: vec![leaf.der().clone(), self.cert_der.clone()],
            key: Arc::clone(&self.leaf_key.signer),
            not_after: not_after.into(),
        })
    }

    /// Check that the certificate and key belong together and describe a CA, then keep them.
    fn from_parts(
        cert_pem: String,
        key: KeyPair,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        let mut certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes());
        let cert_der = match (certs.next(), certs.next()) {
            (Some(Ok(der)), None) => der,
            (None, _) => return Err(CaError::bad_pem(cert_path, "no CERTIFICATE block")),
            (Some(Err(err)), _) => return Err(CaError::bad_pem(cert_path, err.to_string())),
            (Some(Ok(_)), Some(_)) => {
                return Err(CaError::bad_pem(
                    cert_path,
                    "more than one certificate; expected only the CA certificate",
                ))
            }
        };

        let (subject, not_after) = {
            let (rest, x509) = x509_parser::parse_x509_certificate(&cert_der)
                .map_err(|err| CaError::bad_pem(cert_path, format!("not X.509: {err}")))?;
            if !rest.is_empty() {
                return Err(CaError::bad_pem(
                    cert_path,
                    "trailing data after the certificate",
                ));
            }
            if !x509.is_ca() {
                return Err(CaError::bad_pem(
                    cert_path,
                    "not a CA certificate (basicConstraints CA:TRUE is missing)",
                ));
            }
            if let Ok(Some(usage)) = x509.key_usage() {
                if !usage.value.key_cert_sign() {
                    return Err(CaError::bad_pem(
                        cert_path,
                        "the certificate's keyUsage does not allow keyCertSign",
                    ));
                }
            }
            if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
                return Err(CaError::bad_pem(
                    key_path,
                    format!(
                        "this key does not belong to the certificate in {}",
                        cert_path.display()
                    ),
                ));
            }
            let not_after =
                OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp())
                    .map_err(|err| {
                        CaError::bad_pem(cert_path, format!("unusable notAfter: {err}"))
                    })?;
            (x509.subject().to_string(), not_after)
        };

        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|err| {
            CaError::bad_pem(cert_path, format!("cannot sign with this CA: {err}"))
        })?;
        let fingerprint = Sha256::digest(cert_der.as_ref())
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
            leaf_key: LeafKey::generate()?,
            subject,
            fingerprint,
            not_after,
        })
    }
}

impl fmt::Debug for CertificateAuthority {
    /// Public facts only: the key is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("fingerprint_sha256", &self.fingerprint)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A freshly minted leaf: the chain to serve, its signing key and its expiry.
pub struct MintedLeaf {
    /// `[leaf, ca]`.
    pub chain: Vec<CertificateDer<'static>>,
    /// The shared leaf key (ring provider), the same for every leaf of this CA instance.
    key: Arc<dyn SigningKey>,
    /// The leaf's notAfter (whole seconds).
    pub not_after: SystemTime,
}

impl MintedLeaf {
    /// The rustls `CertifiedKey` that a server config or resolver serves. It holds the
    /// chain's DER and a handle on the shared key, nothing more.
    pub fn into_certified_key(self) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(self.chain, self.key))
    }
}

impl fmt::Debug for MintedLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedLeaf")
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, CaError> {
    let now = whole_seconds(OffsetDateTime::now_utc());
    let mut params = CertificateParams::default();
    params.serial_number = Some(random_serial());
    params.not_before = now - CA_BACKDATE;
    params.not_after = now
        .checked_add(CA_VALIDITY)
        .ok_or_else(|| CaError::Mint("CA validity overflows the calendar".into()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// 16 random bytes with the top bit clear (a positive INTEGER) and the next bit set (so it
/// always encodes in exactly 16 bytes): 126 bits of randomness, well inside RFC 5280's 20 octets.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// X.509 times have whole seconds. Truncating here means `not_after` is exactly what gets
/// encoded, and a leaf never outlives `now + ttl`.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn incomplete(present: PathBuf, missing: PathBuf) -> CaError {
    CaError::Incomplete { present, missing }
}
