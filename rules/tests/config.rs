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

/// (fixture in tests/fixtures/invalid, expected line, expected message fragment).
/// Each fixture is otherwise valid, so it must produce exactly this one error.
const INVALID: &[(&str, usize, &str)] = &[
    ("version_missing", 1, "missing `version = 1`"),
    ("version_unsupported", 2, "unsupported version 2"),
    ("toml_syntax_error", 13, "invalid basic string"),
    ("unknown_field", 16, "unknown field `hots`"),
    ("wrong_type", 14, "invalid type"),
    ("bad_id", 13, "agent id `bad:bot` is not valid"),
    (
        "duplicate_tenant_id",
        13,
        "duplicate tenant id `acme` (first declared on line 5)",
    ),
    ("duplicate_agent_id", 13, "duplicate agent id `bot`"),
    ("duplicate_route_id", 18, "duplicate route id `r1`"),
    ("agent_unknown_tenant", 14, "unknown tenant `acne`"),
    ("agent_missing_tenant", 12, "agent needs a `tenant`"),
    (
        "agent_bad_token_hash",
        15,
        "token_sha256 must be 64 hex characters",
    ),
    ("agent_token_hash_not_hex", 15, "not 0-9 or a-f"),
    ("route_unknown_tenant", 14, "unknown tenant `acne`"),
    ("route_unknown_agent", 14, "unknown agent `bott`"),
    ("route_tenants_and_agents", 14, "not both"),
    ("route_empty_tenants", 14, "`tenants = []` names no tenant"),
    ("route_missing_id", 12, "route needs an `id`"),
    ("route_no_hosts", 12, "route has no `hosts`"),
    ("route_empty_hosts", 14, "empty `hosts` list"),
    ("host_middle_wildcard", 16, "only allowed as a leading `*.`"),
    ("host_partial_wildcard", 14, "not a whole leading label"),
    ("host_double_wildcard", 14, "more than one `*`"),
    (
        "host_bare_wildcard",
        14,
        "a bare `*` would match every host",
    ),
    ("host_non_ascii", 14, "punycode (xn--"),
    (
        "host_with_port",
        14,
        "includes a port; write the host alone",
    ),
    ("host_url", 14, "looks like a URL"),
    (
        "host_bad_ip_literal",
        14,
        "looks like an IP address but is not a valid one",
    ),
    ("host_invalid_char", 14, "not allowed in a host name"),
    ("host_label_too_long", 14, "maximum is 63"),
    ("port_zero", 15, "port 0 is out of range"),
    ("port_out_of_range", 15, "port 70000 is out of range"),
    ("route_empty_ports", 15, "empty `ports` list"),
    ("method_unknown", 15, "unknown method `PSOT`"),
    ("method_not_token", 15, "not an HTTP method token"),
    ("method_star", 15, "remove `methods` to allow any method"),
    ("route_empty_methods", 15, "empty `methods` list"),
    ("path_no_leading_slash", 15, "must start with `/`"),
    ("path_middle_star", 15, "only a trailing `*` is allowed"),
    ("path_with_query", 15, "drop everything from `?`"),
    ("path_dot_segment", 15, "write the normalized path"),
    ("route_empty_paths", 15, "empty `paths` list"),
    ("action_missing", 12, "route needs an `action`"),
    (
        "approve_passthrough",
        12,
        "cannot hold requests for approval",
    ),
    ("action_unknown", 15, "unknown action \"permit\""),
    // Key injection and budgets.
    (
        "inject_key_unknown_provider",
        16,
        "inject_key `opneai` is not a catalog provider",
    ),
    (
        "inject_key_on_deny_route",
        16,
        "a deny route forwards nothing, so there is no request to inject a key into",
    ),
    (
        "inject_key_on_passthrough_route",
        17,
        "never sees the request headers a key goes in",
    ),
    (
        "inject_key_other_providers_host",
        16,
        "would send the `anthropic` key to api.openai.com, which is a host of provider `openai`",
    ),
    (
        "inject_key_not_in_providers",
        17,
        "inject_key `anthropic` is not in this route's `providers`",
    ),
    ("budget_no_limits", 16, "`budget` sets no limit"),
    (
        "budget_zero",
        16,
        "0 is out of range; use a positive number",
    ),
    (
        "budget_negative",
        16,
        "-5 is out of range; use a positive number",
    ),
    (
        "budget_requests_too_large",
        16,
        "5000000000 is out of range",
    ),
    (
        "budget_hard_cap_without_tokens",
        16,
        "`hard_cap` is about tokens and needs `tokens_per_day`",
    ),
    (
        "budget_reserve_above_day",
        16,
        "default_reserve 2000 is above tokens_per_day 1000",
    ),
    (
        "budget_reserve_above_hard_cap",
        16,
        "default_reserve 1024 is above hard_cap 512",
    ),
    (
        "budget_unknown_key",
        16,
        "unknown field `tokens_per_dya` in a `budget` table",
    ),
    (
        "budget_on_deny_route",
        16,
        "a deny route forwards nothing, so a `budget` on it has nothing to count",
    ),
    (
        "budget_on_passthrough_route",
        17,
        "passthrough route cannot enforce `budget`",
    ),
    ("tenant_budget_no_limits", 6, "`budget` sets no limit"),
    ("agent_budget_zero", 11, "use a positive number"),
    (
        "vault_master_key_is_vault",
        6,
        "master_key_file is the vault file itself",
    ),
    ("mode_unknown", 16, "unknown mode \"splice\""),
    (
        "passthrough_with_methods",
        17,
        "passthrough route cannot enforce `methods`",
    ),
    (
        "passthrough_with_paths",
        17,
        "passthrough route cannot enforce `paths`",
    ),
    ("allow_private_bad_cidr", 16, "is not a network"),
    ("duration_bad", 13, "is not a duration"),
    ("duration_number", 13, "durations are strings with a unit"),
    ("duration_zero", 13, "is zero"),
    ("ledger_sync_unknown", 8, "unknown ledger sync"),
    (
        "ledger_queue_capacity_too_large",
        8,
        "queue_capacity must be at most 16777216",
    ),
    ("state_backend_unknown", 8, "unknown state backend \"etcd\""),
    (
        "state_redis_without_url",
        8,
        "backend = \"redis\" needs `url`",
    ),
    ("state_url_bad", 9, "`99999` is not a port"),
    ("state_url_tls", 9, "(rediss://) is not supported"),
    (
        "state_url_without_redis",
        8,
        "`url` only applies to backend = \"redis\"",
    ),
    ("limit_not_positive", 13, "use a positive number"),
    ("ca_cache_capacity_negative", 13, "use a positive number"),
    ("empty_path_setting", 13, "the path is empty"),
    ("resolve_bad", 13, "is not IP:PORT"),
    ("resolve_missing_parts", 13, "write HOST:PORT:ADDR:PORT"),
    ("admin_bind_bad", 13, "is not a bind address"),
    ("listener_bind_bad", 14, "is not a bind address"),
    ("listener_missing_bind", 12, "listener needs a `bind`"),
    (
        "listener_duplicate_name",
        17,
        "duplicate listener name `forward`",
    ),
    (
        "listener_duplicate_bind",
        18,
        "duplicate listener bind 127.0.0.1:8080",
    ),
    ("listener_bind_is_admin_bind", 17, "is also the admin bind"),
    ("transparent_without_agent", 12, "needs `agent = \"…\"`"),
    ("transparent_with_basic_auth", 16, "takes no credentials"),
    (
        "transparent_fixed_agent_off_loopback",
        16,
        "lets anyone who can reach it act as agent `bot`",
    ),
    (
        "transparent_source_unknown_agent",
        18,
        "unknown agent `ghost`",
    ),
    (
        "sources_on_forward_listener",
        15,
        "`sources` only applies to a listener with mode = \"transparent\"",
    ),
    ("dns_without_bind", 12, "[dns] needs a `bind` address"),
    ("dns_bad_source_cidr", 14, "is not a network"),
    (
        "listener_mode_unknown",
        15,
        "unknown listener mode \"reverse\"",
    ),
    ("listeners_empty", 3, "`listeners` is empty"),
    ("auth_unknown", 15, "unknown auth \"bearer\""),
    ("auth_none_without_agent", 15, "needs `agent = "),
    ("auth_none_unknown_agent", 16, "unknown agent `ghost`"),
    ("auth_none_non_loopback", 15, "force_unauthenticated = true"),
    (
        "auth_basic_with_agent",
        16,
        "`agent` only applies to a listener with auth = \"none\"",
    ),
    // Models, operations, providers, detectors and narrowing.
    (
        "model_middle_star",
        16,
        "only a trailing `*` is allowed, as in `gpt-4.1-*`",
    ),
    ("route_empty_models", 16, "empty `models` list"),
    ("model_star_only", 16, "matches every model"),
    ("operation_unknown", 16, "unknown operation `chatting`"),
    ("route_empty_operations", 16, "empty `operations` list"),
    ("provider_unknown", 16, "unknown provider `opneai`"),
    ("route_empty_providers", 16, "empty `providers` list"),
    (
        "detector_mode_unknown",
        16,
        "unknown detector mode \"deny\"",
    ),
    (
        "detector_sensitivity_unknown",
        16,
        "unknown detector sensitivity \"paranoid\"; use \"balanced\" or \"high\"",
    ),
    ("detector_unknown", 16, "unknown field `pii`"),
    (
        "detectors_on_deny_route",
        16,
        "`detectors` has nothing to do",
    ),
    (
        "narrow_without_narrow_action",
        16,
        "`narrow` only applies to a route with action = \"narrow\"",
    ),
    (
        "narrow_action_without_table",
        15,
        "needs a `narrow` table saying how",
    ),
    ("narrow_empty", 16, "`narrow` sets nothing"),
    (
        "narrow_max_tokens_not_positive",
        16,
        "use a positive number",
    ),
    (
        "narrow_fallback_not_in_models",
        17,
        "is not in this route's `models`",
    ),
    ("narrow_fallback_pattern", 16, "is a pattern"),
    ("narrow_unknown_key", 16, "unknown field `max_tokns`"),
    ("narrow_empty_tool_name", 16, "a tools_allow entry is empty"),
    (
        "passthrough_with_models",
        17,
        "passthrough route cannot enforce `models`",
    ),
    (
        "passthrough_with_detectors",
        17,
        "passthrough route cannot enforce `detectors`",
    ),
    (
        "passthrough_narrow",
        17,
        "passthrough route cannot enforce `narrow`",
    ),
    // The provider catalog.
    ("provider_missing_id", 12, "provider needs an `id`"),
    (
        "provider_bad_id",
        13,
        "provider id `my provider` is not valid",
    ),
    ("provider_duplicate_id", 17, "duplicate provider id `local`"),
    ("provider_no_hosts", 12, "provider has no `hosts`"),
    (
        "provider_empty_hosts",
        14,
        "provider has an empty `hosts` list",
    ),
    ("provider_host_wildcard_tld", 14, "in its last two labels"),
    ("provider_host_bad_char", 14, "has the character '_'"),
    ("provider_api_unknown", 15, "unknown api \"openapi\""),
    ("provider_model_from_bad", 15, "unknown source `header`"),
    ("provider_empty_model_from", 15, "empty `model_from` list"),
    (
        "provider_auth_format_without_key",
        15,
        "must contain `{key}` exactly once",
    ),
    ("provider_auth_header_hop_by_hop", 15, "hop-by-hop"),
    ("provider_auth_header_bad", 15, "is not a header name"),
];

