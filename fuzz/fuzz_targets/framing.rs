//! The HTTP/1 framing guard: never panics; the verdict and the bytes let through do not
//! depend on how the input is split into reads; and what it lets through passes again
//! unchanged (so no request is cut differently the second time).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::{frame, FrameEnd};
use portcullis_fuzz::chunk;

fuzz_target!(|data: &[u8]| {
    // First byte: how many cut points follow; then the cuts; then the client's bytes.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (cuts, input) = rest.split_at(usize::from(n % 16).min(rest.len()));
    let max_head = 1024;

    let whole = frame(&[input], max_head);
    let split = frame(&chunk(input, cuts), max_head);
    assert_eq!(
        whole, split,
        "the verdict depends on how the reads were split"
    );
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(whole, frame(&bytes, max_head), "a byte at a time differs");

    let again = frame(&[&whole.passed], max_head);
    assert_eq!(
        again.passed, whole.passed,
        "what passed once does not pass again unchanged"
    );
    assert_ne!(
        again.end,
        FrameEnd::Failed,
        "what passed once fails the second time"
    );
    assert!(
        !matches!(again.end, FrameEnd::Refused(_)),
        "what passed once is refused the second time: {:?}",
        again.end
    );
});
