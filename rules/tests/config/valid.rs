//! Valid configs: the embedded default, omitted sections' defaults, a complete file.

use super::*;

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