#[test]
fn each_invalid_fixture_reports_its_one_error_at_the_offending_line() {
    let mut failures = Vec::new();
    for &(name, line, fragment) in INVALID {
        let file = format!("{name}.toml");
        let errors = match parse_config(&file, &fixture("invalid", name)) {
            Ok(_) => {
                failures.push(format!("{name}: parsed without error"));
                continue;
            }
            Err(e) => e.errors,
        };
        let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
        if errors.len() != 1 {
            failures.push(format!("{name}: expected 1 error, got {rendered:#?}"));
            continue;
        }
        let error = &errors[0];
        if error.file != file || error.line != line || !error.message.contains(fragment) {
            failures.push(format!(
                "{name}: expected line {line} containing {fragment:?}, got {}",
                rendered[0]
            ));
        }
        if error.col == 0 {
            failures.push(format!("{name}: columns are 1-based, got {}", rendered[0]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_invalid_fixture_file_is_in_the_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir: {e}")) {
        let path: PathBuf = entry.unwrap_or_else(|e| panic!("entry: {e}")).path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if !INVALID.iter().any(|(name, _, _)| *name == stem) {
            missing.push(stem);
        }
    }
    assert!(
        missing.is_empty(),
        "fixtures without a table row: {missing:?}"
    );
}

#[test]
fn a_file_with_several_errors_reports_all_of_them_at_once_in_file_order() {
    let text = fixture("invalid_multi", "several_errors");
    let errors = parse_config("several_errors.toml", &text)
        .err()
        .unwrap_or_else(|| panic!("several_errors.toml must not parse"))
        .errors;
    let expected: &[(usize, &str)] = &[
        (2, "unsupported version 3"),
        (10, "token_sha256 must be 64 hex characters"),
        (14, "unknown tenant `nope`"),
        (15, "only allowed as a leading `*.`"),
        (16, "port 0 is out of range"),
        (17, "unknown method `FETCH`"),
        (18, "must start with `/`"),
        (19, "unknown action \"hold\""),
        (22, "is not a duration"),
        (26, "force_unauthenticated = true"),
    ];
    let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), expected.len(), "{rendered:#?}");
    for (error, (line, fragment)) in errors.iter().zip(expected) {
        assert_eq!(error.line, *line, "{rendered:#?}");
        assert!(error.message.contains(fragment), "{rendered:#?}");
    }
}

#[test]
fn config_errors_display_one_file_line_col_message_per_line() {
    let text = fixture("invalid_multi", "several_errors");
    let shown = match parse_config("several_errors.toml", &text) {
        Ok(_) => panic!("several_errors.toml must not parse"),
        Err(e) => e.to_string(),
    };
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 10, "{shown}");
    assert!(
        lines[0].starts_with("several_errors.toml:2:11: "),
        "{shown}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("several_errors.toml:")),
        "{shown}"
    );
}

