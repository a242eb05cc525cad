//! Creating, loading and protecting the CA on disk.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::TestResult;
use portcullis_certs::{CaError, CertificateAuthority};
use x509_parser::prelude::*;

fn mode(path: &std::path::Path) -> std::io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

#[test]
fn ca_init_writes_key_with_mode_0600_and_cert_0644() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("nested").join("ca");
    CertificateAuthority::init(&dir)?;

    assert_eq!(mode(&CertificateAuthority::key_path(&dir))?, 0o600);
    assert_eq!(mode(&CertificateAuthority::cert_path(&dir))?, 0o644);
    assert_eq!(
        mode(&dir)?,
        0o700,
        "a missing CA directory is created private"
    );
    assert_eq!(CertificateAuthority::cert_path(&dir), dir.join("ca.pem"));
    assert_eq!(CertificateAuthority::key_path(&dir), dir.join("ca.key"));
    Ok(())
}

#[test]
fn ca_init_produces_a_p256_ca_with_pathlen_0_and_ten_year_validity() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = CertificateAuthority::init(tmp.path())?;
    assert_eq!(ca.subject(), "CN=Portcullis Local CA, O=Portcullis");

    let (_, cert) = parse_x509_certificate(ca.cert_der())?;
    assert_eq!(cert.subject().to_string(), ca.subject());
    assert_eq!(cert.issuer().to_string(), ca.subject(), "self-signed");
    let constraints = cert
        .basic_constraints()?
        .ok_or("no basicConstraints")?
        .value;
    assert!(constraints.ca);
    assert_eq!(constraints.path_len_constraint, Some(0));
    let usage = cert.key_usage()?.ok_or("no keyUsage")?.value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert!(!usage.digital_signature());
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    assert!(
        (now - 86_400 - 5..=now - 86_400 + 5).contains(&not_before),
        "backdated one day"
    );
    let ten_years = 3650 * 86_400;
    assert!((now + ten_years - 5..=now + ten_years + 5).contains(&not_after));
    let api_not_after = ca
        .not_after()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    assert_eq!(api_not_after, not_after);

    let fingerprint = ca.fingerprint_sha256();
    assert_eq!(fingerprint.len(), 32 * 3 - 1);
    assert!(fingerprint.split(':').all(|pair| pair.len() == 2
        && pair
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())));
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    Ok(())
}

#[test]
fn ca_init_refuses_to_overwrite_existing_ca() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    CertificateAuthority::init(dir)?;
    let cert_before = fs::read(CertificateAuthority::cert_path(dir))?;
    let key_before = fs::read(CertificateAuthority::key_path(dir))?;

    let err = CertificateAuthority::init(dir)
        .err()
        .ok_or("second init succeeded")?;
    assert!(matches!(err, CaError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");

    assert_eq!(fs::read(CertificateAuthority::cert_path(dir))?, cert_before);
    assert_eq!(fs::read(CertificateAuthority::key_path(dir))?, key_before);
    Ok(())
}

#[test]
fn ca_init_refuses_when_only_the_key_exists() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let key_path = CertificateAuthority::key_path(tmp.path());
    fs::write(&key_path, b"precious")?;

    let err = CertificateAuthority::init(tmp.path())
        .err()
        .ok_or("init succeeded")?;
    assert!(
        matches!(&err, CaError::AlreadyExists { path } if *path == key_path),
        "{err:?}"
    );
    assert_eq!(fs::read(&key_path)?, b"precious");
    assert!(!CertificateAuthority::cert_path(tmp.path()).exists());
    Ok(())
}

#[test]
fn ca_load_refuses_group_readable_key() -> TestResult {
    let tmp = tempfile::tempdir()?;
    CertificateAuthority::init(tmp.path())?;
    let key_path = CertificateAuthority::key_path(tmp.path());
    for insecure in [0o640, 0o604, 0o644, 0o610] {
        fs::set_permissions(&key_path, fs::Permissions::from_mode(insecure))?;
        let err = CertificateAuthority::load(tmp.path())
            .err()
            .ok_or("load succeeded")?;
        match &err {
            CaError::InsecureKeyPermissions { path, mode } => {
                assert_eq!(path, &key_path);
                assert_eq!(*mode, insecure);
            }
            other => return Err(format!("expected InsecureKeyPermissions, got {other:?}").into()),
        }
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o400))?;
    CertificateAuthority::load(tmp.path())?;
    Ok(())
}

#[test]
fn ca_load_round_trips_what_init_created() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let created = CertificateAuthority::init(tmp.path())?;
    let loaded = CertificateAuthority::load(tmp.path())?;
    assert_eq!(loaded.fingerprint_sha256(), created.fingerprint_sha256());
    assert_eq!(loaded.cert_der(), created.cert_der());
    assert_eq!(loaded.cert_pem(), created.cert_pem());
    assert_eq!(loaded.subject(), created.subject());
    assert_eq!(loaded.not_after(), created.not_after());
    Ok(())
}

