//! Property tests for the proxy's parsers of client and upstream bytes: the HTTP/1
//! framing guard, path canonicalisation and the token-usage meter. They mirror the
//! cargo-fuzz targets in `fuzz/` (through the same `portcullis::fuzzing` entry points)
//! with a bounded number of cases, so they run in the normal test command.

use portcullis::fuzzing::{canonicalize, frame, ApiStyle, FrameEnd, Usage, UsageMeter};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Splits `data` at the given cut points (taken modulo the length).
fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for a in at {
        out.push(&data[prev..a]);
        prev = a;
    }
    out.push(&data[prev..]);
    out
}

/// HTTP/1 client bytes: request lines, framing headers, bodies, chunk lines and the
/// stray bytes smuggling attempts are made of.
fn http_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"GET / HTTP/1.1\r\n"[..]),
        Just(&b"POST /v1/chat/completions HTTP/1.1\r\n"[..]),
        Just(&b"CONNECT a:443 HTTP/1.1\r\n"[..]),
        Just(&b"POST / HTTP/1.0\r\n"[..]),
        Just(&b"Host: x\r\n"[..]),
        Just(&b"Content-Length: 3\r\n"[..]),
        Just(&b"Content-Length: 0\r\n"[..]),
        Just(&b"Transfer-Encoding: chunked\r\n"[..]),
        Just(&b"Transfer-Encoding: gzip\r\n"[..]),
        Just(&b"Upgrade: websocket\r\n"[..]),
        Just(&b"X-A: a\r\n b\r\n"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"abc"[..]),
        Just(&b"3\r\nabc\r\n"[..]),
        Just(&b"3;x=y\r\nabc\r\n"[..]),
        Just(&b"0\r\n\r\n"[..]),
        Just(&b"0\r\nX-T: 1\r\n\r\n"[..]),
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b" "[..]),
        Just(&b"\0"[..]),
    ];
    prop::collection::vec(
        prop_oneof![
            4 => piece.prop_map(<[u8]>::to_vec),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..16,
    )
    .prop_map(|v| v.concat())
}

/// Path-shaped text: segments, dots, slashes, escapes (valid or not) and odd bytes.
fn path_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/([a-zA-Z0-9._~;=-]|%[0-9a-fA-F]{2}|%[0-9a-zA-Z]{0,2}|\\.\\.?|\\\\){0,6}){0,6}/?",
        ".{0,40}",
    ]
}

fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let pair = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        );
        if let (b'%', (Some(h), Some(l))) = (b[i], pair) {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

const STYLES: [ApiStyle; 5] = [
    ApiStyle::OpenAi,
    ApiStyle::Anthropic,
    ApiStyle::Google,
    ApiStyle::Bedrock,
    ApiStyle::Cohere,
];
const SSE: &str = "text/event-stream";
const JSON: &str = "application/json";
const AWS: &str = "application/vnd.amazon.eventstream";

fn meter(style: ApiStyle, content_type: &str, chunks: &[&[u8]]) -> Usage {
    let mut m = UsageMeter::new(style, Some(content_type));
    for c in chunks {
        m.push(c);
    }
    m.finish()
}

/// The recorded provider responses, with the style and content type they are read with.
fn usage_fixtures() -> Vec<(ApiStyle, &'static str, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/usage");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let style = match name.split('_').next() {
            Some("openai") => ApiStyle::OpenAi,
            Some("anthropic") => ApiStyle::Anthropic,
            Some("gemini") => ApiStyle::Google,
            Some("bedrock") => ApiStyle::Bedrock,
            Some("cohere") => ApiStyle::Cohere,
            _ => continue,
        };
        let content_type = if name.ends_with(".sse") { SSE } else { JSON };
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        out.push((style, content_type, body));
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    out
}