#[test]
fn embedded_default_parses_and_allows_model_providers_only() {
    let config = parse_config("<embedded>", EMBEDDED_DEFAULT)
        .unwrap_or_else(|e| panic!("embedded default must parse:\n{e}"));
    assert_eq!(config.listeners.len(), 1);
    let listener = &config.listeners[0];
    assert_eq!(listener.name, "forward");
    assert_eq!(listener.bind, SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)));
    assert_eq!(listener.mode, ListenerMode::Forward);
    assert_eq!(
        listener.auth,
        ListenerAuth::None {
            agent: "local".to_owned()
        }
    );
    assert_eq!(
        config.admin.bind,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9901))
    );
    assert_eq!(config.ca.dir, PathBuf::from(".portcullis/ca"));
    assert_eq!(config.ledger.dir, PathBuf::from(".portcullis/ledger"));

    let policy = &config.policy;
    assert!(policy.agent("local").is_some());
    assert_eq!(policy.routes().len(), 1);
    let route = &policy.routes()[0];
    assert_eq!(route.id, "model-providers");
    assert_eq!(route.action, Action::Allow);
    assert_eq!(route.mode, Mode::Intercept);
    assert!(route.websocket);
    assert_eq!(route.ports, vec![443]);
    assert_eq!(route.hosts.len(), 21);
    for host in [
        "api.openai.com",
        "myres.openai.azure.com",
        "api.anthropic.com",
        "api.x.ai",
    ] {
        let host = Host::parse(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(route.matches_host(&host), "{host} should be allowed");
    }
    for host in [
        "example.com",
        "openai.azure.com",
        "evil.api.openai.com.attacker.net",
    ] {
        let host = Host::parse(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(!route.matches_host(&host), "{host} should not be allowed");
    }
}

#[test]
fn omitted_sections_take_their_documented_defaults() {
    let config = parse_config("min.toml", "version = 1\n")
        .unwrap_or_else(|e| panic!("minimal config must parse:\n{e}"));
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(
        config.listeners[0].bind,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
    );
    assert_eq!(config.listeners[0].auth, ListenerAuth::Basic);
    assert_eq!(
        config.admin.bind,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9901))
    );
    assert_eq!(config.ca.leaf_ttl, Duration::from_secs(7 * 86_400));
    assert_eq!(config.ca.cache_capacity, 10_000);
    assert_eq!(config.upstream.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.upstream.tls_timeout, Duration::from_secs(10));
    assert_eq!(
        config.upstream.response_header_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(config.upstream.idle_timeout, Duration::from_secs(90));
    assert_eq!(config.limits.client_header_timeout, Duration::from_secs(10));
    assert_eq!(config.limits.body_progress_timeout, Duration::from_secs(30));
    assert_eq!(config.limits.client_idle_timeout, Duration::from_secs(120));
    assert_eq!(config.limits.max_header_bytes, 64 * 1024);
    assert_eq!(config.limits.max_inspect_body, 8 * 1024 * 1024);
    assert_eq!(config.limits.max_connections, 10_000);
    assert_eq!(config.limits.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.ledger.queue_capacity, 65_536);
    assert!(config.policy.routes().is_empty());
}

