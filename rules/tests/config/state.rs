//! `[state]`: memory or Redis.

use super::*;

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