#[test]
fn ca_load_of_empty_dir_is_not_found_with_hint() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let err = CertificateAuthority::load(tmp.path())
        .err()
        .ok_or("load succeeded")?;
    assert!(matches!(err, CaError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("portcullis ca init"), "{err}");
    Ok(())
}

#[test]
fn ca_load_or_init_is_idempotent() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ca");
    let (first, created_first) = CertificateAuthority::load_or_init(&dir)?;
    let (second, created_second) = CertificateAuthority::load_or_init(&dir)?;
    assert!(created_first);
    assert!(!created_second);
    assert_eq!(first.fingerprint_sha256(), second.fingerprint_sha256());
    Ok(())
}

#[test]
fn ca_load_or_init_refuses_a_half_present_ca() -> TestResult {
    let tmp = tempfile::tempdir()?;
    CertificateAuthority::init(tmp.path())?;
    let cert_path = CertificateAuthority::cert_path(tmp.path());
    let cert = fs::read(&cert_path)?;
    fs::remove_file(CertificateAuthority::key_path(tmp.path()))?;

    let err = CertificateAuthority::load_or_init(tmp.path())
        .err()
        .ok_or("succeeded")?;
    assert!(matches!(err, CaError::Incomplete { .. }), "{err:?}");
    assert_eq!(
        fs::read(&cert_path)?,
        cert,
        "the remaining file is untouched"
    );
    assert!(
        !CertificateAuthority::key_path(tmp.path()).exists(),
        "no new key was written"
    );
    Ok(())
}

#[test]
fn ca_load_refuses_a_key_from_another_ca() -> TestResult {
    let one = tempfile::tempdir()?;
    let two = tempfile::tempdir()?;
    CertificateAuthority::init(one.path())?;
    CertificateAuthority::init(two.path())?;
    let other_key = fs::read(CertificateAuthority::key_path(two.path()))?;
    fs::write(CertificateAuthority::key_path(one.path()), other_key)?;

    let err = CertificateAuthority::load(one.path())
        .err()
        .ok_or("load succeeded")?;
    assert!(matches!(err, CaError::BadPem { .. }), "{err:?}");
    assert!(err.to_string().contains("does not belong"), "{err}");
    Ok(())
}

#[test]
fn ca_load_reports_garbage_files_as_bad_pem() -> TestResult {
    let tmp = tempfile::tempdir()?;
    CertificateAuthority::init(tmp.path())?;
    let cert_path = CertificateAuthority::cert_path(tmp.path());
    let key_path = CertificateAuthority::key_path(tmp.path());
    let key = fs::read(&key_path)?;

    fs::write(&cert_path, b"hello")?;
    let err = CertificateAuthority::load(tmp.path())
        .err()
        .ok_or("garbage cert loaded")?;
    assert!(
        matches!(&err, CaError::BadPem { path, .. } if *path == cert_path),
        "{err:?}"
    );

    fs::write(
        &key_path,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )?;
    let err = CertificateAuthority::load(tmp.path())
        .err()
        .ok_or("garbage key loaded")?;
    assert!(
        matches!(&err, CaError::BadPem { path, .. } if *path == key_path),
        "{err:?}"
    );

    fs::write(&key_path, key)?;
    fs::write(&cert_path, [0xff, 0xfe, 0x00])?;
    let err = CertificateAuthority::load(tmp.path())
        .err()
        .ok_or("binary cert loaded")?;
    assert!(matches!(err, CaError::BadPem { .. }), "{err:?}");
    Ok(())
}

#[test]
fn ca_load_refuses_a_leaf_certificate_as_ca() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = CertificateAuthority::init(tmp.path())?;
    let leaf = ca.mint_leaf("example.com", std::time::Duration::from_secs(3600))?;
    let leaf_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_encode(&leaf.chain[0])
    );
    fs::write(CertificateAuthority::cert_path(tmp.path()), leaf_pem)?;
    let err = CertificateAuthority::load(tmp.path())
        .err()
        .ok_or("leaf loaded as CA")?;
    assert!(matches!(err, CaError::BadPem { .. }), "{err:?}");
    Ok(())
}

#[test]
fn ca_debug_output_never_contains_the_key() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = CertificateAuthority::init(tmp.path())?;
    let key_pem = fs::read_to_string(CertificateAuthority::key_path(tmp.path()))?;
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let debug = format!("{ca:?}");
    assert!(debug.contains("Portcullis Local CA"));
    assert!(!debug.contains(&key_body[..32]));
    Ok(())
}

/// Minimal standard base64, enough to wrap a DER blob in PEM for a test.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
