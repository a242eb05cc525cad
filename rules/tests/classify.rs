//! Classification (SPEC §5): the fixture table of real request shapes, key injection,
//! and catalog entries from the config.

use std::path::Path;

use portcullis_rules::{
    builtin_provider_ids, parse_config, split_host_port, DestinationKind, Host, Operation, Policy,
    ProviderHost, EMBEDDED_DEFAULT,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    method: String,
    url: String,
    body: Option<String>,
    kind: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    operation: Option<String>,
    #[serde(default)]
    stream: bool,
}

struct Url {
    host: Host,
    path: String,
    query: Option<String>,
}

fn split_url(url: &str) -> Url {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{url}: not absolute"));
    let default_port = if scheme.ends_with('s') { 443 } else { 80 };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_query) = rest.split_at(end);
    let (host, _) =
        split_host_port(authority, default_port).unwrap_or_else(|e| panic!("{url}: {e}"));
    let (path, query) = match path_query.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (path_query.to_owned(), None),
    };
    Url { host, path, query }
}

fn policy(text: &str) -> Policy {
    match parse_config("test.toml", text) {
        Ok(config) => {
            std::sync::Arc::try_unwrap(config.policy).unwrap_or_else(|_| panic!("policy is shared"))
        }
        Err(e) => panic!("config must parse:\n{e}"),
    }
}

fn kind_name(kind: DestinationKind) -> &'static str {
    kind.as_str()
}

