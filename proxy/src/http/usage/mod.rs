//! The token-usage meter (SPEC §8): a tee on a response body that reads how
//! many input and output tokens the provider says the call used.
//!
//! The send phase streams each response chunk to the client untouched and
//! hands the same bytes to [`UsageMeter::push`]. The meter never delays or
//! changes a chunk; it only watches. At end of stream [`UsageMeter::finish`]
//! gives the [`Usage`] that budgets reconcile against, and
//! [`UsageMeter::so_far`] gives the running count a hard output cap needs.
//!
//! It is incremental because a response can be long (a non-streamed JSON
//! body, an hour of SSE) and a provider's JSON can be split at any byte
//! across chunks. So nothing is buffered whole:
//!
//! - the framing (plain JSON, SSE, AWS event-stream) is a byte state machine;
//! - JSON is read by a small streaming tokenizer (`Scanner`) that tracks
//!   depth, strings and escapes, and knows the path of keys to the value it
//!   is in. It looks only at integers found at a few exact paths from the
//!   root (`usage.prompt_tokens`, `message.usage.input_tokens`, …), so a
//!   `"usage"` inside message text or deeper in the body never counts, and
//!   it needs no copy of the `usage` object: its state is a few fixed arrays;
//! - an SSE event is fed to the tokenizer as it arrives and counts only once
//!   it ends as well-formed JSON no longer than [`MAX_EVENT`];
//! - an AWS event-stream message is the one thing held whole (its CRC comes
//!   last), up to [`MAX_EVENT`]; a longer one is skipped.
//!
//! Upstream bytes are untrusted: nothing here can panic, and malformed input
//! just yields fields of `None`.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use http::HeaderMap;

use self::Act::{Input, Output};
use self::Key as K;

pub use portcullis_rules::ApiStyle;

/// The longest SSE event (its `data`) or AWS event-stream message the meter
/// reads. A longer one is skipped, not an error: usage events are small.
pub const MAX_EVENT: usize = 1 << 20;

/// Token counts as the provider reported them; `None` when it did not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
}

impl Usage {
    /// Bedrock `invoke` reports usage in response headers whatever the model.
    pub fn from_bedrock_headers(headers: &HeaderMap) -> Usage {
        Usage {
            input: header_count(headers, "x-amzn-bedrock-input-token-count"),
            output: header_count(headers, "x-amzn-bedrock-output-token-count"),
        }
    }

    /// Each field from `self`, else from `fallback`: for Bedrock `invoke`,
    /// the headers first, then what the model's body said.
    pub fn or(self, fallback: Usage) -> Usage {
        Usage {
            input: self.input.or(fallback.input),
            output: self.output.or(fallback.output),
        }
    }
}

fn header_count(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Watches one response body and reads its token usage.
pub struct UsageMeter {
    targets: &'static [Target],
    framing: Framing,
    tally: Tally,
    finished: bool,
}

impl UsageMeter {
    /// `content_type` is the response's Content-Type (decides SSE vs JSON vs
    /// AWS event-stream); anything else, or none, is read as JSON.
    pub fn new(style: ApiStyle, content_type: Option<&str>) -> UsageMeter {
        let media = content_type
            .map(|ct| ct.split_once(';').map_or(ct, |(m, _)| m).trim())
            .unwrap_or("");
        let framing = if media.eq_ignore_ascii_case("text/event-stream") {
            Framing::Sse(Box::default())
        } else if media.eq_ignore_ascii_case("application/vnd.amazon.eventstream") {
            Framing::EventStream(Box::default())
        } else {
            Framing::Json(Box::default())
        };
        UsageMeter {
            targets: targets(style),
            framing,
            tally: Tally::default(),
            finished: false,
        }
    }

    /// Reads one chunk of the body, as it was sent to the client.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.finished {
            return;
        }
        match &mut self.framing {
            Framing::Json(s) => s.feed(chunk, self.targets, &mut self.tally),
            Framing::Sse(s) => s.push(chunk, self.targets, &mut self.tally),
            Framing::EventStream(s) => s.push(chunk, self.targets, &mut self.tally),
        }
    }

    /// Usage seen so far (for a running hard cap on output tokens).
    pub fn so_far(&self) -> Usage {
        self.tally.usage()
    }

    /// Call at end of stream. Later pushes are ignored.
    pub fn finish(&mut self) -> Usage {
        if !self.finished {
            self.finished = true;
            match &mut self.framing {
                Framing::Json(s) => s.end(),
                Framing::Sse(s) => s.dispatch(&mut self.tally),
                // A message cut short has no valid CRC: nothing to read.
                Framing::EventStream(_) => {}
            }
        }
        self.so_far()
    }
}

