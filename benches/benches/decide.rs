//! Policy decision and detector benchmarks (portcullis-rules, no I/O).
//!
//! - **Decision:** `Policy::evaluate` on a policy of 10,000 routes across 2,000 hosts
//!   (five routes per host: a deny, method/path routes scoped to a tenant or an agent,
//!   a model route, a catch-all), with a mix of requests (chat with a JSON body, model
//!   listing, embeddings, a denied admin path). Printed: p50 / p99 / p99.9 per decision,
//!   measured one call at a time, and the same requests through a linear scan over every
//!   route as the in-run baseline (the ratio shows what the host index buys).
//! - **Detectors:** a 100 KiB chat body through `evaluate` with the injection and
//!   secrets detectors and a three-key vault, plus each scanner alone and the streaming
//!   redactor over the same bytes in 1 KiB chunks. Printed as time per body and MiB/s.
//!
//! Criterion then measures the same closures. Figures are printed, never asserted.
//!
//! ```text
//! cargo bench -p portcullis-benches --bench decide
//! cargo bench -p portcullis-benches --bench decide -- --warm-up-time 1 --measurement-time 2
//! ```

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use portcullis_rules::{
    detect_injection, detect_secrets, parse_config, Agent, Host, Inspection, Policy, Redactor,
    RequestFacts, VaultScanner,
};
use tokio::time::Instant;

const HOSTS: usize = 2_000;
const ROUTES_PER_HOST: usize = 5;
const TENANTS: usize = 10;
/// sha256("password")
const TOKEN_SHA256: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

fn host_name(i: usize) -> String {
    format!("svc{i}.inference.example.com")
}

/// 2,000 hosts × 5 routes, served by one config provider so that requests are
/// classified (provider, model, operation) like real model traffic.
fn big_config() -> String {
    let mut text = String::from("version = 1\n\n");
    for t in 0..TENANTS {
        let _ = writeln!(text, "[[tenants]]\nid = \"t{t}\"\n");
    }
    for a in 0..TENANTS {
        let _ = writeln!(
            text,
            "[[agents]]\nid = \"a{a}\"\ntenant = \"t{a}\"\ntoken_sha256 = \"{TOKEN_SHA256}\"\n"
        );
    }
    text.push_str(
        "[[providers]]\nid = \"inference\"\nhosts = [\"*.inference.example.com\"]\napi = \"openai\"\n\n",
    );
    for i in 0..HOSTS {
        let host = host_name(i);
        let t = i % TENANTS;
        let a = (i + 1) % TENANTS;
        let _ = write!(
            text,
            r#"[[routes]]
id = "h{i}-deny-admin"
hosts = ["{host}"]
paths = ["/admin/*"]
action = "deny"

[[routes]]
id = "h{i}-models"
tenants = ["t{t}"]
hosts = ["{host}"]
methods = ["GET"]
paths = ["/v1/models", "/v1/models/*"]
action = "allow"

[[routes]]
id = "h{i}-embeddings"
agents = ["a{a}"]
hosts = ["{host}"]
methods = ["POST"]
paths = ["/v1/embeddings"]
action = "allow"

[[routes]]
id = "h{i}-chat"
hosts = ["{host}"]
methods = ["POST"]
paths = ["/v1/chat/completions", "/v1/responses"]
operations = ["chat", "responses"]
models = ["model-a", "model-b-*"]
action = "allow"

[[routes]]
id = "h{i}-rest"
tenants = ["t{}"]
hosts = ["{host}"]
action = "allow"

"#,
            (t + 1) % TENANTS
        );
    }
    text
}

/// One request of the mix.
struct Req {
    host: Host,
    agent: usize,
    method: &'static str,
    path: &'static str,
    body: &'static [u8],
}

const CHAT_BODY: &[u8] = br#"{"model":"model-b-large","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Summarise the incident report in two lines."}],"max_tokens":256,"stream":true}"#;
const EMBED_BODY: &[u8] = br#"{"model":"embed-1","input":"the quick brown fox"}"#;

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn requests(n: usize) -> Vec<Req> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            let host = Host::Name(host_name(rng.below(HOSTS)));
            let agent = rng.below(TENANTS);
            let (method, path, body): (&'static str, &'static str, &'static [u8]) =
                match rng.below(8) {
                    0..=3 => ("POST", "/v1/chat/completions", CHAT_BODY),
                    4 | 5 => ("GET", "/v1/models", b""),
                    6 => ("POST", "/v1/embeddings", EMBED_BODY),
                    _ => ("GET", "/admin/users", b""),
                };
            Req {
                host,
                agent,
                method,
                path,
                body,
            }
        })
        .collect()
}

fn facts<'a>(req: &'a Req) -> RequestFacts<'a> {
    RequestFacts {
        host: &req.host,
        port: 443,
        method: req.method,
        path: req.path,
        plaintext: false,
        websocket: false,
    }
}

fn evaluate(policy: &Policy, agents: &[&Agent], vault: &VaultScanner, req: &Req) -> bool {
    let inspect = Inspection {
        query: None,
        headers: &[],
        body: Some(req.body),
        body_truncated: false,
    };
    policy
        .evaluate(agents[req.agent], &facts(req), &inspect, vault)
        .decision
        .is_allow()
}

