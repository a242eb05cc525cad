//! Every error at once, unknown keys included.

use super::*;

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
