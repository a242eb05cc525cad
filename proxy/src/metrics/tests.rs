// Compiled only under #[cfg(test)] (declared in mod.rs).
use std::collections::{BTreeMap, BTreeSet};

use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;

use super::*;

fn catalog() -> Metrics {
    Metrics::new(
        &["acme".to_owned(), "globex".to_owned()],
        &["forward".to_owned(), "admin".to_owned()],
    )
}

/// One sample line: its metric name, its labels, its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small parser for the text exposition format 0.0.4. It fails the test on any
/// malformed line, and on any sample whose family has no `# HELP` and `# TYPE`.
fn parse(text: &str) -> Vec<Sample> {
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').expect("HELP has a name and text");
            assert!(valid_metric_name(name), "HELP name {name:?}");
            assert!(!text.is_empty(), "HELP text for {name}");
            assert!(help.insert(name.to_owned()), "one HELP per family: {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "TYPE {kind:?}"
            );
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        let sample = parse_sample(line);
        let family = family_of(&sample.name, &types);
        assert!(help.contains(family), "{} has no # HELP", sample.name);
        samples.push(sample);
    }
    samples
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and `_count`
/// belong to the histogram.
fn family_of<'a>(sample: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    if types.contains_key(sample) {
        return sample;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base;
            }
        }
    }
    panic!("{sample} has no # TYPE");
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
    let name = &line[..name_end];
    assert!(valid_metric_name(name), "metric name {name:?}");
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = body.split_once("=\"").expect("label is name=\"value\"");
            assert!(valid_label_name(key), "label name {key:?} in {line:?}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("unterminated label value") {
                    (i, '"') => break i + 1,
                    (_, '\\') => match chars.next().expect("escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => panic!("bad escape \\{c} in {line:?}"),
                    },
                    (_, c) => value.push(c),
                }
            };
            assert!(labels.insert(key.to_owned(), value).is_none(), "dup {key}");
            body = &after[end..];
            assert!(body.starts_with([',', '}']), "junk after a label: {line:?}");
            body = body.strip_prefix(',').unwrap_or(body);
        }
    }
    let value = rest.strip_prefix(' ').expect("one space before the value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("value {v:?} in {line:?}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn valid_label_name(name: &str) -> bool {
    valid_metric_name(name) && !name.contains(':')
}

fn series(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}

/// Some valid model names, some with characters outside the allowed set, some too long.
fn random_model(rng: &mut impl Rng) -> String {
    let len = rng.random_range(1..=80);
    let mut m = Alphanumeric.sample_string(rng, len);
    if rng.random_bool(0.2) {
        m.push_str(" {\"injected\"}\n");
    }
    m
}

#[test]
fn a_thousand_random_model_names_keep_the_series_count_bounded() {
    let m = catalog();
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let model = random_model(&mut rng);
        m.tokens(Some("acme"), Some("openai"), Some(&model), 10, 0);
    }
    let text = m.render();
    let n = series(&text, "portcullis_tokens_total{");
    assert!(n <= MAX_MODELS + 1, "{n} token series");
    let samples = parse(&text);
    let total: f64 = samples
        .iter()
        .filter(|s| s.name == name::TOKENS)
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 10_000.0, "folding keeps the token total exact");
    assert!(samples
        .iter()
        .filter(|s| s.name == name::TOKENS)
        .any(|s| s.labels["model"] == OTHER));
}

#[test]
fn a_thousand_unknown_tenants_keep_the_series_count_bounded() {
    let m = catalog();
    let mut rng = rand::rng();
    for i in 0..1000 {
        let tenant = Alphanumeric.sample_string(&mut rng, 12);
        let tenant = if i % 10 == 0 {
            "acme".to_owned()
        } else {
            tenant
        };
        m.tokens(Some(&tenant), Some("anthropic"), Some("claude"), 1, 1);
        m.request(Some(&tenant), "allow", "route_allow", Some("anthropic"));
        m.budget_remaining(Some(&tenant), "tenant", 5);
    }
    m.request(None, "deny", "auth_failed", None);
    let text = m.render();
    // acme and other, two directions each.
    assert_eq!(series(&text, "portcullis_tokens_total{"), 4);
    // acme, other; plus the unauthenticated `-`.
    assert_eq!(series(&text, "portcullis_requests_total{"), 3);
    assert_eq!(series(&text, "portcullis_budget_remaining{"), 2);
    let samples = parse(&text);
    let labels = [
        ("tenant", NONE),
        ("decision", "deny"),
        ("reason", "auth_failed"),
        ("provider", NONE),
    ];
    assert_eq!(value(&samples, name::REQUESTS, &labels), 1.0);
}