/// Boxed so that a meter is small to move; the states hold fixed arrays.
enum Framing {
    Json(Box<Scanner>),
    Sse(Box<Sse>),
    EventStream(Box<EventStream>),
}

// ---------------------------------------------------------------------------
// What to count: paths from the root of each JSON value.

/// A member name the meter cares about, or `Other`; `Elem` marks an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Other,
    Elem,
    Usage,
    PromptTokens,
    CompletionTokens,
    InputTokens,
    OutputTokens,
    Message,
    Response,
    UsageMetadata,
    PromptTokenCount,
    CandidatesTokenCount,
    InputTokensCamel,
    OutputTokensCamel,
    InvocationMetrics,
    InputTokenCount,
    OutputTokenCount,
    PromptTokenCountSnake,
    GenerationTokenCount,
    Metadata,
    Delta,
    Tokens,
    BilledUnits,
    Meta,
    Bytes,
}

impl Key {
    fn intern(name: &[u8]) -> Key {
        match name {
            b"usage" => Key::Usage,
            b"prompt_tokens" => Key::PromptTokens,
            b"completion_tokens" => Key::CompletionTokens,
            b"input_tokens" => Key::InputTokens,
            b"output_tokens" => Key::OutputTokens,
            b"message" => Key::Message,
            b"response" => Key::Response,
            b"usageMetadata" => Key::UsageMetadata,
            b"promptTokenCount" => Key::PromptTokenCount,
            b"candidatesTokenCount" => Key::CandidatesTokenCount,
            b"inputTokens" => Key::InputTokensCamel,
            b"outputTokens" => Key::OutputTokensCamel,
            b"amazon-bedrock-invocationMetrics" => Key::InvocationMetrics,
            b"inputTokenCount" => Key::InputTokenCount,
            b"outputTokenCount" => Key::OutputTokenCount,
            b"prompt_token_count" => Key::PromptTokenCountSnake,
            b"generation_token_count" => Key::GenerationTokenCount,
            b"metadata" => Key::Metadata,
            b"delta" => Key::Delta,
            b"tokens" => Key::Tokens,
            b"billed_units" => Key::BilledUnits,
            b"meta" => Key::Meta,
            b"bytes" => Key::Bytes,
            _ => Key::Other,
        }
    }
}

/// What to do with the value at a target path. A count replaces an earlier
/// one of the same field unless that one came from a stronger source (a
/// higher rank): so the last of equals wins, and e.g. Anthropic's input
/// stays the one from `message_start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Input(u8),
    Output(u8),
    /// Keep the string (Bedrock's base64 `bytes`).
    Capture,
}

struct Target {
    path: &'static [Key],
    act: Act,
}

const fn t(path: &'static [Key], act: Act) -> Target {
    Target { path, act }
}

/// Chat completions (`usage.prompt_tokens`, also on the last SSE chunk) and
/// the Responses API (`usage.input_tokens`, and `response.usage` in the
/// `response.completed` event; earlier events carry `usage: null`).
static OPENAI: &[Target] = &[
    t(&[K::Usage, K::PromptTokens], Input(1)),
    t(&[K::Usage, K::CompletionTokens], Output(1)),
    t(&[K::Usage, K::InputTokens], Input(1)),
    t(&[K::Usage, K::OutputTokens], Output(1)),
    t(&[K::Response, K::Usage, K::InputTokens], Input(1)),
    t(&[K::Response, K::Usage, K::OutputTokens], Output(1)),
];

/// Messages: `usage` in the body; streamed, input from `message_start`
/// (outranking any `input_tokens` a later `message_delta` repeats) and the
/// cumulative output from the last `message_delta`.
static ANTHROPIC: &[Target] = &[
    t(&[K::Message, K::Usage, K::InputTokens], Input(2)),
    t(&[K::Message, K::Usage, K::OutputTokens], Output(1)),
    t(&[K::Usage, K::InputTokens], Input(1)),
    t(&[K::Usage, K::OutputTokens], Output(1)),
];

/// Gemini and Vertex: `usageMetadata` on the body, on each SSE event or on
/// each element of the streamed JSON array; the last one wins.
static GOOGLE: &[Target] = &[
    t(&[K::UsageMetadata, K::PromptTokenCount], Input(1)),
    t(&[K::UsageMetadata, K::CandidatesTokenCount], Output(1)),
];

