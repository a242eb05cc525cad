//! The policy parser: never panics on any text; every error renders; and a config it
//! accepts is accepted again from the same text, to the same result.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::config_fingerprint;
use portcullis_rules::parse_config;

fuzz_target!(|text: &str| {
    match parse_config("fuzz.toml", text) {
        Ok(config) => {
            let again = parse_config("fuzz.toml", text);
            let again =
                again.unwrap_or_else(|e| panic!("accepted once, refused the second time: {e}"));
            assert_eq!(config_fingerprint(&config), config_fingerprint(&again));
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "refused with no error");
            let _ = errors.to_string();
        }
    }
});