#[test]
fn full_config_parses_every_field_into_its_typed_value() {
    let text = fixture("valid", "full");
    let config = parse_config("full.toml", &text).unwrap_or_else(|e| panic!("full.toml:\n{e}"));

    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.listeners[1].name, "sidecar");
    assert_eq!(
        config.listeners[1].bind,
        "0.0.0.0:8082"
            .parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("{e}"))
    );
    assert_eq!(
        config.listeners[1].auth,
        ListenerAuth::None {
            agent: "sidecar-bot".to_owned()
        }
    );
    assert_eq!(
        config.admin.bind,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9911))
    );
    assert_eq!(config.ca.dir, PathBuf::from("/var/lib/portcullis/ca"));
    assert_eq!(config.ca.leaf_ttl, Duration::from_secs(2 * 3600));
    assert_eq!(config.ca.cache_capacity, 500);
    assert_eq!(
        config.ledger.dir,
        PathBuf::from("/var/lib/portcullis/ledger")
    );
    assert_eq!(config.ledger.queue_capacity, 4096);
    assert_eq!(
        config.upstream.extra_ca,
        vec![PathBuf::from("tests/origin-ca.pem")]
    );
    assert_eq!(
        config.upstream.resolve,
        vec![
            ResolveEntry {
                host: Host::Name("api.openai.com".to_owned()),
                port: 443,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 4443)),
            },
            ResolveEntry {
                host: Host::Name("api.anthropic.com".to_owned()),
                port: 443,
                addr: "[::1]:4444".parse().unwrap_or_else(|e| panic!("{e}")),
            },
        ]
    );
    assert_eq!(config.upstream.connect_timeout, Duration::from_millis(1500));
    assert_eq!(config.upstream.idle_timeout, Duration::from_secs(5 * 60));
    assert_eq!(config.limits.max_header_bytes, 32_768);
    assert_eq!(config.limits.body_progress_timeout, Duration::from_secs(7));
    assert_eq!(config.limits.client_idle_timeout, Duration::from_secs(45));
    assert_eq!(config.limits.max_inspect_body, 1_048_576);
    assert_eq!(config.limits.shutdown_grace, Duration::ZERO);

    let policy = &config.policy;
    assert_eq!(policy.tenants(), ["acme", "globex"]);
    assert_eq!(policy.agents().len(), 3);
    assert_eq!(policy.hash_hex().len(), 64);
    let ids: Vec<&str> = policy.routes().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "acme-block-files",
            "acme-openai",
            "globex-internal",
            "sidecar-anthropic"
        ]
    );

    let deny = &policy.routes()[0];
    assert_eq!(deny.action, Action::Deny);
    assert_eq!(
        deny.ports,
        vec![443, 80],
        "deny routes cover plain HTTP by default"
    );

    let openai = &policy.routes()[1];
    assert_eq!(openai.tenants, ["acme"]);
    assert_eq!(openai.methods, ["POST", "GET"], "methods are uppercased");
    assert_eq!(
        openai.paths,
        [
            PathPattern::Exact("/v1/chat/completions".to_owned()),
            PathPattern::Prefix("/v1/models/".to_owned()),
        ]
    );
    assert!(openai.websocket);

    let internal = &policy.routes()[2];
    assert_eq!(
        internal.ports,
        vec![443, 80],
        "allow_plaintext adds port 80"
    );
    assert!(internal.allow_plaintext);
    assert!(internal.allows_private(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
    assert!(
        internal.allows_private(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        "a bare IP is a /32"
    );
    assert!(!internal.allows_private(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4))));
    assert!(internal.allows_private("::ffff:127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"))));

    let sidecar = &policy.routes()[3];
    assert_eq!(sidecar.agents, ["sidecar-bot"]);
    assert_eq!(sidecar.mode, Mode::Passthrough);
    assert_eq!(sidecar.ports, vec![443, 8443]);
}

