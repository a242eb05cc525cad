//! Property tests for the detectors over untrusted text: whatever a client sends (any
//! Unicode, broken encodings, leetspeak, spread letters, long runs of one class), the
//! injection and secret scanners return without panicking, and normalization is stable.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use portcullis_rules::{detect_injection, detect_secrets, normalize_text};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// Text built from the pieces each layer reacts to, plus anything at all.
fn detector_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("1gn0r3".to_owned()),
        Just("i g n o r e".to_owned()),
        Just("**".to_owned()),
        Just("`".to_owned()),
        Just("\"".to_owned()),
        Just("%20".to_owned()),
        Just("\\u0069".to_owned()),
        Just("\\x".to_owned()),
        Just("rot13".to_owned()),
        Just("e\u{301}".to_owned()),
        Just("\u{200B}".to_owned()),
        Just("\u{E0069}".to_owned()),
        Just("і".to_owned()),
        Just("ＩＧＮＯＲＥ".to_owned()),
        Just("sk-".to_owned()),
        Just("-----BEGIN".to_owned()),
        "[a-z0-9 ]{0,12}",
        "[A-Za-z0-9+/=_-]{20,80}",
        "[0-9a-f]{30,70}",
        ".{0,16}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ];
    prop::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_detectors_return_on_any_text(text in detector_text()) {
        let _ = detect_injection(&text);
        let _ = detect_secrets(text.as_bytes());
        let encoded = STANDARD.encode(&text);
        let _ = detect_injection(&encoded);
        let _ = detect_secrets(encoded.as_bytes());
    }

    #[test]
    fn the_secret_scanner_returns_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = detect_secrets(&bytes);
    }

    #[test]
    fn normalization_is_idempotent(text in detector_text()) {
        let once = normalize_text(&text);
        prop_assert_eq!(normalize_text(&once), once.clone());
    }
}
