//! Config parsing: one fixture per validation rule, all-errors-at-once, the embedded
//! default, and a complete valid file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_rules::{
    parse_config, Action, BudgetSpec, Host, ListenerAuth, ListenerMode, Mode, PathPattern,
    ResolveEntry, VaultConfig, EMBEDDED_DEFAULT,
};
use portcullis_rules::{StateBackend, DEFAULT_STATE_TIMEOUT};

fn fixture(dir: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(format!("{name}.toml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

mod all_errors;
mod invalid;
mod keys;
mod state;
mod valid;

/// A tenant and an agent, the least a config with routes needs.
const AGENT_AND_TENANT: &str = r#"version = 1

[[tenants]]
id = "acme"

[[agents]]
id = "bot"
tenant = "acme"
token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
"#;

/// The errors of `text`, which must not parse, as (line, message).
fn errors_of(name: &str, text: &str) -> Vec<(usize, String)> {
    match parse_config(name, text) {
        Ok(_) => panic!("{name} must not parse"),
        Err(e) => e
            .errors
            .iter()
            .map(|err| {
                assert_eq!(err.file, name);
                assert!(err.line > 0 && err.col > 0, "{err}");
                (err.line, err.to_string())
            })
            .collect(),
    }
}
