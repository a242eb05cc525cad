//! The keys each table of the config file may have, and the walk that reports every
//! unknown key before serde reads the file.
//!
//! Serde's `deny_unknown_fields` stops at the first unknown key, which would hide every
//! other error in the file. So the parsed (spanned) document is walked against this
//! schema first: each unknown key is reported with its position and removed, and the
//! raw structs, which keep `deny_unknown_fields`, then read what is left and validation
//! carries on. The schema mirrors the `Raw*` structs in `raw.rs`; a key missing here
//! would be reported as unknown, which the fixture tests that use every key would catch.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::Errors;

/// One table of the file: where it is (for messages) and its keys.
pub(super) struct Table {
    name: &'static str,
    keys: &'static [(&'static str, Shape)],
}

/// What a key holds, as far as the walk cares.
#[derive(Clone, Copy)]
enum Shape {
    /// A value the walk does not look into.
    Value,
    /// A table with these keys.
    Table(&'static Table),
    /// An array of tables with these keys.
    Tables(&'static Table),
}

use Shape::{Table as T, Tables as Ts, Value as V};

pub(super) const ROOT: Table = Table {
    name: "the top level",
    keys: &[
        ("version", V),
        ("listeners", Ts(&LISTENER)),
        ("admin", T(&ADMIN)),
        ("ca", T(&CA)),
        ("ledger", T(&LEDGER)),
        ("upstream", T(&UPSTREAM)),
        ("limits", T(&LIMITS)),
        ("vault", T(&VAULT)),
        ("dns", T(&DNS)),
        ("state", T(&STATE)),
        ("tenants", Ts(&TENANT)),
        ("agents", Ts(&AGENT)),
        ("routes", Ts(&ROUTE)),
        ("providers", Ts(&PROVIDER)),
    ],
};

const LISTENER: Table = Table {
    name: "a [[listeners]] entry",
    keys: &[
        ("name", V),
        ("bind", V),
        ("mode", V),
        ("auth", V),
        ("agent", V),
        ("sources", Ts(&SOURCE)),
        ("force_unauthenticated", V),
    ],
};

const SOURCE: Table = Table {
    name: "a `sources` entry",
    keys: &[("cidr", V), ("agent", V)],
};

const DNS: Table = Table {
    name: "[dns]",
    keys: &[
        ("bind", V),
        ("agent", V),
        ("sources", Ts(&SOURCE)),
        ("ttl", V),
    ],
};

const ADMIN: Table = Table {
    name: "[admin]",
    keys: &[("bind", V), ("token_sha256", V), ("metrics_public", V)],
};

const CA: Table = Table {
    name: "[ca]",
    keys: &[("dir", V), ("leaf_ttl", V), ("cache_capacity", V)],
};

const LEDGER: Table = Table {
    name: "[ledger]",
    keys: &[
        ("dir", V),
        ("sync", V),
        ("sync_interval", V),
        ("checkpoint_every", V),
        ("checkpoint_interval", V),
        ("segment_max_bytes", V),
        ("min_free_bytes", V),
        ("replica_id", V),
        ("queue_capacity", V),
    ],
};

const UPSTREAM: Table = Table {
    name: "[upstream]",
    keys: &[
        ("extra_ca", V),
        ("resolve", V),
        ("connect_timeout", V),
        ("tls_timeout", V),
        ("response_header_timeout", V),
        ("idle_timeout", V),
    ],
};

const LIMITS: Table = Table {
    name: "[limits]",
    keys: &[
        ("client_header_timeout", V),
        ("body_progress_timeout", V),
        ("client_idle_timeout", V),
        ("max_header_bytes", V),
        ("max_inspect_body", V),
        ("inspect_memory", V),
        ("inspect_memory_per_tenant", V),
        ("max_connections", V),
        ("max_connections_per_agent", V),
        ("max_connections_per_peer", V),
        ("shutdown_grace", V),
    ],
};

const VAULT: Table = Table {
    name: "[vault]",
    keys: &[("path", V), ("master_key_file", V)],
};

const STATE: Table = Table {
    name: "[state]",
    keys: &[("backend", V), ("url", V), ("timeout", V)],
};

const TENANT: Table = Table {
    name: "a [[tenants]] entry",
    keys: &[("id", V), ("budget", T(&BUDGET)), ("webhook", T(&WEBHOOK))],
};

const WEBHOOK: Table = Table {
    name: "a tenant's `webhook`",
    keys: &[("url", V), ("events", V)],
};

const AGENT: Table = Table {
    name: "an [[agents]] entry",
    keys: &[
        ("id", V),
        ("tenant", V),
        ("token_sha256", V),
        ("budget", T(&BUDGET)),
    ],
};

const ROUTE: Table = Table {
    name: "a [[routes]] entry",
    keys: &[
        ("id", V),
        ("tenants", V),
        ("agents", V),
        ("hosts", V),
        ("ports", V),
        ("methods", V),
        ("paths", V),
        ("action", V),
        ("mode", V),
        ("websocket", V),
        ("approval_timeout", V),
        ("allow_plaintext", V),
        ("allow_private", V),
        ("models", V),
        ("operations", V),
        ("providers", V),
        ("detectors", T(&DETECTORS)),
        ("narrow", T(&NARROW)),
        ("inject_key", V),
        ("budget", T(&BUDGET)),
    ],
};

const BUDGET: Table = Table {
    name: "a `budget` table",
    keys: &[
        ("tokens_per_day", V),
        ("requests_per_minute", V),
        ("default_reserve", V),
        ("hard_cap", V),
    ],
};

const DETECTORS: Table = Table {
    name: "a route's `detectors`",
    keys: &[("injection", V), ("secrets", V), ("sensitivity", V)],
};

const NARROW: Table = Table {
    name: "a route's `narrow`",
    keys: &[
        ("max_tokens", V),
        ("fallback_model", V),
        ("tools_allow", V),
        ("force_include_usage", V),
    ],
};

const PROVIDER: Table = Table {
    name: "a [[providers]] entry",
    keys: &[
        ("id", V),
        ("hosts", V),
        ("api", V),
        ("model_from", V),
        ("auth_header", V),
        ("auth_format", V),
    ],
};

impl Errors<'_> {
    /// Report every key of `table` (and of the tables inside it) that `schema` does not
    /// know, and remove it. A value of the wrong type is left for serde to report.
    /// `span` is the table's own, recorded when something was removed (see
    /// `Errors::at_table`).
    pub(super) fn prune_unknown_keys(
        &mut self,
        table: &mut DeTable<'_>,
        span: Range<usize>,
        schema: &Table,
    ) {
        let known = |key: &str| schema.keys.iter().find(|(k, _)| *k == key).map(|(_, s)| *s);
        let mut unknown: Vec<String> = Vec::new();
        for (key, value) in table.iter_mut() {
            let name: &str = key.get_ref();
            match known(name) {
                None => {
                    unknown.push(name.to_owned());
                    let expected = schema
                        .keys
                        .iter()
                        .map(|(k, _)| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.at(
                        &key.span(),
                        format!(
                            "unknown field `{name}` in {}; expected one of {expected}",
                            schema.name
                        ),
                    );
                }
                Some(Shape::Value) => {}
                Some(Shape::Table(inner)) => {
                    let span = value.span();
                    if let DeValue::Table(t) = value.get_mut() {
                        self.prune_unknown_keys(t, span, inner);
                    }
                }
                Some(Shape::Tables(inner)) => {
                    if let DeValue::Array(items) = value.get_mut() {
                        for item in items.iter_mut() {
                            let span = item.span();
                            if let DeValue::Table(t) = item.get_mut() {
                                self.prune_unknown_keys(t, span, inner);
                            }
                        }
                    }
                }
            }
        }
        if !unknown.is_empty() {
            self.pruned.push(span.start);
        }
        for name in &unknown {
            table.remove(name.as_str());
        }
    }
}
