//! One fixture per validation rule: each reports its one error at the offending line, and
//! a file with several errors reports them all at once.

use super::*;

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