#[test]
fn policy_hash_is_the_sha256_of_the_config_text() {
    let config = parse_config("min.toml", "version = 1\n").unwrap_or_else(|e| panic!("{e}"));
    // sha256("version = 1\n")
    assert_eq!(
        config.policy.hash_hex(),
        "dbab12665d98aef021ba64953c61b0ed8a908cfb56a1c01e2fcb4b052b71a2a1"
    );
}

#[test]
fn resolve_entry_parses_names_v4_and_bracketed_v6() {
    let entry =
        ResolveEntry::parse("API.OpenAI.com:443:127.0.0.1:4443").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry.host, Host::Name("api.openai.com".to_owned()));
    assert_eq!(entry.port, 443);
    assert_eq!(entry.addr, SocketAddr::from((Ipv4Addr::LOCALHOST, 4443)));
    let entry =
        ResolveEntry::parse("example.com:8443:[::1]:9443").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        entry.addr,
        "[::1]:9443"
            .parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("{e}"))
    );
}

#[test]
fn resolve_entry_rejects_missing_parts_names_as_addresses_and_bad_ports() {
    for bad in [
        "",
        "api.openai.com",
        "api.openai.com:443",
        "api.openai.com:443:127.0.0.1",
        "api.openai.com:0:127.0.0.1:4443",
        "api.openai.com:443:127.0.0.1:0",
        "api.openai.com:443:127.0.0.1:99999",
        "api.openai.com:443:localhost:4443",
        "api.openai.com:https:127.0.0.1:4443",
        "api.openai.com:443:[::1:4443",
    ] {
        assert!(
            ResolveEntry::parse(bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn the_commented_example_in_the_embedded_default_parses() {
    let begin = "# --- example: begin";
    let end = "# --- example: end";
    let start = EMBEDDED_DEFAULT
        .find(begin)
        .unwrap_or_else(|| panic!("no example block"));
    let stop = EMBEDDED_DEFAULT
        .find(end)
        .unwrap_or_else(|| panic!("no example end"));
    let example: String = EMBEDDED_DEFAULT[start + begin.len()..stop]
        .lines()
        .map(|line| {
            line.strip_prefix("# ")
                .or_else(|| line.strip_prefix('#'))
                .unwrap_or(line)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let text = format!(
        "version = 1\n[[tenants]]\nid = \"acme\"\n[[agents]]\nid = \"research-bot\"\ntenant = \"acme\"\ntoken_sha256 = \"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\"\n{example}\n"
    );
    let config = parse_config("example.toml", &text)
        .unwrap_or_else(|e| panic!("the example must parse:\n{e}\n---\n{text}"));
    assert_eq!(config.policy.routes().len(), 2);
    assert!(config.policy.provider("local-vllm").is_some());
    let route = &config.policy.routes()[0];
    assert_eq!(route.inject_key.as_deref(), Some("openai"));
    assert_eq!(route.budget.as_ref().and_then(|b| b.hard_cap), Some(8192));
    assert!(config.vault.master_key_file.is_some());
}

// ---- every error at once, unknown keys included ------------------------------------------

const AGENT_AND_TENANT: &str = r#"version = 1

[[tenants]]
id = "acme"

[[agents]]
id = "bot"
tenant = "acme"
token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
"#;

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

#[test]
fn check_reports_unknown_key_and_invalid_value_together() {
    let text = format!(
        r#"{AGENT_AND_TENANT}
[ledger]
sycn = "always"

[[routes]]
id = "r1"
hosts = ["api.*.example.com"]
action = "permit"
"#
    );
    let errors = errors_of("both.toml", &text);
    let rendered: Vec<&str> = errors.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(errors.len(), 3, "{rendered:#?}");
    assert_eq!(errors[0].0, 12, "{rendered:#?}");
    assert!(
        rendered[0].contains("unknown field `sycn` in [ledger]"),
        "{rendered:#?}"
    );
    assert!(rendered[0].starts_with("both.toml:12:1: "), "{rendered:#?}");
    assert_eq!(errors[1].0, 16, "{rendered:#?}");
    assert!(rendered[1].contains("api.*.example.com"), "{rendered:#?}");
    assert_eq!(errors[2].0, 17, "{rendered:#?}");
    assert!(
        rendered[2].contains("unknown action \"permit\""),
        "{rendered:#?}"
    );
}

#[test]
fn check_reports_two_unknown_keys_in_different_tables() {
    let text = format!(
        r#"{AGENT_AND_TENANT}
[upstream]
connect_timout = "5s"

[[routes]]
id = "r1"
hosts = ["api.openai.com"]
action = "allow"
detectors = {{ injection = "block", pii = "warn" }}
"#
    );
    let errors = errors_of("two.toml", &text);
    let rendered: Vec<&str> = errors.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(errors.len(), 2, "{rendered:#?}");
    assert_eq!(errors[0].0, 12, "{rendered:#?}");
    assert!(rendered[0].contains("unknown field `connect_timout` in [upstream]"));
    assert_eq!(errors[1].0, 18, "{rendered:#?}");
    assert!(rendered[1].contains("unknown field `pii`"), "{rendered:#?}");
    assert!(rendered[1].starts_with("two.toml:18:"), "{rendered:#?}");
}

#[test]
fn unknown_keys_in_two_entries_of_one_array_are_both_reported() {
    let text = format!(
        r#"{AGENT_AND_TENANT}
[[routes]]
id = "r1"
hots = ["api.openai.com"]
hosts = ["api.openai.com"]
action = "allow"

[[routes]]
id = "r2"
hosts = ["api.anthropic.com"]
acton = "allow"
action = "allow"
"#
    );
    let errors = errors_of("array.toml", &text);
    let lines: Vec<usize> = errors.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [13, 20], "{errors:#?}");
}

#[test]
fn a_misspelled_required_key_is_reported_once_as_unknown() {
    let text = format!(
        r#"{AGENT_AND_TENANT}
[[routes]]
idd = "r1"
hosts = ["api.openai.com"]
action = "allow"
"#
    );
    let errors = errors_of("typo.toml", &text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].1.contains("unknown field `idd`"), "{errors:#?}");
}

#[test]
fn an_unknown_top_level_table_is_reported_with_the_rest() {
    let text = format!(
        r#"{AGENT_AND_TENANT}
[listner]
bind = "127.0.0.1:8080"

[limits]
max_inspect_body = 0
"#
    );
    let errors = errors_of("top.toml", &text);
    let rendered: Vec<&str> = errors.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(errors.len(), 2, "{rendered:#?}");
    assert!(rendered[0].contains("unknown field `listner` in the top level"));
    assert_eq!(errors[1].0, 15, "{rendered:#?}");
}

// ---- key injection, budgets and the vault ---------------------------------------------

#[test]
fn inject_key_names_a_catalog_provider_and_is_stored_on_the_route() {
    let text = format!(
        r#"{AGENT_AND_TENANT}
[[providers]]
id = "local-vllm"
hosts = ["vllm.internal.example"]
auth_header = "x-api-key"
auth_format = "{{key}}"

[[routes]]
id = "openai"
hosts = ["api.openai.com"]
action = "allow"
inject_key = "openai"

[[routes]]
id = "vllm"
hosts = ["vllm.internal.example"]
action = "warn"
inject_key = "local-vllm"

[[routes]]
id = "plain"
hosts = ["api.anthropic.com"]
action = "allow"
"#
    );
    let config = parse_config("keys.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let routes = config.policy.routes();
    assert_eq!(routes[0].inject_key.as_deref(), Some("openai"));
    assert_eq!(routes[1].inject_key.as_deref(), Some("local-vllm"));
    assert_eq!(routes[2].inject_key, None);

    // The slot is named only for a request classified as that provider.
    let classify = |host: &str| {
        let host = Host::parse(host).unwrap_or_else(|e| panic!("{e}"));
        config
            .policy
            .classify(&host, "POST", "/v1/chat/completions", None, None)
    };
    assert_eq!(
        routes[0].key_slot(&classify("api.openai.com")),
        Some("openai")
    );
    assert_eq!(routes[0].key_slot(&classify("api.anthropic.com")), None);
    assert_eq!(routes[0].key_slot(&classify("example.com")), None);
    assert_eq!(routes[2].key_slot(&classify("api.anthropic.com")), None);
}

#[test]
fn inject_key_with_unknown_provider_is_refused_at_its_line_and_column_listing_known_ids() {
    let text = fixture("invalid", "inject_key_unknown_provider");
    let errors = parse_config("k.toml", &text)
        .err()
        .unwrap_or_else(|| panic!("must not parse"))
        .errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let shown = errors[0].to_string();
    assert!(shown.starts_with("k.toml:16:14: "), "{shown}");
    for id in ["openai", "anthropic", "gemini", "perplexity"] {
        assert!(shown.contains(id), "{shown} should list `{id}`");
    }
}

#[test]
fn inject_key_on_a_deny_route_is_refused() {
    let text = fixture("invalid", "inject_key_on_deny_route");
    let errors = parse_config("d.toml", &text)
        .err()
        .unwrap_or_else(|| panic!("must not parse"))
        .errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].line, errors[0].col), (16, 14), "{errors:#?}");
    assert!(errors[0].message.contains("deny route forwards nothing"));
}

#[test]
fn budget_without_any_limit_is_refused() {
    let text = format!(
        r#"{AGENT_AND_TENANT}
[[routes]]
id = "r1"
hosts = ["api.openai.com"]
action = "allow"
budget = {{}}
"#
    );
    let errors = errors_of("b.toml", &text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].0, 15, "{errors:#?}");
    assert!(
        errors[0].1.contains("`budget` sets no limit"),
        "{errors:#?}"
    );
}

#[test]
fn zero_and_negative_budget_values_are_all_refused_at_once() {
    let text = format!(
        r#"{AGENT_AND_TENANT}
[[routes]]
id = "r1"
hosts = ["api.openai.com"]
action = "allow"
budget = {{ tokens_per_day = 0, requests_per_minute = -1, default_reserve = 0, hard_cap = -10 }}
"#
    );
    let errors = errors_of("b.toml", &text);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors
        .iter()
        .all(|(line, e)| *line == 15 && e.contains("use a positive number")));
}

