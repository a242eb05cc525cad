//! The token-usage meter: never panics on any body in any framing, and reads the same
//! usage however the body is split into chunks.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::{ApiStyle, Usage, UsageMeter};
use portcullis_fuzz::chunk;

const STYLES: [ApiStyle; 5] = [
    ApiStyle::OpenAi,
    ApiStyle::Anthropic,
    ApiStyle::Google,
    ApiStyle::Bedrock,
    ApiStyle::Cohere,
];
const TYPES: [&str; 3] = [
    "application/json",
    "text/event-stream",
    "application/vnd.amazon.eventstream",
];

fn meter(style: ApiStyle, content_type: &str, chunks: &[&[u8]]) -> Usage {
    let mut m = UsageMeter::new(style, Some(content_type));
    for c in chunks {
        m.push(c);
        let _ = m.so_far();
    }
    m.finish()
}

fuzz_target!(|data: &[u8]| {
    // First byte: style, content type and how many cut points follow; then the cuts.
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let style = STYLES[usize::from(sel % 5)];
    let content_type = TYPES[usize::from(sel / 5 % 3)];
    let (cuts, body) = rest.split_at(usize::from(sel / 15 % 8).min(rest.len()));
    let whole = meter(style, content_type, &[body]);
    assert_eq!(
        whole,
        meter(style, content_type, &chunk(body, cuts)),
        "split differs"
    );
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        whole,
        meter(style, content_type, &bytes),
        "a byte at a time differs"
    );
});