/// Bedrock: `converse` (and the `metadata` event of `converse-stream`), and
/// for `invoke` the model's own body: Anthropic, Nova, OpenAI-shaped and
/// Llama, with Bedrock's own invocation metrics on a stream's last chunk
/// outranking what the model said.
static BEDROCK: &[Target] = &[
    t(&[K::Usage, K::InputTokensCamel], Input(1)),
    t(&[K::Usage, K::OutputTokensCamel], Output(1)),
    t(&[K::Metadata, K::Usage, K::InputTokensCamel], Input(1)),
    t(&[K::Metadata, K::Usage, K::OutputTokensCamel], Output(1)),
    t(&[K::Message, K::Usage, K::InputTokens], Input(2)),
    t(&[K::Message, K::Usage, K::OutputTokens], Output(1)),
    t(&[K::Usage, K::InputTokens], Input(1)),
    t(&[K::Usage, K::OutputTokens], Output(1)),
    t(&[K::Usage, K::PromptTokens], Input(1)),
    t(&[K::Usage, K::CompletionTokens], Output(1)),
    t(&[K::PromptTokenCountSnake], Input(1)),
    t(&[K::GenerationTokenCount], Output(1)),
    t(&[K::InvocationMetrics, K::InputTokenCount], Input(3)),
    t(&[K::InvocationMetrics, K::OutputTokenCount], Output(3)),
];

/// Cohere: v2 `usage` (body) and `delta.usage` (`message-end` event), v1
/// `meta` (body) and `response.meta` (the `stream-end` line). Real `tokens`
/// outrank `billed_units`.
static COHERE: &[Target] = &[
    t(&[K::Usage, K::Tokens, K::InputTokens], Input(2)),
    t(&[K::Usage, K::Tokens, K::OutputTokens], Output(2)),
    t(&[K::Usage, K::BilledUnits, K::InputTokens], Input(1)),
    t(&[K::Usage, K::BilledUnits, K::OutputTokens], Output(1)),
    t(&[K::Delta, K::Usage, K::Tokens, K::InputTokens], Input(2)),
    t(&[K::Delta, K::Usage, K::Tokens, K::OutputTokens], Output(2)),
    t(
        &[K::Delta, K::Usage, K::BilledUnits, K::InputTokens],
        Input(1),
    ),
    t(
        &[K::Delta, K::Usage, K::BilledUnits, K::OutputTokens],
        Output(1),
    ),
    t(&[K::Meta, K::Tokens, K::InputTokens], Input(2)),
    t(&[K::Meta, K::Tokens, K::OutputTokens], Output(2)),
    t(&[K::Meta, K::BilledUnits, K::InputTokens], Input(1)),
    t(&[K::Meta, K::BilledUnits, K::OutputTokens], Output(1)),
    t(&[K::Response, K::Meta, K::Tokens, K::InputTokens], Input(2)),
    t(
        &[K::Response, K::Meta, K::Tokens, K::OutputTokens],
        Output(2),
    ),
    t(
        &[K::Response, K::Meta, K::BilledUnits, K::InputTokens],
        Input(1),
    ),
    t(
        &[K::Response, K::Meta, K::BilledUnits, K::OutputTokens],
        Output(1),
    ),
];

/// The payload of a Bedrock `chunk` event: `{"bytes":"<base64>"}`.
static CHUNK: &[Target] = &[t(&[K::Bytes], Act::Capture)];

fn targets(style: ApiStyle) -> &'static [Target] {
    match style {
        ApiStyle::OpenAi => OPENAI,
        ApiStyle::Anthropic => ANTHROPIC,
        ApiStyle::Google => GOOGLE,
        ApiStyle::Bedrock => BEDROCK,
        ApiStyle::Cohere => COHERE,
        // A style this meter does not know yet counts nothing.
        _ => &[],
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    value: Option<u64>,
    rank: u8,
}

impl Count {
    fn offer(&mut self, value: u64, rank: u8) {
        if self.value.is_none() || rank >= self.rank {
            *self = Count {
                value: Some(value),
                rank,
            };
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    input: Count,
    output: Count,
}

impl Tally {
    fn usage(&self) -> Usage {
        Usage {
            input: self.input.value,
            output: self.output.value,
        }
    }
}

mod eventstream;
mod json;
mod sse;
#[cfg(test)]
mod tests;

use eventstream::*;
use json::*;
use sse::*;
