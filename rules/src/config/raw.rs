//! Raw structs: exactly the file's shape, every value `Spanned`, every table
//! `deny_unknown_fields`. `schema.rs` lists the same keys.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

pub(super) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) version: Option<S<i64>>,
    pub(super) listeners: Option<S<Vec<S<RawListener>>>>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) ca: Option<RawCa>,
    pub(super) ledger: Option<RawLedger>,
    pub(super) upstream: Option<RawUpstream>,
    pub(super) limits: Option<RawLimits>,
    pub(super) vault: Option<RawVault>,
    pub(super) dns: Option<S<RawDns>>,
    pub(super) state: Option<RawState>,
    #[serde(default)]
    pub(super) tenants: Vec<S<RawTenant>>,
    #[serde(default)]
    pub(super) agents: Vec<S<RawAgent>>,
    #[serde(default)]
    pub(super) routes: Vec<S<RawRoute>>,
    #[serde(default)]
    pub(super) providers: Vec<S<RawProvider>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<S<String>>,
    pub(super) bind: Option<S<String>>,
    pub(super) mode: Option<S<String>>,
    pub(super) auth: Option<S<String>>,
    pub(super) agent: Option<S<String>>,
    pub(super) sources: Option<S<Vec<S<RawSource>>>>,
    pub(super) force_unauthenticated: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) cidr: Option<S<String>>,
    pub(super) agent: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) bind: Option<S<String>>,
    pub(super) agent: Option<S<String>>,
    pub(super) sources: Option<S<Vec<S<RawSource>>>>,
    pub(super) ttl: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) bind: Option<S<String>>,
    pub(super) token_sha256: Option<S<String>>,
    pub(super) metrics_public: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCa {
    pub(super) dir: Option<S<String>>,
    pub(super) leaf_ttl: Option<S<RawDuration>>,
    pub(super) cache_capacity: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLedger {
    pub(super) dir: Option<S<String>>,
    pub(super) sync: Option<S<String>>,
    pub(super) sync_interval: Option<S<RawDuration>>,
    pub(super) checkpoint_every: Option<S<i64>>,
    pub(super) checkpoint_interval: Option<S<RawDuration>>,
    pub(super) segment_max_bytes: Option<S<i64>>,
    pub(super) min_free_bytes: Option<S<i64>>,
    pub(super) replica_id: Option<S<String>>,
    pub(super) queue_capacity: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    #[serde(default)]
    pub(super) extra_ca: Vec<S<String>>,
    #[serde(default)]
    pub(super) resolve: Vec<S<String>>,
    pub(super) connect_timeout: Option<S<RawDuration>>,
    pub(super) tls_timeout: Option<S<RawDuration>>,
    pub(super) response_header_timeout: Option<S<RawDuration>>,
    pub(super) idle_timeout: Option<S<RawDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) client_header_timeout: Option<S<RawDuration>>,
    pub(super) body_progress_timeout: Option<S<RawDuration>>,
    pub(super) client_idle_timeout: Option<S<RawDuration>>,
    pub(super) max_header_bytes: Option<S<i64>>,
    pub(super) max_inspect_body: Option<S<i64>>,
    pub(super) inspect_memory: Option<S<i64>>,
    pub(super) inspect_memory_per_tenant: Option<S<i64>>,
    pub(super) max_connections: Option<S<i64>>,
    pub(super) max_connections_per_agent: Option<S<i64>>,
    pub(super) max_connections_per_peer: Option<S<i64>>,
    pub(super) shutdown_grace: Option<S<RawDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVault {
    pub(super) path: Option<S<String>>,
    pub(super) master_key_file: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) backend: Option<S<String>>,
    pub(super) url: Option<S<String>>,
    pub(super) timeout: Option<S<RawDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub(super) id: Option<S<String>>,
    pub(super) budget: Option<S<RawBudget>>,
    pub(super) webhook: Option<S<RawWebhook>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) url: Option<S<String>>,
    pub(super) events: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) id: Option<S<String>>,
    pub(super) tenant: Option<S<String>>,
    pub(super) token_sha256: Option<S<String>>,
    pub(super) budget: Option<S<RawBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) id: Option<S<String>>,
    pub(super) tenants: Option<S<Vec<S<String>>>>,
    pub(super) agents: Option<S<Vec<S<String>>>>,
    pub(super) hosts: Option<S<Vec<S<String>>>>,
    pub(super) ports: Option<S<Vec<S<i64>>>>,
    pub(super) methods: Option<S<Vec<S<String>>>>,
    pub(super) paths: Option<S<Vec<S<String>>>>,
    pub(super) action: Option<S<String>>,
    pub(super) mode: Option<S<String>>,
    pub(super) websocket: Option<bool>,
    pub(super) approval_timeout: Option<S<RawDuration>>,
    pub(super) allow_plaintext: Option<bool>,
    pub(super) allow_private: Option<Vec<S<String>>>,
    pub(super) models: Option<S<Vec<S<String>>>>,
    pub(super) operations: Option<S<Vec<S<String>>>>,
    pub(super) providers: Option<S<Vec<S<String>>>>,
    pub(super) detectors: Option<S<RawDetectors>>,
    pub(super) narrow: Option<S<RawNarrow>>,
    pub(super) inject_key: Option<S<String>>,
    pub(super) budget: Option<S<RawBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) tokens_per_day: Option<S<i64>>,
    pub(super) requests_per_minute: Option<S<i64>>,
    pub(super) default_reserve: Option<S<i64>>,
    pub(super) hard_cap: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetectors {
    pub(super) injection: Option<S<String>>,
    pub(super) secrets: Option<S<String>>,
    pub(super) sensitivity: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNarrow {
    pub(super) max_tokens: Option<S<i64>>,
    pub(super) fallback_model: Option<S<String>>,
    pub(super) tools_allow: Option<S<Vec<S<String>>>>,
    pub(super) force_include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) id: Option<S<String>>,
    pub(super) hosts: Option<S<Vec<S<String>>>>,
    pub(super) api: Option<S<String>>,
    pub(super) model_from: Option<S<Vec<S<String>>>>,
    pub(super) auth_header: Option<S<String>>,
    pub(super) auth_format: Option<S<String>>,
}

/// A duration as written. Numbers are read only to explain that a unit is needed.
pub(super) enum RawDuration {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration string such as \"500ms\", \"10s\", \"5m\", \"2h\" or \"7d\"",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Number(v))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}