#[test]
fn route_tenant_and_agent_budgets_are_parsed_with_default_reserve() {
    let text = r#"version = 1

[[tenants]]
id = "acme"
budget = { tokens_per_day = 2_000_000, requests_per_minute = 120, default_reserve = 2048, hard_cap = 8192 }

[[tenants]]
id = "globex"

[[agents]]
id = "bot"
tenant = "acme"
token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
budget = { requests_per_minute = 30 }

[[agents]]
id = "other"
tenant = "globex"
token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"

[[routes]]
id = "r1"
hosts = ["api.openai.com"]
action = "allow"
budget = { tokens_per_day = 100_000 }
"#;
    let config = parse_config("budgets.toml", text).unwrap_or_else(|e| panic!("{e}"));
    let policy = &config.policy;
    assert_eq!(
        policy.tenant_budget("acme"),
        Some(&BudgetSpec {
            tokens_per_day: Some(2_000_000),
            requests_per_minute: Some(120),
            default_reserve: 2048,
            hard_cap: Some(8192),
        })
    );
    assert_eq!(policy.tenant_budget("globex"), None);
    assert_eq!(policy.tenant_budget("nobody"), None);
    let bot = policy.agent("bot").unwrap_or_else(|| panic!("bot"));
    assert_eq!(
        bot.budget,
        Some(BudgetSpec {
            tokens_per_day: None,
            requests_per_minute: Some(30),
            default_reserve: BudgetSpec::DEFAULT_RESERVE,
            hard_cap: None,
        })
    );
    assert_eq!(policy.agent("other").and_then(|a| a.budget.clone()), None);
    assert_eq!(
        policy.routes()[0].budget,
        Some(BudgetSpec {
            tokens_per_day: Some(100_000),
            requests_per_minute: None,
            default_reserve: 1024,
            hard_cap: None,
        })
    );
}

