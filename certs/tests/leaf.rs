//! Minting leaves, and serving them with rustls.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{fresh_ca, TestResult};
use portcullis_certs::{CaError, CertificateAuthority};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

const HOUR: Duration = Duration::from_secs(3600);

fn unix(t: SystemTime) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(i64::try_from(t.duration_since(UNIX_EPOCH)?.as_secs())?)
}

#[test]
fn minted_leaf_has_san_equal_to_host_and_random_serial() -> TestResult {
    let (_tmp, ca) = fresh_ca()?;
    let ttl = Duration::from_secs(24 * 3600);
    let before = unix(SystemTime::now())?;
    let first = ca.mint_leaf("api.openai.com", ttl)?;
    let second = ca.mint_leaf("api.openai.com", ttl)?;
    let after = unix(SystemTime::now())?;

    assert_eq!(first.chain.len(), 2);
    assert_eq!(&first.chain[1], ca.cert_der(), "chain is [leaf, ca]");
    let (_, leaf) = parse_x509_certificate(&first.chain[0])?;
    let (_, other) = parse_x509_certificate(&second.chain[0])?;

    let san = leaf.subject_alternative_name()?.ok_or("no SAN")?.value;
    assert_eq!(
        san.general_names,
        vec![GeneralName::DNSName("api.openai.com")]
    );
    assert_eq!(leaf.subject().to_string(), "CN=api.openai.com");
    assert_eq!(leaf.issuer().to_string(), ca.subject());

    assert_ne!(leaf.raw_serial(), other.raw_serial(), "serials are random");
    assert!(leaf.raw_serial().len() >= 16);
    assert!(leaf.serial.bits() > 64);
    assert!(leaf.raw_serial()[0] & 0x80 == 0, "serial is positive");

    let not_after = leaf.validity().not_after.timestamp();
    let ttl_secs = i64::try_from(ttl.as_secs())?;
    assert!(not_after <= after + ttl_secs, "never outlives the ttl");
    assert!(not_after >= before + ttl_secs - 1);
    assert_eq!(unix(first.not_after)?, not_after);
    let not_before = leaf.validity().not_before.timestamp();
    assert!(
        (before - 3600 - 1..=after - 3600).contains(&not_before),
        "backdated one hour"
    );

    assert!(!leaf.is_ca());
    let constraints = leaf
        .basic_constraints()?
        .ok_or("no basicConstraints")?
        .value;
    assert!(!constraints.ca);
    let eku = leaf.extended_key_usage()?.ok_or("no EKU")?.value;
    assert!(eku.server_auth && !eku.client_auth && !eku.any);
    assert_eq!(
        leaf.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    Ok(())
}

/// Every leaf of one CA instance carries the one shared leaf key (see `LeafKey` in ca.rs):
/// a mint is a signature, not a key generation. Another instance (another process) has
/// its own, and it is never the CA's key.
#[tokio::test]
async fn leaves_share_one_key_per_ca_instance_and_still_complete_a_handshake() -> TestResult {
    let (tmp, ca) = fresh_ca()?;
    let spki = |leaf: &portcullis_certs::MintedLeaf| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        let (_, cert) = parse_x509_certificate(&leaf.chain[0])?;
        Ok(cert.public_key().raw.to_vec())
    };
    let a = ca.mint_leaf("api.openai.com", HOUR)?;
    let b = ca.mint_leaf("api.anthropic.com", HOUR)?;
    assert_eq!(spki(&a)?, spki(&b)?, "one key for every host");
    let (_, ca_cert) = parse_x509_certificate(ca.cert_der())?;
    assert_ne!(
        spki(&a)?,
        ca_cert.public_key().raw.to_vec(),
        "not the CA key"
    );

    let reloaded = CertificateAuthority::load(&tmp.path().join("ca"))?;
    let c = reloaded.mint_leaf("api.openai.com", HOUR)?;
    assert_ne!(spki(&a)?, spki(&c)?, "a new key per process, never stored");

    for (leaf, host) in [(a, "api.openai.com"), (b, "api.anthropic.com")] {
        let received = handshake(&ca, leaf.into_certified_key(), host).await?;
        assert_eq!(received, b"hello through portcullis", "{host}");
    }
    Ok(())
}

#[test]
fn minted_leaf_for_ip_literal_has_ip_san() -> TestResult {
    let (_tmp, ca) = fresh_ca()?;
    for (host, expected) in [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::2]", "2001:db8::2"),
    ] {
        let leaf = ca.mint_leaf(host, HOUR)?;
        let (_, cert) = parse_x509_certificate(&leaf.chain[0])?;
        let san = cert.subject_alternative_name()?.ok_or("no SAN")?.value;
        let ip: IpAddr = expected.parse()?;
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        assert_eq!(
            san.general_names,
            vec![GeneralName::IPAddress(&octets)],
            "{host}"
        );
        assert_eq!(cert.subject().to_string(), format!("CN={expected}"));
    }
    Ok(())
}

