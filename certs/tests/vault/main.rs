//! The provider-key vault: tamper detection, rollback, master keys, rotation, and that no
//! secret leaks into listings, `Debug` or error messages.

#[path = "../common/mod.rs"]
mod common;
mod master;
mod tamper;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::TestResult;
use portcullis_certs::vault::testing;
use portcullis_certs::{MasterKey, Secret, SecretKind, Vault, VaultError};
use serde_json::Value;

const OPENAI_KEY: &str = "sk-proj-TESTONLY-0123456789abcdefWXYZ";
const ANTHROPIC_KEY: &str = "sk-ant-TESTONLY-9876543210zyxwQRST";
const AWS_ID: &str = "AKIATESTONLYEXAMPLE1";
const AWS_SECRET: &str = "TESTONLY/wJalrXUtnFEMI/K7MDENG/bPxRfiCY";
const AWS_TOKEN: &str = "TESTONLY-session-token-FwoGZXIvYXdzEJr";

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: MasterKey,
}

/// A vault with one OpenAI key for `acme`, one Anthropic key for `globex` and an AWS pair
/// for `acme`.
fn fixture() -> Result<(Fixture, Vault), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("vault.json");
    let key = MasterKey::generate();
    let mut vault = Vault::create(&path, &key)?;
    vault.put("acme", "openai", "prod", Secret::api_key(OPENAI_KEY))?;
    vault.put(
        "globex",
        "anthropic",
        "main",
        Secret::api_key(ANTHROPIC_KEY),
    )?;
    vault.put(
        "acme",
        "bedrock",
        "prod",
        Secret::aws(AWS_ID, AWS_SECRET, Some(AWS_TOKEN.into())),
    )?;
    Ok((
        Fixture {
            _dir: dir,
            path,
            key,
        },
        vault,
    ))
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) -> TestResult {
    let mut doc: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    edit(&mut doc);
    std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

/// Flip one bit of a base64 field's decoded bytes.
fn flip_bit(field: &mut Value) {
    let bytes = STANDARD.decode(field.as_str().expect("a base64 string"));
    let mut bytes = bytes.expect("valid base64");
    bytes[0] ^= 0x01;
    *field = Value::String(STANDARD.encode(bytes));
}

fn open_err(path: &Path, key: &MasterKey) -> VaultError {
    Vault::open(path, key).expect_err("the vault must not open")
}

fn assert_bad_entry(err: &VaultError, want_tenant: &str, want_key_id: &str, want_reason: &str) {
    match err {
        VaultError::BadEntry {
            tenant,
            key_id,
            reason,
            ..
        } => {
            assert_eq!(tenant, want_tenant);
            assert_eq!(key_id, want_key_id);
            assert!(reason.contains(want_reason), "reason: {reason}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{want_tenant}/")), "message: {msg}");
        }
        other => panic!("expected BadEntry, got {other:?}"),
    }
}