#[test]
fn unknown_keys_inside_budgets_are_all_reported_by_the_schema() {
    let text = r#"version = 1

[[tenants]]
id = "acme"
budget = { tokens_per_day = 10, token_per_day = 10 }

[[agents]]
id = "bot"
tenant = "acme"
token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
budget = { rpm = 10, requests_per_minute = 10 }

[[routes]]
id = "r1"
hosts = ["api.openai.com"]
action = "allow"
budget = { tokens_per_day = 10, reserve = 5 }
"#;
    let errors = errors_of("u.toml", text);
    let lines: Vec<usize> = errors.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [5, 11, 17], "{errors:#?}");
    for (key, (_, e)) in ["token_per_day", "rpm", "reserve"].iter().zip(&errors) {
        assert!(
            e.contains(&format!("unknown field `{key}` in a `budget` table")),
            "{e}"
        );
        assert!(e.contains("`tokens_per_day`, `requests_per_minute`"), "{e}");
    }
}

#[test]
fn vault_takes_its_defaults_and_reads_both_paths() {
    let config = parse_config("min.toml", "version = 1\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.vault,
        VaultConfig {
            path: PathBuf::from(".portcullis/vault.json"),
            master_key_file: None,
        }
    );
    let config = parse_config("v.toml", "version = 1\n[vault]\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.vault.path, PathBuf::from(".portcullis/vault.json"));
    let text = "version = 1\n[vault]\npath = \"/etc/portcullis/vault.json\"\nmaster_key_file = \"/run/secrets/portcullis-master\"\n";
    let config = parse_config("v.toml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.vault.path,
        PathBuf::from("/etc/portcullis/vault.json")
    );
    assert_eq!(
        config.vault.master_key_file,
        Some(PathBuf::from("/run/secrets/portcullis-master"))
    );
}

#[test]
fn vault_with_an_unknown_key_or_an_empty_path_is_refused() {
    let text = "version = 1\n[vault]\npath = \"\"\nmaster_key = \"k\"\n";
    let errors = errors_of("v.toml", text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].1.contains("the path is empty"), "{errors:#?}");
    assert!(
        errors[1]
            .1
            .contains("unknown field `master_key` in [vault]"),
        "{errors:#?}"
    );
}

