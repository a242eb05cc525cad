//! Key injection, budgets, the vault, and the sidecar listeners with the DNS responder.

use super::*;

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
