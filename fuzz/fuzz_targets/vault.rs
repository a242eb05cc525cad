//! The vault reader. The first byte picks what the rest is: with bit 1 clear, a whole
//! vault file; with it set, byte flips of the committed valid vault. Bit 0 recomputes the
//! file HMAC first (as only a key holder could), so that the per-entry checks are fuzzed
//! too. It never panics; a flipped file either fails to open or opens to exactly the
//! fixture's entries; and even past the HMAC, no flipped byte decrypts to another secret.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_certs::vault::fuzzing::{decode_secret, encode_secret, open_text, OpenedEntry};
use portcullis_certs::MasterKey;
use portcullis_fuzz::{VAULT_FILE, VAULT_KEY_B64};

fn key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::from_base64(VAULT_KEY_B64).unwrap_or_else(|e| panic!("{e}")))
}

fn fixture() -> &'static [OpenedEntry] {
    static ENTRIES: OnceLock<Vec<OpenedEntry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        open_text(VAULT_FILE, key(), false).unwrap_or_else(|e| panic!("fixture: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let reseal = mode & 1 != 0;
    if mode & 2 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            let _ = open_text(text, key(), reseal);
        }
        // The same bytes as a decrypted plaintext: decoding never panics and round-trips.
        if let Ok(secret) = decode_secret(rest) {
            assert_eq!(
                encode_secret(&secret),
                rest,
                "the secret codec does not round-trip"
            );
        }
        return;
    }
    let mut text = VAULT_FILE.as_bytes().to_vec();
    for flip in rest.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([flip[0], flip[1]])) % text.len();
        text[at] ^= flip[2];
    }
    let Ok(text) = String::from_utf8(text) else {
        return;
    };
    let Ok(entries) = open_text(&text, key(), reseal) else {
        return;
    };
    if !reseal {
        assert_eq!(
            entries,
            fixture(),
            "an edited vault opened to different entries"
        );
    }
    // A key holder may drop entries or flip `active`, but no slot's secret can change.
    for e in &entries {
        let same_slot = fixture().iter().find(|f| {
            (&f.tenant, &f.provider, &f.key_id, f.version)
                == (&e.tenant, &e.provider, &e.key_id, e.version)
        });
        assert!(
            same_slot.is_some_and(|f| f.secret == e.secret),
            "an edited entry decrypted"
        );
    }
});