#[test]
#[allow(clippy::unwrap_used)]
fn sidecar_config_maps_transparent_listeners_and_the_dns_responder_to_agents() {
    let text = fixture("valid", "sidecar");
    let config = parse_config("sidecar.toml", &text).unwrap_or_else(|e| panic!("sidecar:\n{e}"));
    assert_eq!(config.listeners.len(), 3);
    assert!(config
        .listeners
        .iter()
        .all(|l| l.mode == ListenerMode::Transparent));
    let fixed = &config.listeners[0].auth;
    assert_eq!(
        fixed.agent_for_peer("192.0.2.9".parse().unwrap()),
        Some("coder")
    );
    let node = &config.listeners[2].auth;
    assert_eq!(
        node.agent_for_peer("10.1.200.3".parse().unwrap()),
        Some("coder")
    );
    assert_eq!(
        node.agent_for_peer("10.2.0.7".parse().unwrap()),
        Some("batch")
    );
    // A v4 peer seen through a dual-stack socket is still that v4 peer.
    assert_eq!(
        node.agent_for_peer("::ffff:10.2.0.7".parse().unwrap()),
        Some("batch")
    );
    assert_eq!(node.agent_for_peer("10.2.0.8".parse().unwrap()), None);
    assert_eq!(
        ListenerAuth::Basic.agent_for_peer(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        None
    );
    let dns = config.dns.expect("[dns] is set");
    assert_eq!(dns.bind, "127.0.0.1:15053".parse::<SocketAddr>().unwrap());
    assert_eq!(dns.ttl, 5);
    assert_eq!(
        dns.auth.agent_for_peer(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Some("coder")
    );
}

#[test]
#[allow(clippy::unwrap_used)]
fn the_dns_responder_answers_only_names_a_route_of_the_agent_allows() {
    let text = fixture("valid", "sidecar");
    let config = parse_config("sidecar.toml", &text).unwrap();
    let policy = &config.policy;
    let coder = policy.agent("coder").unwrap();
    let allowed = Host::parse("api.openai.com").unwrap();
    assert_eq!(policy.dns_route(coder, &allowed).unwrap().id, "openai");
    let other = Host::parse("exfil.example").unwrap();
    assert!(policy.dns_route(coder, &other).is_err());
}

// ---- [state] ----------------------------------------------------------------------------

#[test]
fn state_defaults_to_memory_and_reads_a_redis_backend() {
    let config = parse_config("min.toml", "version = 1\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.state.backend, StateBackend::Memory);
    let text = "version = 1\n[state]\nbackend = \"memory\"\n";
    let config = parse_config("s.toml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.state.backend, StateBackend::Memory);

    let text = "version = 1\n[state]\nbackend = \"redis\"\nurl = \"redis://:pw@10.0.0.5:6380/2\"\ntimeout = \"250ms\"\n";
    let config = parse_config("s.toml", text).unwrap_or_else(|e| panic!("{e}"));
    let StateBackend::Redis { url, timeout } = &config.state.backend else {
        panic!("{:?}", config.state.backend)
    };
    assert_eq!(url.expose(), "redis://:pw@10.0.0.5:6380/2");
    assert_eq!(url.to_string(), "redis://***@10.0.0.5:6380/2");
    assert_eq!(*timeout, Duration::from_millis(250));

    let text = "version = 1\n[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1\"\n";
    let config = parse_config("s.toml", text).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        config.state.backend,
        StateBackend::Redis { timeout, .. } if timeout == DEFAULT_STATE_TIMEOUT
    ));

    let config = parse_config("full.toml", &fixture("valid", "full"))
        .unwrap_or_else(|e| panic!("full.toml:\n{e}"));
    assert!(matches!(
        &config.state.backend,
        StateBackend::Redis { url, timeout }
            if url.to_string() == "redis://redis.internal:6379/0" && *timeout == Duration::from_secs(1)
    ));
}

#[test]
fn a_redis_url_error_never_echoes_the_password() {
    let errors = errors_of("s.toml", &fixture("invalid", "state_url_bad"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(!errors[0].1.contains("hunter2"), "{errors:#?}");
    assert!(
        errors[0].1.contains("redis://***@redis.internal"),
        "{errors:#?}"
    );
}

#[test]
fn state_with_an_unknown_key_or_a_zero_timeout_is_refused() {
    let text = "version = 1\n[state]\nbackend = \"redis\"\nurl = \"redis://r\"\ntimeout = \"0ms\"\npassword = \"x\"\n";
    let errors = errors_of("s.toml", text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].1.contains("is zero"), "{errors:#?}");
    assert!(
        errors[1].1.contains("unknown field `password` in [state]"),
        "{errors:#?}"
    );
}