/// Pieces of provider JSON and SSE that carry (or look like they carry) usage.
fn usage_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"{\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":"[..]),
        Just(&b"{\"message\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}"[..]),
        Just(&b"{\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":4}}"[..]),
        Just(&b"{\"usage\":{\"inputTokens\":5,\"outputTokens\":6}}"[..]),
        Just(&b"\"output_tokens\":"[..]),
        Just(&b"18446744073709551616"[..]),
        Just(&b"42"[..]),
        Just(&b"}"[..]),
        Just(&b"]"[..]),
        Just(&b"["[..]),
        Just(&b"\"\\u0041\\\""[..]),
        Just(&b"data: "[..]),
        Just(&b"data:"[..]),
        Just(&b"event: x\n"[..]),
        Just(&b": comment\r\n"[..]),
        Just(&b"\n\n"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"[DONE]"[..]),
    ];
    prop::collection::vec(
        prop_oneof![
            4 => piece.prop_map(<[u8]>::to_vec),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn framing_verdict_does_not_depend_on_how_the_reads_are_split(
        input in http_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let whole = frame(&[&input], 1024);
        prop_assert_eq!(&frame(&chunks(&input, &cuts), 1024), &whole);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&frame(&bytes, 1024), &whole);
    }

    #[test]
    fn what_the_framing_guard_lets_through_passes_again_unchanged(input in http_bytes()) {
        let first = frame(&[&input], 1024);
        let again = frame(&[&first.passed], 1024);
        prop_assert_eq!(&again.passed, &first.passed);
        prop_assert_eq!(again.end, FrameEnd::Eof);
    }

    #[test]
    fn canonicalize_is_idempotent_and_leaves_no_dot_empty_or_encoded_separator_segment(
        path in path_text(),
    ) {
        if let Ok(c) = canonicalize(&path) {
            let again = canonicalize(&c);
            prop_assert_eq!(again.as_deref(), Ok(&*c));
            prop_assert!(c.starts_with('/'));
            let segments: Vec<&str> = c[1..].split('/').collect();
            for (i, seg) in segments.iter().enumerate() {
                let bare = seg.split(';').next().unwrap_or(seg);
                prop_assert!(bare != "." && bare != "..", "{:?}", c);
                prop_assert!(!seg.is_empty() || i + 1 == segments.len(), "{:?}", c);
            }
            let upper = c.to_ascii_uppercase();
            prop_assert!(!upper.contains("%2F") && !upper.contains("%2E") && !upper.contains("%5C"));
            prop_assert!(!c.contains('\\'));
            for (i, _) in c.match_indices('%') {
                let hex = c.as_bytes().get(i + 1..i + 3).unwrap_or_default();
                prop_assert!(hex.len() == 2 && hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)));
            }
        }
    }

    #[test]
    fn canonicalize_keeps_what_the_path_means_once_decoded(path in path_text()) {
        if let Ok(c) = canonicalize(&path) {
            prop_assert_eq!(decode(&c), decode(&path));
        }
    }

    #[test]
    fn usage_meter_reads_the_same_tokens_however_a_recorded_response_is_chunked(
        pick in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<usize>(), 1..8),
    ) {
        let fixtures = usage_fixtures();
        let (style, content_type, body) = pick.get(&fixtures);
        let whole = meter(*style, content_type, &[body]);
        prop_assert!(whole.input.is_some() || whole.output.is_some(), "a fixture reads no usage");
        prop_assert_eq!(meter(*style, content_type, &chunks(body, &cuts)), whole);
    }

    #[test]
    fn usage_meter_never_panics_and_ignores_chunking_on_arbitrary_bodies(
        style in 0..5usize,
        content_type in prop_oneof![Just(JSON), Just(SSE), Just(AWS)],
        body in usage_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let style = STYLES[style];
        let whole = meter(style, content_type, &[&body]);
        prop_assert_eq!(meter(style, content_type, &chunks(&body, &cuts)), whole);
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        prop_assert_eq!(meter(style, content_type, &bytes), whole);
    }
}
