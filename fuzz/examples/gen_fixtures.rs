//! Writes the fuzz fixtures (a valid three-segment ledger signed with the fixed test key,
//! and a valid vault under the fixed test master key) and the seed inputs of every corpus:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_fixtures
//! ```
//!
//! Seeds are named `seed-*` and overwritten; whatever the fuzzers added stays. Regenerate
//! the fixtures only on purpose: saved crash inputs of `ledger_verify` and `vault` are
//! flips of the committed fixtures, and mean nothing against new ones.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use portcullis_certs::vault::fuzzing::{encode_secret, write_text, OpenedEntry};
use portcullis_certs::{MasterKey, Secret};
use portcullis_fuzz::{fixture_path, LEDGER_SEED_HEX, VAULT_KEY_B64};
use portcullis_ledger::{ConfigFacts, DecisionFacts, Ledger, LedgerOptions, OutcomeFacts};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result {
    let regenerate = std::env::args().any(|a| a == "--fixtures");
    if regenerate {
        ledger_fixture()?;
        vault_fixture()?;
    }
    seeds()
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn seed(target: &str, name: &str, bytes: &[u8]) -> Result {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn with(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    [prefix, body].concat()
}

fn ledger_fixture() -> Result {
    let tmp = tempfile::tempdir()?;
    let key_path = tmp.path().join("ca").join("ledger-signing.key");
    fs::create_dir_all(key_path.parent().ok_or("no parent")?)?;
    fs::write(&key_path, LEDGER_SEED_HEX)?;
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))?;
    let opts = LedgerOptions {
        dir: tmp.path().join("ledger"),
        signing_key_path: key_path,
        checkpoint_every: 4,
        checkpoint_interval: Duration::from_secs(3600),
        ..LedgerOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Each start opens a new segment: three starts, three segments, each ending in the
    // shutdown checkpoint.
    for run in 0..3u64 {
        rt.block_on(async {
            let ledger = Ledger::open(opts.clone()).await?;
            ledger.append_config(config()).await?;
            for i in 0..3 {
                ledger.append_decision(decision(run * 10 + i)).await?;
                ledger.append_outcome(outcome(run * 10 + i)).await?;
            }
            ledger.shutdown().await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })?;
    }
    let out = fixture_path("ledger");
    fs::create_dir_all(&out)?;
    for name in [
        "segment-00000001.jsonl",
        "segment-00000002.jsonl",
        "segment-00000003.jsonl",
        "checkpoints.log",
        "pubkey",
    ] {
        let from = opts.dir.join(name);
        fs::write(out.join(name), fs::read(&from)?)?;
    }
    Ok(())
}

fn vault_entries() -> Vec<OpenedEntry> {
    let entry = |tenant: &str, provider: &str, key_id: &str, version, active, secret| OpenedEntry {
        tenant: tenant.into(),
        provider: provider.into(),
        key_id: key_id.into(),
        version,
        active,
        secret,
    };
    vec![
        entry(
            "acme",
            "openai",
            "prod",
            1,
            false,
            Secret::api_key("sk-TESTONLY-old-0123456789"),
        ),
        entry(
            "acme",
            "openai",
            "prod",
            2,
            true,
            Secret::api_key("sk-TESTONLY-new-abcdefghij"),
        ),
        entry(
            "globex",
            "anthropic",
            "main",
            1,
            true,
            Secret::api_key("sk-ant-TESTONLY-zyxw"),
        ),
        entry(
            "acme",
            "bedrock",
            "prod",
            1,
            true,
            Secret::aws(
                "AKIATESTONLYEXAMPLE1",
                "TESTONLY/secret",
                Some("TESTONLY-token".into()),
            ),
        ),
    ]
}

fn vault_fixture() -> Result {
    let key = MasterKey::from_base64(VAULT_KEY_B64)?;
    fs::write(
        fixture_path("vault.json"),
        write_text(&key, 3, &vault_entries())?,
    )?;
    Ok(())
}

fn seeds() -> Result {
    // framing: one cut-count byte (0: no cuts), then the client's bytes.
    let heads: &[(&str, &[u8])] = &[
        ("pipelined", b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("chunked", b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("connect", b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: Basic YWdlbnQ6dG9rZW4=\r\n\r\n\x16\x03\x01"),
        ("upgrade", b"GET /v1/realtime HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"),
        ("absolute", b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\nProxy-Authorization: Basic YTpi\r\n\r\n"),
        ("leading_crlf", b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("cl_te", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("dup_cl", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        ("obs_fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
        ("bare_lf", b"GET / HTTP/1.1\nHost: x\n\n"),
        ("http10_te", b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("bad_chunk", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    ];
    for (name, head) in heads {
        seed("framing", name, &with(&[0], head))?;
        seed("framing", &format!("{name}-cut"), &with(&[2, 7, 20], head))?;
    }

    for (name, host) in [
        ("name", "API.OpenAI.com."),
        ("authority", "api.openai.com:443"),
        ("v6", "[::ffff:169.254.169.254]:8443"),
        ("bare_v6", "fd00:ec2::254"),
        ("hex_v4", "0x7f.1"),
        ("decimal_v4", "2130706433:80"),
        ("octal_v4", "0177.0.0.01"),
        ("wildcard", "*.openai.azure.com"),
        ("underscore", "_dmarc.example.com"),
        ("numeric_tld", "foo.123"),
    ] {
        seed("host", name, host.as_bytes())?;
    }

    for (name, path) in [
        ("plain", "/v1/chat/completions"),
        ("escapes", "/v1/%66iles/a%20b%3a"),
        ("dots", "/v1/./x/../y"),
        ("encoded_dot", "/v1/%2e%2e/files"),
        ("params", "/v1/..;x/y;p=1"),
        ("trailing", "/v1/models/"),
        ("backslash", "/v1\\files"),
        ("utf8", "/v1/caf\u{e9}/%C3%A9"),
    ] {
        seed("path", name, path.as_bytes())?;
    }

    let v6 = |s: &str| -> Result<[u8; 16]> { Ok(s.parse::<std::net::Ipv6Addr>()?.octets()) };
    for (name, ip) in [
        ("metadata", "a9fe:a9fe::"),
        ("mapped", "::ffff:169.254.169.254"),
        ("nat64", "64:ff9b::a00:1"),
        ("nat64_local", "64:ff9b:1:a00:1::"),
        ("six_to_four", "2002:c0a8:101::1"),
        ("teredo", "2001::1"),
        ("ula", "fd00:ec2::254"),
        ("public", "2606:4700::1111"),
    ] {
        seed("ssrf", name, &v6(ip)?)?;
    }

    let mut configs = vec![(
        "embedded_default".to_owned(),
        portcullis_rules::EMBEDDED_DEFAULT.as_bytes().to_vec(),
    )];
    for dir in [
        "rules/tests/fixtures/valid",
        "rules/tests/fixtures/invalid",
        "rules/tests/fixtures/invalid_multi",
        "rules/tests/fixtures/classify",
    ] {
        let mut names: Vec<_> = fs::read_dir(root().join(dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        names.sort();
        for p in names
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("x");
            let kind = dir.rsplit('/').next().unwrap_or("x");
            configs.push((format!("{kind}-{stem}"), fs::read(&p)?));
        }
    }
    for p in [
        "deploy/portcullis.example.toml",
        "deploy/sidecar.toml",
        "deploy/docker/portcullis.toml",
    ] {
        configs.push((
            format!("deploy-{}", p.replace('/', "-")),
            fs::read(root().join(p))?,
        ));
    }
    for (name, text) in &configs {
        seed("config", name, text)?;
    }

    let segments: Vec<Vec<u8>> = (1..=3)
        .map(|i| fs::read(fixture_path(&format!("ledger/segment-{i:08}.jsonl"))))
        .collect::<std::io::Result<_>>()?;
    for (i, seg) in segments.iter().enumerate() {
        for (j, line) in seg
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            seed(
                "ledger_line",
                &format!("s{}-l{j}", i + 1),
                &with(&[1, j as u8, 0], line),
            )?;
        }
    }
    let joined = segments.join(&0u8);
    seed("ledger_verify", "plain", &with(&[0], &joined))?;
    seed("ledger_verify", "plain-strict", &with(&[0x80 | 3], &joined))?;
    seed("ledger_verify", "forged", &with(&[2], &joined))?;
    seed(
        "ledger_verify",
        "forged-one-segment",
        &with(&[2], &segments[0]),
    )?;
    seed("ledger_verify", "flip", &[1, 0x10, 0x00, 0x01])?;
    seed("ledger_verify", "flip-newline", &[1, 0xff, 0x00, 0x20])?;

    let vault = fs::read(fixture_path("vault.json"))?;
    seed("vault", "file", &with(&[0], &vault))?;
    seed("vault", "file-resealed", &with(&[1], &vault))?;
    seed("vault", "flip", &[2, 0x40, 0x00, 0x01])?;
    seed("vault", "flip-resealed", &[3, 0x40, 0x01, 0x01])?;
    for (i, e) in vault_entries().iter().enumerate() {
        seed(
            "vault",
            &format!("secret-{i}"),
            &with(&[0], &encode_secret(&e.secret)),
        )?;
    }

    // usage: selector = style + 5 * content type (no cuts).
    let usage_dir = root().join("proxy/tests/fixtures/usage");
    for (file, style) in [
        ("openai_chat.json", 0u8),
        ("openai_chat_stream.sse", 0),
        ("openai_chat_stream_final_choices.sse", 0),
        ("openai_responses.json", 0),
        ("openai_responses_stream.sse", 0),
        ("anthropic_messages.json", 1),
        ("anthropic_stream.sse", 1),
        ("gemini.json", 2),
        ("gemini_stream.sse", 2),
        ("gemini_stream_array.json", 2),
        ("bedrock_converse.json", 3),
        ("bedrock_invoke_anthropic.json", 3),
        ("bedrock_invoke_llama.json", 3),
        ("cohere_chat.json", 4),
        ("cohere_stream.sse", 4),
    ] {
        let kind = if file.ends_with(".sse") { 1 } else { 0 };
        seed(
            "usage",
            file,
            &with(&[style + 5 * kind], &fs::read(usage_dir.join(file))?),
        )?;
    }
    let metadata = aws_message("metadata", br#"{"usage":{"inputTokens":12,"outputTokens":34,"totalTokens":46},"metrics":{"latencyMs":100}}"#);
    seed(
        "usage",
        "bedrock_converse_stream.eventstream",
        &with(&[3 + 10], &metadata),
    )?;
    let chunk = aws_message(
        "chunk",
        br#"{"bytes":"eyJ0eXBlIjoibWVzc2FnZV9zdG9wIiwiYW1hem9uLWJlZHJvY2staW52b2NhdGlvbk1ldHJpY3MiOnsiaW5wdXRUb2tlbkNvdW50IjoxMCwib3V0cHV0VG9rZW5Db3VudCI6MjB9fQ=="}"#,
    );
    seed(
        "usage",
        "bedrock_invoke_stream.eventstream",
        &with(&[3 + 10], &chunk),
    )?;
    Ok(())
}

/// One AWS event-stream message as Bedrock sends it.
fn aws_message(event_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut m = Vec::new();
    m.extend_from_slice(&(total as u32).to_be_bytes());
    m.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    m.extend_from_slice(&crc32(&m).to_be_bytes());
    m.extend_from_slice(&headers);
    m.extend_from_slice(payload);
    m.extend_from_slice(&crc32(&m).to_be_bytes());
    m
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn decision(i: u64) -> DecisionFacts {
    DecisionFacts {
        event_id: format!("{i:032x}"),
        tenant: Some("acme".into()),
        agent: Some("agent-1".into()),
        listener: "forward".into(),
        dest_host: "api.openai.com".into(),
        dest_port: 443,
        method: Some("POST".into()),
        path_template: Some("/v1/chat/completions".into()),
        provider: Some("openai".into()),
        model: Some("gpt-4o".into()),
        operation: Some("chat".into()),
        stream: Some(i.is_multiple_of(2)),
        decision: "allow".into(),
        reason: "route_matched".into(),
        rule_id: Some("r-openai".into()),
        policy_generation: 1,
        policy_hash: "sha256:0f0e".into(),
        detectors: vec!["secrets:aws_key".into()],
        narrowed: vec!["max_tokens".into()],
        key_id: Some("openai/prod@v2".into()),
        approver: None,
        peer: None,
        count: None,
    }
}

fn outcome(i: u64) -> OutcomeFacts {
    OutcomeFacts {
        event_id: format!("{i:032x}"),
        tenant: Some("acme".into()),
        agent: Some("agent-1".into()),
        dest_host: "api.openai.com".into(),
        status: Some(200),
        tokens_in: Some(12),
        tokens_out: Some(34),
        bytes_in: 1000,
        bytes_out: 2000,
        duration_ms: 15,
        end: "complete".into(),
        policy_generation: 1,
        policy_hash: "sha256:0f0e".into(),
    }
}

fn config() -> ConfigFacts {
    ConfigFacts {
        event_id: format!("{:032x}", 0xc0ff_u64),
        policy_generation: 1,
        policy_hash: "sha256:0f0e".into(),
        source: "startup".into(),
    }
}