/// The baseline: first match over every route, without the host index (method and
/// path only, so it does strictly less work per route than `evaluate`).
fn linear(policy: &Policy, agent: &Agent, req: &Req) -> bool {
    for route in policy.routes() {
        if !route.applies_to(agent) || !route.matches_host(&req.host) || !route.ports.contains(&443)
        {
            continue;
        }
        let method_ok = route.methods.is_empty() || route.methods.iter().any(|m| m == req.method);
        let path_ok = route.paths.is_empty() || route.paths.iter().any(|p| p.matches(req.path));
        if method_ok && path_ok {
            return route.action.proceeds();
        }
    }
    false
}

struct Percentiles {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    mean: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let total: Duration = samples.iter().sum();
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: samples[samples.len() - 1],
        mean: total / samples.len() as u32,
    }
}

/// Time `f` once per request, one call at a time.
fn per_call(reqs: &[Req], mut f: impl FnMut(&Req) -> bool) -> Percentiles {
    let mut samples = Vec::with_capacity(reqs.len());
    for req in reqs {
        let start = Instant::now();
        black_box(f(black_box(req)));
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

fn print_row(name: &str, p: &Percentiles) {
    println!(
        "{name:<34} p50 {:>8.2?}  p99 {:>8.2?}  p99.9 {:>8.2?}  max {:>9.2?}  mean {:>8.2?}",
        p.p50, p.p99, p.p999, p.max, p.mean
    );
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// About 100 KiB of ordinary chat: many turns of prose, a code block, a tool result.
fn chat_body_100k() -> Vec<u8> {
    const PROSE: &str =
        "The deployment finished at 14:02 UTC. Latency on the checkout service rose \
        from 120 ms to 310 ms for eleven minutes while the cache warmed; error rates stayed flat. \
        Please review the attached dashboard and ignore the deprecation warnings in the build log, \
        they come from an old dependency that we pin until the next release. ";
    const CODE: &str = "```rust\nfn main() {\n    let total: u64 = (1..=100).sum();\n    println!(\"{total}\");\n}\n```\n";
    let mut messages = vec![format!(
        r#"{{"role":"system","content":{}}}"#,
        json_string("You are a helpful SRE assistant.")
    )];
    let mut size = 0;
    let mut turn = 0;
    while size < 100 * 1024 {
        let content = match turn % 3 {
            0 => PROSE.repeat(3),
            1 => format!("{PROSE}{CODE}"),
            _ => format!(
                "{{\"status\":\"ok\",\"rows\":{turn},\"note\":\"{}\"}}",
                PROSE.trim()
            ),
        };
        size += content.len();
        let role = if turn % 3 == 2 {
            "tool"
        } else if turn % 2 == 0 {
            "user"
        } else {
            "assistant"
        };
        messages.push(format!(
            r#"{{"role":"{role}","content":{}}}"#,
            json_string(&content)
        ));
        turn += 1;
    }
    format!(
        r#"{{"model":"model-b-large","stream":true,"messages":[{}]}}"#,
        messages.join(",")
    )
    .into_bytes()
}

fn mib_per_sec(bytes: usize, per_call: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / per_call.as_secs_f64()
}

/// Average time of `f` over `rounds` calls.
fn average(rounds: u32, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed() / rounds
}

fn main() {
    // ---- decision ------------------------------------------------------------------
    let text = big_config();
    let parse_start = Instant::now();
    let config = parse_config("bench.toml", &text).unwrap_or_else(|e| panic!("bench config:\n{e}"));
    let parse_time = parse_start.elapsed();
    let policy = config.policy;
    let agents: Vec<&Agent> = (0..TENANTS)
        .map(|a| {
            policy
                .agent(&format!("a{a}"))
                .unwrap_or_else(|| panic!("agent a{a}"))
        })
        .collect();
    let empty_vault = VaultScanner::empty();
    println!(
        "policy: {} routes across {HOSTS} hosts ({ROUTES_PER_HOST} per host), parsed and validated in {parse_time:.2?}",
        policy.routes().len()
    );

    let reqs = requests(200_000);
    // Warm caches and the allocator.
    for req in reqs.iter().take(20_000) {
        black_box(evaluate(&policy, &agents, &empty_vault, req));
    }
    let indexed = per_call(&reqs, |req| evaluate(&policy, &agents, &empty_vault, req));
    let baseline_reqs = &reqs[..20_000];
    let scan = per_call(baseline_reqs, |req| linear(&policy, agents[req.agent], req));
    let chat: Vec<Req> = requests(50_000)
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect();
    let chat_only = per_call(&chat, |req| evaluate(&policy, &agents, &empty_vault, req));
    // The same request again and again: everything in cache, so this is the compute
    // floor; the gap to the mix is memory latency over a 10k-route policy.
    let one: Vec<&Req> = std::iter::repeat_n(&chat[0], 50_000).collect();
    let mut samples = Vec::with_capacity(one.len());
    for req in &one {
        let start = Instant::now();
        black_box(evaluate(&policy, &agents, &empty_vault, black_box(req)));
        samples.push(start.elapsed());
    }
    let hot = percentiles(samples);
    println!(
        "per decision, one call at a time ({} requests, timer overhead included):",
        reqs.len()
    );
    print_row("evaluate (host index), request mix", &indexed);
    print_row("evaluate, chat with JSON body", &chat_only);
    print_row("evaluate, one chat request, hot", &hot);
    print_row("linear scan baseline (20k)", &scan);
    println!(
        "host index vs linear scan: {:.0}x faster at p50, {:.0}x at p99",
        scan.p50.as_secs_f64() / indexed.p50.as_secs_f64(),
        scan.p99.as_secs_f64() / indexed.p99.as_secs_f64()
    );
    println!(
        "target p99 <= 5 µs per decision: {}",
        if indexed.p99 <= Duration::from_micros(5) {
            "met"
        } else {
            "NOT met"
        }
    );

    // ---- detectors on a 100 KiB chat body ---------------------------------------------
    let body = chat_body_100k();
    let guarded = parse_config(
        "guarded.toml",
        &format!(
            r#"version = 1
[[tenants]]
id = "t"
[[agents]]
id = "a"
tenant = "t"
token_sha256 = "{TOKEN_SHA256}"
[[routes]]
id = "guarded"
hosts = ["api.openai.com"]
action = "allow"
detectors = {{ injection = "block", secrets = "block" }}
"#
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .policy;
    let guarded_agent = guarded.agent("a").unwrap_or_else(|| panic!("agent"));
    let vault = VaultScanner::new(&[
        (
            "k1".to_owned(),
            "openai".to_owned(),
            b"sk-proj-Vq3LmT8xW2nR5pK9aZ1cY7bD4fG6hJ0sQeUiOoPaSdFgHjKlZxCvBnM".to_vec(),
        ),
        (
            "k2".to_owned(),
            "anthropic".to_owned(),
            b"sk-ant-api03-Zx8vQ2mN7pL4kJ9hG6fD3sA1wE5rT0yUqwertyuiopasdfghjklzxcvbnm".to_vec(),
        ),
        (
            "k3".to_owned(),
            "gemini".to_owned(),
            b"AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY".to_vec(),
        ),
    ]);
    let openai = Host::Name("api.openai.com".to_owned());
    let chat_facts = RequestFacts {
        host: &openai,
        port: 443,
        method: "POST",
        path: "/v1/chat/completions",
        plaintext: false,
        websocket: false,
    };
    let inspect = Inspection {
        query: None,
        headers: &[],
        body: Some(&body),
        body_truncated: false,
    };
    let full = || {
        let e = guarded.evaluate(guarded_agent, &chat_facts, &inspect, &vault);
        assert!(
            e.decision.is_allow(),
            "the benign body must pass: {:?}",
            e.decision
        );
        black_box(e);
    };
    let text_body = String::from_utf8_lossy(&body).into_owned();
    let rounds = 40;
    let t_full = average(rounds, &full);
    let t_injection = average(rounds, || {
        black_box(detect_injection(&text_body));
    });
    let t_secrets = average(rounds, || {
        black_box(detect_secrets(&body));
    });
    let t_vault = average(rounds, || {
        black_box(vault.scan(&body));
    });
    let t_redact = average(rounds, || {
        let mut r = Redactor::new(&vault);
        let mut out = 0;
        for chunk in body.chunks(1024) {
            out += r.push(chunk).len();
        }
        out += r.finish().len();
        black_box(out);
    });
    println!("detectors on a {} KiB chat body:", body.len() / 1024);
    for (name, t) in [
        ("evaluate, injection+secrets+vault", t_full),
        ("injection RegexSet (text)", t_injection),
        ("secret formats", t_secrets),
        ("vault Aho-Corasick (3 keys)", t_vault),
        ("streaming redactor, 1 KiB chunks", t_redact),
    ] {
        println!(
            "{name:<34} {:>9.2?} per body  {:>7.1} MiB/s",
            t,
            mib_per_sec(body.len(), t)
        );
    }

    // ---- criterion -------------------------------------------------------------------
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut i = 0usize;
    criterion.bench_function("evaluate/10k_routes/request_mix", |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            evaluate(&policy, &agents, &empty_vault, &reqs[i])
        })
    });
    let mut j = 0usize;
    criterion.bench_function("linear_scan/10k_routes/request_mix", |b| {
        b.iter(|| {
            j = (j + 1) % baseline_reqs.len();
            let req = &baseline_reqs[j];
            linear(&policy, agents[req.agent], req)
        })
    });
    criterion.bench_function("evaluate/detectors/100KiB_chat", |b| b.iter(&full));
    criterion.bench_function("redactor/100KiB_in_1KiB_chunks", |b| {
        b.iter(|| {
            let mut r = Redactor::new(&vault);
            let mut out = 0;
            for chunk in body.chunks(1024) {
                out += r.push(chunk).len();
            }
            out + r.finish().len()
        })
    });
    criterion.final_summary();
}