#[test]
fn unknown_decisions_reasons_providers_and_scopes_fold_into_other() {
    let m = catalog();
    m.request(
        Some("acme"),
        "yolo",
        "made_up_reason",
        Some("Not A Provider"),
    );
    for i in 0..200 {
        m.request(Some("acme"), "allow", "route_allow", Some(&format!("p{i}")));
    }
    m.budget_remaining(Some("acme"), "galaxy", 1);
    let text = m.render();
    let samples = parse(&text);
    let labels = [
        ("tenant", "acme"),
        ("decision", OTHER),
        ("reason", OTHER),
        ("provider", OTHER),
    ];
    assert_eq!(value(&samples, name::REQUESTS, &labels), 1.0);
    // 64 first-come providers, then `other` (for the rest and the malformed one).
    assert_eq!(
        series(&text, "portcullis_requests_total{"),
        MAX_PROVIDERS + 2
    );
    let labels = [("tenant", "acme"), ("scope", OTHER)];
    assert_eq!(value(&samples, name::BUDGET_REMAINING, &labels), 1.0);
}

#[test]
fn render_is_valid_text_exposition() {
    let m = catalog();
    m.request(Some("acme"), "allow", "route_allow", Some("openai"));
    m.phase(Phase::Decide, Duration::from_micros(700));
    m.tokens(Some("globex"), Some("openai"), Some("gpt-4o"), 3, 4);
    m.budget_remaining(Some("globex"), "agent", u64::MAX);
    m.cert_stats(1, 0);
    m.cert_mint(Duration::from_millis(3));
    m.ledger_append_wait(Duration::from_millis(1));
    m.ledger_sync(Duration::from_millis(2));
    m.approvals_pending(2);
    let _conn = m.connection_opened("forward");
    let text = m.render();
    let samples = parse(&text);

    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let expected = [
        name::REQUESTS,
        name::REQUEST_DURATION,
        name::UPSTREAM_ERRORS,
        name::ACTIVE_CONNECTIONS,
        name::TOKENS,
        name::BUDGET_REMAINING,
        name::CERT_CACHE_HITS,
        name::CERT_CACHE_MISSES,
        name::CERT_MINT,
        name::LEDGER_RECORDS,
        name::LEDGER_APPEND_WAIT,
        name::LEDGER_SYNC,
        name::LEDGER_BATCH_SIZE,
        name::WEBHOOK_DELIVERIES,
        name::APPROVALS_PENDING,
        name::CONFIG_RELOADS,
        name::CONFIG_RELOAD_FAILURES,
        name::DNS_QUERIES,
        name::LEDGER_DISK_FREE,
    ];
    assert_eq!(families, expected.into_iter().collect());
    assert!(text.contains("# TYPE portcullis_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE portcullis_active_connections gauge"));
    assert!(text.contains("# TYPE portcullis_tokens_total counter"));

    let decide = [("phase", "decide"), ("le", "0.001")];
    let bucket = "portcullis_request_duration_seconds_bucket";
    assert_eq!(value(&samples, bucket, &decide), 1.0);
    let labels = [("tenant", "globex"), ("scope", "agent")];
    assert_eq!(
        value(&samples, name::BUDGET_REMAINING, &labels),
        i64::MAX as f64
    );
    assert!(CONTENT_TYPE.contains("version=0.0.4"));
}

