//! Path canonicalisation: never panics; its output is canonical (idempotent, no `.`/`..`
//! or empty segment, no encoded separator, only upper-case escapes) and means the same
//! path as its input once decoded.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::canonicalize;
use portcullis_fuzz::percent_decode;

fuzz_target!(|path: &str| {
    let Ok(canonical) = canonicalize(path) else {
        return;
    };
    assert_eq!(
        canonicalize(&canonical).as_deref(),
        Ok(&*canonical),
        "not idempotent"
    );
    assert!(canonical.starts_with('/'));
    let segments: Vec<&str> = canonical[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let bare = seg.split(';').next().unwrap_or(seg);
        assert!(bare != "." && bare != "..", "dot segment in {canonical:?}");
        assert!(
            !seg.is_empty() || i + 1 == segments.len(),
            "empty segment in {canonical:?}"
        );
    }
    assert!(!canonical.contains('\\'));
    for (i, _) in canonical.match_indices('%') {
        let hex = canonical.as_bytes().get(i + 1..i + 3).unwrap_or_default();
        assert!(
            hex.len() == 2
                && hex
                    .iter()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
            "escape not two upper-case hex digits in {canonical:?}"
        );
        assert!(
            !matches!(hex, b"2F" | b"2E" | b"5C"),
            "encoded separator in {canonical:?}"
        );
    }
    assert_eq!(
        percent_decode(path),
        percent_decode(&canonical),
        "canonicalisation changed the meaning"
    );
});
