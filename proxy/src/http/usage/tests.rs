// Compiled only under #[cfg(test)] (declared in mod.rs).
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const JSON: &str = "application/json";
const SSE: &str = "text/event-stream";
const AWS: &str = "application/vnd.amazon.eventstream";

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../../tests/fixtures/usage/", $name)).as_slice()
    };
}

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input: Some(input),
        output: Some(output),
    }
}

fn meter(style: ApiStyle, content_type: &str, chunks: &[&[u8]]) -> Usage {
    let mut m = UsageMeter::new(style, Some(content_type));
    for chunk in chunks {
        m.push(chunk);
    }
    m.finish()
}

/// The body pushed whole, split in two at every byte, and a byte at a time.
fn assert_meters(style: ApiStyle, content_type: &str, body: &[u8], want: Usage) {
    assert_eq!(meter(style, content_type, &[body]), want, "whole");
    for k in 0..=body.len() {
        let (a, b) = body.split_at(k);
        assert_eq!(meter(style, content_type, &[a, b]), want, "split at {k}");
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(meter(style, content_type, &bytes), want, "byte at a time");
}

/// The same SSE body with LF, CRLF and bare CR line ends.
fn assert_meters_sse(style: ApiStyle, body: &[u8], want: Usage) {
    let lf = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("\r\n", "\n");
    for eol in ["\n", "\r\n", "\r"] {
        assert_meters(style, SSE, lf.replace('\n', eol).as_bytes(), want);
    }
}

/// One AWS event-stream message, headers as Bedrock sends them.
fn aws_message(message_type: &str, event_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", message_type),
    ] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = PRELUDE + headers.len() + payload.len() + 4;
    let mut m = Vec::new();
    m.extend_from_slice(&(total as u32).to_be_bytes());
    m.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    m.extend_from_slice(&crc32(0, &m).to_be_bytes());
    m.extend_from_slice(&headers);
    m.extend_from_slice(payload);
    m.extend_from_slice(&crc32(0, &m).to_be_bytes());
    m
}

fn event(event_type: &str, payload: &str) -> Vec<u8> {
    aws_message("event", event_type, payload.as_bytes())
}