#[test]
fn counters_move_with_recorded_requests() {
    let m = catalog();
    for _ in 0..3 {
        m.request(Some("acme"), "deny", "no_route", Some("openai"));
    }
    m.request(Some("acme"), "allow", "route_allow", Some("openai"));
    m.upstream_error(UpstreamErrorKind::Tls);
    m.upstream_error(UpstreamErrorKind::of(Reason::ResolveFailed).unwrap());
    m.cert_stats(2, 1);
    m.webhook(WebhookResult::Dropped);
    m.reload(ReloadResult::Ok);
    m.reload(ReloadResult::Invalid);
    m.reload(ReloadResult::Error);
    m.reload(ReloadResult::Unchanged);
    m.tokens(Some("acme"), Some("openai"), None, 100, 20);
    m.phase(Phase::Total, Duration::from_secs(2));
    m.phase(Phase::Total, Duration::from_millis(20));
    let s = parse(&m.render());

    let deny = [
        ("tenant", "acme"),
        ("decision", "deny"),
        ("reason", "no_route"),
        ("provider", "openai"),
    ];
    assert_eq!(value(&s, name::REQUESTS, &deny), 3.0);
    assert_eq!(value(&s, name::UPSTREAM_ERRORS, &[("kind", "tls")]), 1.0);
    assert_eq!(
        value(&s, name::UPSTREAM_ERRORS, &[("kind", "resolve")]),
        1.0
    );
    assert_eq!(
        value(&s, name::UPSTREAM_ERRORS, &[("kind", "connect")]),
        0.0
    );
    assert_eq!(value(&s, name::CERT_CACHE_HITS, &[]), 2.0);
    assert_eq!(value(&s, name::CERT_CACHE_MISSES, &[]), 1.0);
    let dropped = [("result", "dropped")];
    assert_eq!(value(&s, name::WEBHOOK_DELIVERIES, &dropped), 1.0);
    assert_eq!(value(&s, name::CONFIG_RELOADS, &[("result", "ok")]), 1.0);
    assert_eq!(value(&s, name::CONFIG_RELOAD_FAILURES, &[]), 2.0);
    let input = [
        ("tenant", "acme"),
        ("provider", "openai"),
        ("model", NONE),
        ("direction", "input"),
    ];
    assert_eq!(value(&s, name::TOKENS, &input), 100.0);
    let total = [("phase", "total")];
    let count = "portcullis_request_duration_seconds_count";
    assert_eq!(value(&s, count, &total), 2.0);
    let sum = value(&s, "portcullis_request_duration_seconds_sum", &total);
    assert!((sum - 2.02).abs() < 1e-9, "{sum}");
}

#[test]
fn ledger_totals_advance_the_counters_by_their_difference() {
    let m = catalog();
    let stats = |records_total, batches_total| LedgerStats {
        records_total,
        batches_total,
        syncs_total: batches_total,
        last_batch_size: 0,
    };
    m.ledger_stats(stats(10, 2));
    m.ledger_stats(stats(10, 2));
    m.ledger_stats(stats(40, 5));
    let s = parse(&m.render());
    assert_eq!(value(&s, name::LEDGER_RECORDS, &[]), 40.0);
    assert_eq!(value(&s, "portcullis_ledger_batch_size_count", &[]), 5.0);
    assert_eq!(value(&s, "portcullis_ledger_batch_size_sum", &[]), 40.0);

    // A reopened ledger starts its totals again from zero.
    m.ledger_stats(stats(3, 1));
    let s = parse(&m.render());
    assert_eq!(value(&s, name::LEDGER_RECORDS, &[]), 43.0);
    assert_eq!(value(&s, "portcullis_ledger_batch_size_count", &[]), 6.0);
}

#[test]
fn connection_gauge_goes_back_down_on_drop() {
    let m = catalog();
    let gauge = |m: &Metrics, listener: &str| {
        value(
            &parse(&m.render()),
            name::ACTIVE_CONNECTIONS,
            &[("listener", listener)],
        )
    };
    let a = m.connection_opened("forward");
    let b = m.clone().connection_opened("forward");
    let c = m.connection_opened("not-configured");
    assert_eq!(gauge(&m, "forward"), 2.0);
    assert_eq!(gauge(&m, OTHER), 1.0);
    assert_eq!(gauge(&m, "admin"), 0.0);
    drop(a);
    assert_eq!(gauge(&m, "forward"), 1.0);
    drop(b);
    drop(c);
    assert_eq!(gauge(&m, "forward"), 0.0);
    assert_eq!(gauge(&m, OTHER), 0.0);
}

#[test]
fn two_catalogs_do_not_share_counts() {
    let a = catalog();
    let b = catalog();
    a.cert_stats(1, 0);
    assert_eq!(value(&parse(&b.render()), name::CERT_CACHE_HITS, &[]), 0.0);
    assert_eq!(value(&parse(&a.render()), name::CERT_CACHE_HITS, &[]), 1.0);
}

#[test]
fn model_and_provider_ids_are_checked_by_shape() {
    assert!(valid_model("claude-3-5-sonnet-20241022"));
    assert!(valid_model("meta/llama-3.1:70b"));
    assert!(!valid_model(""));
    assert!(!valid_model(&"m".repeat(65)));
    assert!(!valid_model("gpt 4"));
    assert!(!valid_model("gpt\"}4"));
    assert!(valid_provider("openai"));
    assert!(valid_provider("azure_openai2"));
    assert!(!valid_provider("OpenAI"));
    assert!(!valid_provider("open-ai"));
    assert!(!valid_provider(&"p".repeat(33)));
}