#[test]
fn every_fixture_request_is_classified_as_its_api_reference_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classify");
    let policy = policy(EMBEDDED_DEFAULT);
    let mut failures = Vec::new();
    let mut per_provider: std::collections::HashMap<String, usize> = Default::default();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let fixture: Fixture =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        for case in fixture.case {
            let url = split_url(&case.url);
            let got = policy.classify(
                &url.host,
                &case.method,
                &url.path,
                url.query.as_deref(),
                case.body.as_deref().map(str::as_bytes),
            );
            let want_kind = case.kind.as_deref().unwrap_or("model_provider");
            let got_tuple = (
                kind_name(got.kind),
                got.provider.as_deref(),
                got.model.as_deref(),
                got.operation.map(|op| op.as_str()),
                got.stream,
            );
            let want_tuple = (
                want_kind,
                case.provider.as_deref(),
                case.model.as_deref(),
                case.operation.as_deref(),
                case.stream,
            );
            if got_tuple != want_tuple {
                failures.push(format!(
                    "{file} / {}:\n  want {want_tuple:?}\n  got  {got_tuple:?}",
                    case.name
                ));
            }
            if got.kind == DestinationKind::ModelProvider && got.key_injection.is_none() {
                failures.push(format!("{file} / {}: no key injection", case.name));
            }
            if let Some(provider) = case.provider {
                *per_provider.entry(provider).or_default() += 1;
            }
        }
    }
    for id in builtin_provider_ids() {
        let n = per_provider.get(id).copied().unwrap_or(0);
        if n < 3 {
            failures.push(format!(
                "provider {id} has {n} fixture cases; at least 3 are required"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_builtin_catalog_covers_every_provider_spec_section_5_lists() {
    let ids: Vec<&str> = builtin_provider_ids().collect();
    assert_eq!(
        ids,
        [
            "openai",
            "azure_openai",
            "anthropic",
            "gemini",
            "vertex",
            "bedrock",
            "mistral",
            "cohere",
            "groq",
            "together",
            "fireworks",
            "openrouter",
            "deepseek",
            "xai",
            "perplexity"
        ]
    );
}

#[test]
fn each_provider_injects_its_key_in_its_own_header() {
    let policy = policy(EMBEDDED_DEFAULT);
    let expect = [
        ("api.openai.com", "authorization", "Bearer {key}"),
        ("myres.openai.azure.com", "api-key", "{key}"),
        ("api.anthropic.com", "x-api-key", "{key}"),
        (
            "generativelanguage.googleapis.com",
            "x-goog-api-key",
            "{key}",
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "authorization",
            "Bearer {key}",
        ),
        (
            "bedrock-runtime.us-east-1.amazonaws.com",
            "authorization",
            "Bearer {key}",
        ),
        ("api.groq.com", "authorization", "Bearer {key}"),
    ];
    for (host, header, format) in expect {
        let class = policy.classify(&Host::Name(host.to_owned()), "POST", "/", None, None);
        let key = class
            .key_injection
            .unwrap_or_else(|| panic!("{host}: no key injection"));
        assert_eq!(
            (key.header.as_str(), key.format.as_str()),
            (header, format),
            "{host}"
        );
    }
}

#[test]
fn provider_host_globs_cover_regions_but_not_lookalike_domains() {
    let glob = |p: &str| ProviderHost::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let name = |h: &str| Host::Name(h.to_owned());
    let vertex = glob("*-aiplatform.googleapis.com");
    assert!(vertex.matches(&name("us-central1-aiplatform.googleapis.com")));
    assert!(!vertex.matches(&name("-aiplatform.googleapis.com")));
    assert!(!vertex.matches(&name("aiplatform.googleapis.com")));
    assert!(!vertex.matches(&name("x.us-central1-aiplatform.googleapis.com")));
    let bedrock = glob("bedrock-runtime.*.amazonaws.com");
    assert!(bedrock.matches(&name("bedrock-runtime.eu-west-3.amazonaws.com")));
    assert!(!bedrock.matches(&name("bedrock-runtime.amazonaws.com")));
    assert!(!bedrock.matches(&name("bedrock-runtime.a.b.amazonaws.com")));
    assert!(!bedrock.matches(&name("bedrock-runtime.us-east-1.amazonaws.com.evil.net")));
    assert!(ProviderHost::parse("api.*.com").is_err());
    assert!(ProviderHost::parse("*").is_err());
    assert!(ProviderHost::parse("a**b.example.com").is_err());
}

#[test]
fn unknown_hosts_and_ip_literals_have_no_provider() {
    let policy = policy(EMBEDDED_DEFAULT);
    for host in ["api.openai.com.evil.net", "openai.azure.com"] {
        let class = policy.classify(
            &Host::Name(host.to_owned()),
            "POST",
            "/v1/chat/completions",
            None,
            None,
        );
        assert_eq!(class.provider, None, "{host}");
        assert_eq!(class.operation, None, "{host}");
        assert_eq!(class.key_injection, None, "{host}");
    }
    let ip = Host::parse("10.0.0.1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        policy.classify(&ip, "GET", "/", None, None).kind,
        DestinationKind::Unknown
    );
}

#[test]
fn a_truncated_or_malformed_body_yields_no_model_rather_than_a_guess() {
    let policy = policy(EMBEDDED_DEFAULT);
    let host = Host::Name("api.openai.com".to_owned());
    for body in [
        &br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hel"#[..],
        b"model=gpt-4o",
        br#"["gpt-4o"]"#,
        br#"{"model": 42}"#,
    ] {
        let class = policy.classify(&host, "POST", "/v1/chat/completions", None, Some(body));
        assert_eq!(class.model, None, "{}", String::from_utf8_lossy(body));
        assert_eq!(class.operation, Some(Operation::Chat));
    }
}

#[test]
fn a_duplicated_model_key_leaves_the_model_unread() {
    // The strict parse refuses a key given twice: neither copy is believed (an inspected
    // route then refuses the request as `body_unparseable`).
    let policy = policy(EMBEDDED_DEFAULT);
    let host = Host::Name("api.openai.com".to_owned());
    let body = br#"{"model": "gpt-4o-mini", "messages": [], "model": "o1-pro"}"#;
    let class = policy.classify(&host, "POST", "/v1/chat/completions", None, Some(body));
    assert_eq!(class.model, None);
}

const CONFIG_PROVIDERS: &str = r#"version = 1

[[providers]]
id = "local-vllm"
hosts = ["vllm.internal.example", "*.inference.example.com"]
api = "openai"
model_from = ["body:model"]
auth_header = "x-vllm-key"
auth_format = "Token {key}"

[[providers]]
id = "gemini"
hosts = ["generativelanguage.googleapis.com", "gemini-proxy.example.com"]
api = "google"
model_from = ["path:models"]
auth_header = "x-goog-api-key"
auth_format = "{key}"

[[routes]]
id = "local"
hosts = ["vllm.internal.example"]
providers = ["local-vllm"]
action = "allow"
"#;

#[test]
fn a_config_provider_extends_the_catalog_and_routes_can_name_it() {
    let policy = policy(CONFIG_PROVIDERS);
    let body = br#"{"model": "qwen2.5-7b", "messages": [], "stream": true}"#;
    for host in ["vllm.internal.example", "gpu1.inference.example.com"] {
        let class = policy.classify(
            &Host::Name(host.to_owned()),
            "POST",
            "/v1/chat/completions",
            None,
            Some(body),
        );
        assert_eq!(class.provider.as_deref(), Some("local-vllm"), "{host}");
        assert_eq!(class.model.as_deref(), Some("qwen2.5-7b"));
        assert_eq!(class.operation, Some(Operation::Chat));
        assert!(class.stream);
        let key = class.key_injection.unwrap_or_else(|| panic!("no key"));
        assert_eq!(
            (key.header.as_str(), key.format.as_str()),
            ("x-vllm-key", "Token {key}")
        );
    }
}

#[test]
fn a_config_provider_with_a_builtin_id_replaces_that_entry() {
    let policy = policy(CONFIG_PROVIDERS);
    let class = policy.classify(
        &Host::Name("gemini-proxy.example.com".to_owned()),
        "POST",
        "/v1beta/models/gemini-2.0-flash:generateContent",
        None,
        None,
    );
    assert_eq!(class.provider.as_deref(), Some("gemini"));
    assert_eq!(class.model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(
        policy
            .providers()
            .iter()
            .filter(|p| p.id == "gemini")
            .count(),
        1
    );
    assert!(policy.provider("openai").is_some(), "other built-ins stay");
}