/// An invoke-with-response-stream `chunk` carrying the model's event.
fn chunk(model_event: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(model_event);
    event("chunk", &format!(r#"{{"bytes":"{b64}","p":"abcdefghij"}}"#))
}

fn converse_stream() -> Vec<u8> {
    [
        event("messageStart", r#"{"p":"abcdefghijkl","role":"assistant"}"#),
        event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"}"#,
        ),
        event(
            "contentBlockStop",
            r#"{"contentBlockIndex":0,"p":"abcdefghijklmnopqrstuvwxyzABCDEF"}"#,
        ),
        event(
            "messageStop",
            r#"{"p":"abcdefghijklmnopqrstuvwxyzABCD","stopReason":"end_turn"}"#,
        ),
        event(
            "metadata",
            r#"{"metrics":{"latencyMs":433},"p":"abcdefghijk","usage":{"inputTokens":12,"outputTokens":34,"totalTokens":46}}"#,
        ),
    ]
    .concat()
}

fn invoke_stream() -> Vec<u8> {
    [
        chunk(
            r#"{"type":"message_start","message":{"id":"msg_bdrk_01Ud7xNd6PZ3rBtdkgVjhTGx","type":"message","role":"assistant","model":"claude-3-5-sonnet-20240620","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":14,"output_tokens":1}}}"#,
        ),
        chunk(r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
        chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#),
        chunk(r#"{"type":"content_block_stop","index":0}"#),
        chunk(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":40}}"#,
        ),
        chunk(
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":14,"outputTokenCount":40,"invocationLatency":1523,"firstByteLatency":412}}"#,
        ),
    ]
    .concat()
}

#[test]
fn openai_chat_json_counts_the_top_level_usage_member() {
    let body = fixture!("openai_chat.json");
    assert_meters(ApiStyle::OpenAi, JSON, body, usage(1117, 46));
}

#[test]
fn openai_stream_final_chunk_is_counted_and_null_usage_is_ignored() {
    let body = fixture!("openai_chat_stream.sse");
    assert_meters_sse(ApiStyle::OpenAi, body, usage(9, 2));
}

#[test]
fn openai_stream_final_chunk_with_choices_and_usage_is_counted() {
    let body = fixture!("openai_chat_stream_final_choices.sse");
    assert_meters_sse(ApiStyle::OpenAi, body, usage(18, 7));
}

#[test]
fn openai_responses_json_counts_input_and_output_tokens() {
    let body = fixture!("openai_responses.json");
    assert_meters(ApiStyle::OpenAi, JSON, body, usage(36, 87));
}

#[test]
fn openai_responses_stream_counts_response_completed() {
    let body = fixture!("openai_responses_stream.sse");
    assert_meters_sse(ApiStyle::OpenAi, body, usage(37, 11));
}

#[test]
fn anthropic_json_counts_usage() {
    let body = fixture!("anthropic_messages.json");
    assert_meters(ApiStyle::Anthropic, JSON, body, usage(2095, 503));
}

#[test]
fn anthropic_stream_takes_input_from_message_start_and_output_from_last_message_delta() {
    let body = fixture!("anthropic_stream.sse");
    assert_meters_sse(ApiStyle::Anthropic, body, usage(25, 15));
}

#[test]
fn anthropic_message_delta_input_does_not_replace_message_start_input() {
    let body = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}"#,
        "\n\nevent: message_delta\n",
        r#"data: {"type":"message_delta","delta":{},"usage":{"input_tokens":900,"output_tokens":15}}"#,
        "\n\n",
    );
    assert_eq!(
        meter(ApiStyle::Anthropic, SSE, &[body.as_bytes()]),
        usage(25, 15)
    );
}

#[test]
fn gemini_json_counts_usage_metadata() {
    let body = fixture!("gemini.json");
    assert_meters(ApiStyle::Google, JSON, body, usage(8, 205));
}

#[test]
fn gemini_sse_last_usage_metadata_wins() {
    let body = fixture!("gemini_stream.sse");
    assert_meters_sse(ApiStyle::Google, body, usage(9, 10));
}

#[test]
fn gemini_json_array_stream_last_element_wins() {
    let body = fixture!("gemini_stream_array.json");
    assert_meters(ApiStyle::Google, JSON, body, usage(6, 31));
}

#[test]
fn bedrock_converse_json_counts_camel_case_usage() {
    let body = fixture!("bedrock_converse.json");
    assert_meters(ApiStyle::Bedrock, JSON, body, usage(30, 628));
}

#[test]
fn bedrock_invoke_counts_the_anthropic_model_body() {
    let body = fixture!("bedrock_invoke_anthropic.json");
    assert_meters(ApiStyle::Bedrock, JSON, body, usage(12, 48));
}

#[test]
fn bedrock_invoke_counts_the_llama_model_body() {
    let body = fixture!("bedrock_invoke_llama.json");
    assert_meters(ApiStyle::Bedrock, JSON, body, usage(17, 120));
}

#[test]
fn bedrock_converse_stream_counts_the_metadata_event() {
    assert_meters(ApiStyle::Bedrock, AWS, &converse_stream(), usage(12, 34));
}

#[test]
fn bedrock_invoke_stream_decodes_base64_model_events() {
    assert_meters(ApiStyle::Bedrock, AWS, &invoke_stream(), usage(14, 40));
}

#[test]
fn bedrock_invoke_stream_without_metrics_uses_the_model_events() {
    let body = [
        chunk(
            r#"{"type":"message_start","message":{"usage":{"input_tokens":14,"output_tokens":1}}}"#,
        ),
        chunk(r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":40}}"#),
    ]
    .concat();
    assert_eq!(meter(ApiStyle::Bedrock, AWS, &[&body]), usage(14, 40));
}

#[test]
fn bedrock_invocation_metrics_outrank_model_counts() {
    let body = [
        chunk(r#"{"generation":"Hi","prompt_token_count":11,"generation_token_count":1}"#),
        chunk(
            r#"{"generation":"","prompt_token_count":null,"generation_token_count":6,"stop_reason":"stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":13,"outputTokenCount":7}}"#,
        ),
        chunk(r#"{"generation":"","prompt_token_count":2,"generation_token_count":3}"#),
    ]
    .concat();
    assert_meters(ApiStyle::Bedrock, AWS, &body, usage(13, 7));
}

#[test]
fn bedrock_event_stream_ignores_exceptions_and_corrupt_messages() {
    let exception = aws_message(
        "exception",
        "throttlingException",
        br#"{"message":"Too many requests","usage":{"inputTokens":1,"outputTokens":1}}"#,
    );
    let mut corrupt = event(
        "metadata",
        r#"{"usage":{"inputTokens":2,"outputTokens":2}}"#,
    );
    let last = corrupt.len() - 5;
    corrupt[last] ^= 0x01; // a payload byte: the message CRC fails
    let body = [converse_stream(), exception, corrupt].concat();
    assert_eq!(meter(ApiStyle::Bedrock, AWS, &[&body]), usage(12, 34));
}

#[test]
fn bedrock_event_stream_with_bad_prelude_stops_reading() {
    let mut bad = converse_stream();
    bad[9] ^= 0x01; // the prelude CRC
    bad.extend(event(
        "metadata",
        r#"{"usage":{"inputTokens":2,"outputTokens":2}}"#,
    ));
    assert_eq!(meter(ApiStyle::Bedrock, AWS, &[&bad]), Usage::default());
}

#[test]
fn bedrock_event_stream_message_over_cap_is_skipped_and_later_ones_count() {
    let pad = "x".repeat(MAX_EVENT);
    let big = event(
        "metadata",
        &format!(r#"{{"usage":{{"inputTokens":1,"outputTokens":1}},"pad":"{pad}"}}"#),
    );
    let body = [big, converse_stream()].concat();
    let chunks: Vec<&[u8]> = body.chunks(4093).collect();
    assert_eq!(meter(ApiStyle::Bedrock, AWS, &chunks), usage(12, 34));
}

#[test]
fn bedrock_headers_give_usage() {
    let mut h = HeaderMap::new();
    h.insert("x-amzn-bedrock-input-token-count", "19".parse().unwrap());
    h.insert(
        "x-amzn-bedrock-output-token-count",
        " 250 ".parse().unwrap(),
    );
    assert_eq!(Usage::from_bedrock_headers(&h), usage(19, 250));
    h.insert("x-amzn-bedrock-output-token-count", "many".parse().unwrap());
    let partial = Usage {
        input: Some(19),
        output: None,
    };
    assert_eq!(Usage::from_bedrock_headers(&h), partial);
    assert_eq!(
        Usage::from_bedrock_headers(&HeaderMap::new()),
        Usage::default()
    );
    let body = usage(20, 251);
    assert_eq!(Usage::from_bedrock_headers(&h).or(body), usage(19, 251));
}

#[test]
fn cohere_json_prefers_tokens_over_billed_units() {
    let body = fixture!("cohere_chat.json");
    assert_meters(ApiStyle::Cohere, JSON, body, usage(71, 418));
    let billed_only = br#"{"usage":{"billed_units":{"input_tokens":5,"output_tokens":418}}}"#;
    assert_eq!(meter(ApiStyle::Cohere, JSON, &[billed_only]), usage(5, 418));
}

#[test]
fn cohere_stream_counts_message_end() {
    let body = fixture!("cohere_stream.sse");
    assert_meters_sse(ApiStyle::Cohere, body, usage(204, 9));
}

#[test]
fn cohere_v1_stream_end_line_is_counted() {
    let body = concat!(
        r#"{"is_finished":false,"event_type":"stream-start","generation_id":"6c4f"}"#,
        "\n",
        r#"{"is_finished":false,"event_type":"text-generation","text":"Hi"}"#,
        "\n",
        r#"{"is_finished":true,"event_type":"stream-end","finish_reason":"COMPLETE","response":{"text":"Hi","meta":{"billed_units":{"input_tokens":3,"output_tokens":2},"tokens":{"input_tokens":67,"output_tokens":2}}}}"#,
        "\n",
    );
    assert_meters(
        ApiStyle::Cohere,
        "application/stream+json",
        body.as_bytes(),
        usage(67, 2),
    );
}

#[test]
fn json_scanner_is_not_fooled_by_usage_in_strings_or_nested_objects() {
    let body = br#"{"choices":[{"message":{"content":"{\"usage\":{\"prompt_tokens\":5}}","usage":{"prompt_tokens":6,"completion_tokens":6}}}],"tool":{"usage":{"prompt_tokens":7}},"\"usage":{"prompt_tokens":8},"x":"\"usage\": {\"prompt_tokens\": 9, \"completion_tokens\": 9}"}"#;
    assert_meters(ApiStyle::OpenAi, JSON, body, Usage::default());
    // A key spelled with escapes is still the key.
    let escaped = br#"{"\u0075sage":{"prompt_tokens":3,"completion_\u0074okens":4}}"#;
    assert_meters(ApiStyle::OpenAi, JSON, escaped, usage(3, 4));
}

#[test]
fn counts_that_are_not_u64_integers_are_ignored() {
    for bad in [
        "-1",
        "1.5",
        "1e3",
        "18446744073709551616",
        "\"12\"",
        "true",
        "null",
    ] {
        let body = format!(r#"{{"usage":{{"prompt_tokens":{bad},"completion_tokens":2}}}}"#);
        let want = Usage {
            input: None,
            output: Some(2),
        };
        assert_eq!(
            meter(ApiStyle::OpenAi, JSON, &[body.as_bytes()]),
            want,
            "{bad}"
        );
    }
    let max = br#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":0}}"#;
    assert_eq!(meter(ApiStyle::OpenAi, JSON, &[max]), usage(u64::MAX, 0));
}

#[test]
fn sse_event_over_cap_is_skipped_and_later_events_count() {
    let pad = "x".repeat(MAX_EVENT);
    // The usage comes before the padding, so the tokenizer has counted
    // it by the time the event passes the cap: only the commit rule
    // keeps it out.
    let big = format!(
        "data: {{\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":1}},\"pad\":\"{pad}\"}}\n\n"
    );
    let small =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n";
    let cases = [
        (format!("{big}{small}data: [DONE]\n\n"), usage(5, 6)),
        (format!("{small}{big}"), usage(5, 6)),
        (big.clone(), Usage::default()),
    ];
    for (body, want) in cases {
        for size in [usize::MAX, 4093, 64] {
            let chunks: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
            assert_eq!(meter(ApiStyle::OpenAi, SSE, &chunks), want, "{size}");
        }
    }
}

#[test]
fn sse_multi_line_data_and_comments_are_read() {
    let body = ": ping\ndata: {\"usage\":\ndata:{\"prompt_tokens\":4,\ndata: \"completion_tokens\":5}}\nid: 7\n\n";
    assert_meters_sse(ApiStyle::OpenAi, body.as_bytes(), usage(4, 5));
}

#[test]
fn so_far_reports_anthropic_output_mid_stream() {
    let body = fixture!("anthropic_stream.sse");
    let text = std::str::from_utf8(body).unwrap();
    let delta = text.find("event: message_delta").unwrap();
    let stop = text.find("event: message_stop").unwrap();
    let mut m = UsageMeter::new(ApiStyle::Anthropic, Some(SSE));
    assert_eq!(m.so_far(), Usage::default());
    m.push(&body[..delta]);
    assert_eq!(m.so_far(), usage(25, 1));
    m.push(&body[delta..stop]);
    assert_eq!(m.so_far(), usage(25, 15));
    m.push(&body[stop..]);
    assert_eq!(m.finish(), usage(25, 15));
}

#[test]
fn so_far_reports_openai_responses_usage_once_completed_before_finish() {
    let body = fixture!("openai_responses_stream.sse");
    let text = std::str::from_utf8(body).unwrap();
    let completed = text.find("event: response.completed").unwrap();
    let mut m = UsageMeter::new(ApiStyle::OpenAi, Some(SSE));
    m.push(&body[..completed]);
    assert_eq!(m.so_far(), Usage::default());
    m.push(&body[completed..]);
    assert_eq!(m.so_far(), usage(37, 11));
    assert_eq!(m.finish(), usage(37, 11));
}

#[test]
fn sse_event_counts_only_once_it_ends() {
    let body = "data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n";
    let mut m = UsageMeter::new(ApiStyle::OpenAi, Some(SSE));
    m.push(body.as_bytes());
    assert_eq!(m.so_far(), Usage::default());
    m.push(b"\n");
    assert_eq!(m.so_far(), usage(5, 6));
}

#[test]
fn stream_ending_after_whole_json_without_blank_line_still_counts() {
    let body = b"data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}";
    assert_eq!(meter(ApiStyle::OpenAi, SSE, &[body]), usage(5, 6));
}

#[test]
fn truncated_bodies_count_nothing() {
    let chat = fixture!("openai_chat.json");
    let cut = std::str::from_utf8(chat)
        .unwrap()
        .find("\"usage\"")
        .unwrap();
    assert_eq!(
        meter(ApiStyle::OpenAi, JSON, &[&chat[..cut]]),
        Usage::default()
    );
    let number_cut = br#"{"usage":{"prompt_tokens":11"#;
    assert_eq!(
        meter(ApiStyle::OpenAi, JSON, &[number_cut]),
        Usage::default()
    );
    let sse = b"data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}";
    assert_eq!(meter(ApiStyle::OpenAi, SSE, &[sse]), Usage::default());
    let aws = converse_stream();
    assert_eq!(
        meter(ApiStyle::Bedrock, AWS, &[&aws[..aws.len() - 1]]),
        Usage::default()
    );
}

#[test]
fn content_type_parameters_and_case_are_ignored() {
    let body = fixture!("anthropic_stream.sse");
    let ct = "Text/Event-Stream; charset=utf-8";
    assert_eq!(meter(ApiStyle::Anthropic, ct, &[body]), usage(25, 15));
    let mut m = UsageMeter::new(ApiStyle::Anthropic, None);
    m.push(fixture!("anthropic_messages.json"));
    assert_eq!(m.finish(), usage(2095, 503));
}

#[test]
fn push_after_finish_is_ignored() {
    let mut m = UsageMeter::new(ApiStyle::OpenAi, Some(JSON));
    m.push(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
    assert_eq!(m.finish(), usage(1, 2));
    m.push(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#);
    assert_eq!(m.finish(), usage(1, 2));
}

#[test]
fn deep_nesting_stops_the_scan_without_panicking() {
    let mut body = "[".repeat(100_000);
    body.push_str(&"]".repeat(100_000));
    assert_eq!(
        meter(ApiStyle::OpenAi, JSON, &[body.as_bytes()]),
        Usage::default()
    );
    let sse = format!("data: {body}\n\n");
    assert_eq!(
        meter(ApiStyle::OpenAi, SSE, &[sse.as_bytes()]),
        Usage::default()
    );
}

#[test]
fn crc32_matches_the_check_value() {
    assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
}

fn random_chunks<'a>(rng: &mut StdRng, body: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (a, b) = rest.split_at(rng.random_range(1..=rest.len().min(64)));
        chunks.push(a);
        rest = b;
    }
    chunks
}

const CONTENT_TYPES: [&str; 4] = [JSON, SSE, AWS, "application/octet-stream"];

#[test]
fn random_bytes_never_panic_and_count_nothing() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    for _ in 0..2000 {
        let mut body = vec![0u8; rng.random_range(0..2048)];
        rng.fill(body.as_mut_slice());
        let style = ApiStyle::ALL[rng.random_range(0..ApiStyle::ALL.len())];
        let ct = CONTENT_TYPES[rng.random_range(0..CONTENT_TYPES.len())];
        let chunks = random_chunks(&mut rng, &body);
        assert_eq!(meter(style, ct, &chunks), Usage::default());
    }
}

#[test]
fn json_like_noise_never_panics() {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\\",
        "\\u00",
        "\"usage\"",
        "\"prompt_tokens\"",
        "\"message\"",
        "\"bytes\"",
        "12",
        "-",
        "1e9",
        "true",
        "nul",
        " ",
        "\n",
        "\r",
        "data:",
        "data: ",
        ":x\n",
        "\n\n",
        "\u{e9}",
    ];
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    for _ in 0..2000 {
        let mut body = Vec::new();
        for _ in 0..rng.random_range(0..200) {
            body.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())].as_bytes());
        }
        for &style in ApiStyle::ALL {
            let ct = CONTENT_TYPES[rng.random_range(0..CONTENT_TYPES.len())];
            let chunks = random_chunks(&mut rng, &body);
            let _ = meter(style, ct, &chunks);
        }
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let sse = [
        fixture!("openai_chat_stream.sse"),
        fixture!("anthropic_stream.sse"),
        fixture!("gemini_stream.sse"),
        fixture!("cohere_stream.sse"),
    ];
    let json = [
        fixture!("openai_chat.json"),
        fixture!("gemini_stream_array.json"),
        fixture!("bedrock_converse.json"),
    ];
    let aws = [converse_stream(), invoke_stream()];
    let mut cases: Vec<(&str, &[u8])> = Vec::new();
    cases.extend(sse.iter().map(|b| (SSE, *b)));
    cases.extend(json.iter().map(|b| (JSON, *b)));
    cases.extend(aws.iter().map(|b| (AWS, b.as_slice())));
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    for (ct, original) in cases {
        for _ in 0..300 {
            let mut body = original.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..body.len());
                match rng.random_range(0..4) {
                    0 => body[at] = rng.random(),
                    1 => body.insert(at, rng.random()),
                    2 => {
                        body.remove(at);
                    }
                    _ => body.truncate(at),
                }
                if body.is_empty() {
                    break;
                }
            }
            for &style in ApiStyle::ALL {
                let chunks = random_chunks(&mut rng, &body);
                let _ = meter(style, ct, &chunks);
            }
        }
    }
}