#[test]
fn minted_leaf_never_outlives_the_ca() -> TestResult {
    let (_tmp, ca) = fresh_ca()?;
    let leaf = ca.mint_leaf("example.com", Duration::from_secs(100 * 365 * 86_400))?;
    assert_eq!(leaf.not_after, ca.not_after());
    let leaf = ca.mint_leaf("example.com", Duration::MAX)?;
    assert_eq!(leaf.not_after, ca.not_after());
    Ok(())
}

#[test]
fn minting_for_an_invalid_host_is_invalid_host_not_a_panic() -> TestResult {
    let (_tmp, ca) = fresh_ca()?;
    for bad in [
        "",
        "a b",
        "exa mple.com",
        "*.example.com",
        "host\n",
        "a..b",
        "ex\u{0}ample.com",
    ] {
        match ca.mint_leaf(bad, HOUR) {
            Err(CaError::InvalidHost { host }) => assert_eq!(host, bad),
            other => return Err(format!("{bad:?}: expected InvalidHost, got {other:?}").into()),
        }
    }
    Ok(())
}

#[test]
fn minted_leaf_folds_host_case_and_trailing_dot() -> TestResult {
    let (_tmp, ca) = fresh_ca()?;
    let leaf = ca.mint_leaf("API.Example.COM.", HOUR)?;
    let (_, cert) = parse_x509_certificate(&leaf.chain[0])?;
    let san = cert.subject_alternative_name()?.ok_or("no SAN")?.value;
    assert_eq!(
        san.general_names,
        vec![GeneralName::DNSName("api.example.com")]
    );
    Ok(())
}

/// A TLS handshake over an in-memory pipe: the server serves `certified_key`, the client
/// trusts only `ca` and connects to `server_name`. Returns the bytes the client read back.
async fn handshake(
    ca: &CertificateAuthority,
    certified_key: Arc<rustls::sign::CertifiedKey>,
    server_name: &str,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            certified_key,
        )));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let server = tokio::spawn(async move {
        let mut tls = acceptor.accept(server_io).await?;
        tls.write_all(b"hello through portcullis").await?;
        tls.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });

    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = ServerName::try_from(server_name.to_owned())?;
    let mut tls = connector.connect(name, client_io).await?;
    let mut received = Vec::new();
    tls.read_to_end(&mut received).await?;
    server.await??;
    Ok(received)
}

#[tokio::test]
async fn minted_leaf_verifies_against_ca_with_rustls() -> TestResult {
    let (_tmp, ca) = fresh_ca()?;
    for host in ["api.anthropic.com", "127.0.0.1", "::1"] {
        let key = ca.mint_leaf(host, HOUR)?.into_certified_key();
        let received = handshake(&ca, key, host).await?;
        assert_eq!(received, b"hello through portcullis", "{host}");
    }
    Ok(())
}

#[tokio::test]
async fn leaf_for_one_host_is_rejected_for_another_host() -> TestResult {
    let (_tmp, ca) = fresh_ca()?;
    let key = ca.mint_leaf("api.openai.com", HOUR)?.into_certified_key();
    let result = handshake(&ca, key, "evil.example.com").await;
    let err = result
        .err()
        .ok_or("handshake with the wrong name succeeded")?;
    assert!(err.to_string().contains("not valid for name"), "{err}");
    Ok(())
}

#[tokio::test]
async fn leaf_from_another_ca_is_rejected() -> TestResult {
    let (_tmp, ca) = fresh_ca()?;
    let (_tmp2, stranger) = fresh_ca()?;
    let key = stranger
        .mint_leaf("api.openai.com", HOUR)?
        .into_certified_key();
    let err = handshake(&ca, key, "api.openai.com")
        .await
        .err()
        .ok_or("untrusted CA accepted")?;
    // Every Portcullis CA has the same subject, so the client finds a candidate issuer by name
    // and then rejects its signature.
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    Ok(())
}

#[test]
fn minting_with_an_expired_ca_fails_with_a_mint_error() -> TestResult {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let tmp = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    std::fs::write(
        CertificateAuthority::cert_path(tmp.path()),
        params.self_signed(&key)?.pem(),
    )?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(CertificateAuthority::key_path(tmp.path()))?
        .write_all(key.serialize_pem().as_bytes())?;

    let ca = CertificateAuthority::load(tmp.path())?;
    let err = ca
        .mint_leaf("example.com", HOUR)
        .err()
        .ok_or("minted with an expired CA")?;
    assert!(matches!(err, CaError::Mint(_)), "{err:?}");
    assert!(err.to_string().contains("expired"), "{err}");
    Ok(())
}
