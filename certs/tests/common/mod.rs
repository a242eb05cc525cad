//! Shared helpers for the certs integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use portcullis_certs::CertificateAuthority;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A fresh CA in its own temporary directory (removed when the `TempDir` drops).
pub fn fresh_ca(
) -> Result<(tempfile::TempDir, Arc<CertificateAuthority>), Box<dyn std::error::Error + Send + Sync>>
{
    let tmp = tempfile::tempdir()?;
    let ca = CertificateAuthority::init(&tmp.path().join("ca"))?;
    Ok((tmp, Arc::new(ca)))
}
