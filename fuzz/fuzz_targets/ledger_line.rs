//! One ledger line on its own: never panics on any bytes, and a line that verifies stops
//! verifying when any one byte of it changes.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use portcullis_ledger::format::parse_line;

fuzz_target!(|data: &[u8]| {
    let Some((&[xor, lo, hi], line)) = data.split_first_chunk::<3>() else {
        return;
    };
    let Ok(parsed) = parse_line(line) else { return };
    assert_eq!(parsed.hash.len(), 32);
    let mut flipped = line.to_vec();
    let at = usize::from(u16::from_le_bytes([lo, hi])) % line.len();
    flipped[at] ^= xor.max(1);
    assert!(
        parse_line(&flipped).is_err(),
        "byte {at} changed and the line still verifies"
    );
});
