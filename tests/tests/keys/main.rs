//! Key injection and budgets, end to end (SPEC §8, §9): the agent holds a
//! dummy key, the origin receives the vault's key; a vault key never leaves
//! for another host and never reaches a log, the ledger or an error body; the
//! request that would cross a budget is refused before it leaves.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_certs::{MasterKey, Secret, Vault};
use portcullis_tests::*;

const OPENAI_VAULT_KEY: &str = "sk-proj-VAULTvaultVAULTvault0123456789abcdefXYZ";
const ANTHROPIC_VAULT_KEY: &str = "sk-ant-api03-VAULTvaultVAULT0123456789abcdefXYZ";
const DUMMY: &str = "sk-agent-dummy-key-not-a-real-one";

const KEYED_ROUTES: &str = r#"
[[routes]]
id = "acme-openai-keyed"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
inject_key = "openai"

[[routes]]
id = "acme-anthropic-keyed"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
inject_key = "anthropic"

[vault]
path = "vault.json"
"#;

/// A vault in `dir` with the tenant's two provider keys; returns its master key.
fn make_vault(dir: &std::path::Path) -> String {
    let master = MasterKey::generate();
    let mut vault = Vault::create(&dir.join("vault.json"), &master).unwrap();
    vault
        .put(
            "acme",
            "openai",
            "default",
            Secret::api_key(OPENAI_VAULT_KEY.as_bytes().to_vec()),
        )
        .unwrap();
    vault
        .put(
            "acme",
            "anthropic",
            "default",
            Secret::api_key(ANTHROPIC_VAULT_KEY.as_bytes().to_vec()),
        )
        .unwrap();
    master.to_base64().as_str().to_owned()
}

async fn keyed_proxy(routes: &str) -> (TestProxy, Origin, String) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let master = make_vault(dir.path());
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), routes);
    let proxy = TestProxy::start_with_master_key(&cfg, dir, Some(&master)).await;
    (proxy, origin, master)
}

mod budgets;
mod injection;
mod usage;
mod vault;
