//! Property tests for the vault reader on untrusted file text. They mirror the cargo-fuzz
//! target `vault` in `fuzz/` (through the same `vault::fuzzing` entry points) with a
//! bounded number of cases, so they run in the normal test command.

use std::sync::OnceLock;

use portcullis_certs::vault::fuzzing::{
    decode_secret, encode_secret, open_text, write_text, OpenedEntry,
};
use portcullis_certs::{MasterKey, Secret};
use proptest::prelude::*;

fn entry(tenant: &str, provider: &str, version: u32, active: bool, secret: Secret) -> OpenedEntry {
    OpenedEntry {
        tenant: tenant.into(),
        provider: provider.into(),
        key_id: "prod".into(),
        version,
        active,
        secret,
    }
}

fn entries() -> Vec<OpenedEntry> {
    vec![
        entry(
            "acme",
            "openai",
            1,
            false,
            Secret::api_key("sk-TESTONLY-old-0123"),
        ),
        entry(
            "acme",
            "openai",
            2,
            true,
            Secret::api_key("sk-TESTONLY-new-4567"),
        ),
        entry(
            "acme",
            "bedrock",
            1,
            true,
            Secret::aws(
                "AKIATESTONLYEXAMPLE1",
                "TESTONLY/s",
                Some("TESTONLY-t".into()),
            ),
        ),
    ]
}

/// A valid vault file and its key, made once per test binary.
fn valid() -> &'static (MasterKey, String) {
    static VALID: OnceLock<(MasterKey, String)> = OnceLock::new();
    VALID.get_or_init(|| {
        let key = MasterKey::generate();
        let bytes = write_text(&key, 5, &entries()).expect("write");
        (key, String::from_utf8(bytes).expect("utf-8"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn vault_open_never_panics_on_arbitrary_text(text in ".{0,300}", reseal in any::<bool>()) {
        let _ = open_text(&text, &valid().0, reseal);
    }

    #[test]
    fn a_vault_with_any_byte_changed_fails_or_opens_to_the_same_entries(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
    ) {
        let (key, text) = valid();
        let mut bytes = text.clone().into_bytes();
        for (at, xor) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        if let Ok(edited) = String::from_utf8(bytes) {
            if let Ok(opened) = open_text(&edited, key, false) {
                prop_assert_eq!(opened, entries());
            }
        }
    }

    #[test]
    fn past_the_hmac_a_changed_byte_never_decrypts_to_another_secret(
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        let (key, text) = valid();
        let mut bytes = text.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        let Ok(edited) = String::from_utf8(bytes) else { return Ok(()) };
        let Ok(opened) = open_text(&edited, key, true) else { return Ok(()) };
        let want = entries();
        for e in &opened {
            let same = want.iter().find(|w| {
                (&w.tenant, &w.provider, &w.key_id, w.version) == (&e.tenant, &e.provider, &e.key_id, e.version)
            });
            prop_assert!(same.is_some_and(|w| w.secret == e.secret), "byte {} changed a secret", i);
        }
    }

    #[test]
    fn secret_decoding_never_panics_and_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(secret) = decode_secret(&bytes) {
            prop_assert_eq!(encode_secret(&secret), bytes);
        }
    }

    #[test]
    fn every_secret_round_trips_through_its_encoding(
        api_key in prop::collection::vec(any::<u8>(), 0..40),
        id in ".{0,20}",
        secret in ".{0,20}",
        token in prop::option::of(".{0,20}"),
    ) {
        for s in [Secret::api_key(api_key.clone()), Secret::aws(&id, &secret, token.clone())] {
            let decoded = decode_secret(&encode_secret(&s));
            prop_assert!(decoded.as_ref().is_ok_and(|d| *d == s));
        }
    }
}

#[test]
fn the_valid_vault_opens_to_its_entries() {
    let (key, text) = valid();
    assert_eq!(open_text(text, key, false).expect("opens"), entries());
}
