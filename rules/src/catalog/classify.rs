//! Request classification (SPEC §5): provider, model, operation and streaming from the
//! host, path, query and the one strict parse of the body.

use std::borrow::Cow;

use serde_json::Value;

use super::table::{Catalog, PACKAGE_REGISTRIES};
use super::{
    ApiStyle, Classification, Classified, DestinationKind, ModelOrigin, ModelSource, Operation,
};
use crate::body::BodyView;
use crate::host::Host;

impl Catalog {
    /// Classify one request (SPEC §5).
    pub(crate) fn classify(
        &self,
        host: &Host,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &BodyView<'_>,
    ) -> Classified {
        let Some(provider) = self.provider_for(host) else {
            return Classified {
                classification: Classification::outside(outside_kind(host, path)),
                model_origin: None,
                api: None,
                model_ambiguous: false,
            };
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

        // Body fields come from the one strict parse (keys are unique there), and only
        // for a provider host: other requests never pay for it here.
        let top_field = |name: &str| body.member(name);

        let mut model = None;
        let mut model_origin = None;
        let mut model_segment = None;
        for source in &provider.model_from {
            match source {
                ModelSource::Body(field) => {
                    if let Some(Value::String(m)) = top_field(field) {
                        if !m.is_empty() {
                            model = Some(m.clone());
                            model_origin = Some(ModelOrigin::Body(field.clone()));
                        }
                    }
                }
                ModelSource::Path(marker) => {
                    let found = segments
                        .iter()
                        .position(|s| s == marker)
                        .map(|i| i + 1)
                        .and_then(|i| segments.get(i).map(|seg| (i, *seg)));
                    if let Some((i, segment)) = found {
                        let decoded = percent_decode(segment);
                        let value = if i + 1 == segments.len() {
                            strip_verb(&decoded)
                        } else {
                            &decoded
                        };
                        if !value.is_empty() {
                            model = Some(value.to_owned());
                            model_origin = Some(ModelOrigin::Elsewhere);
                            model_segment = Some(i);
                        }
                    }
                }
                ModelSource::Query(param) => {
                    if let Some(value) = query_param(query, param) {
                        if !value.is_empty() {
                            model = Some(value.into_owned());
                            model_origin = Some(ModelOrigin::Elsewhere);
                        }
                    }
                }
            }
            if model.is_some() {
                break;
            }
        }

        // The model segment (an Azure deployment may be called `files`) is not an
        // operation keyword.
        let op_segments: Vec<&str> = segments
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != model_segment)
            .map(|(_, s)| *s)
            .collect();
        let (operation, path_streams) = match provider.api {
            ApiStyle::Google => google_operation(&segments, &op_segments, method, model.as_deref()),
            ApiStyle::Bedrock => bedrock_operation(&segments, model.as_deref()),
            _ => (generic_operation(&op_segments, method), false),
        };
        let body_streams = top_field("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let sse_query = provider.api == ApiStyle::Google
            && query_param(query, "alt").is_some_and(|alt| alt == "sse");

        Classified {
            classification: Classification {
                kind: DestinationKind::ModelProvider,
                provider: Some(provider.id.clone()),
                model,
                operation: Some(operation),
                stream: body_streams || path_streams || sse_query,
                key_injection: Some(provider.key_injection.clone()),
            },
            model_origin,
            api: Some(provider.api),
            model_ambiguous: provider.model_from.iter().any(
                |source| matches!(source, ModelSource::Query(param) if query_param_count(query, param) > 1),
            ),
        }
    }
}

/// Package registry, other API, or unknown.
fn outside_kind(host: &Host, path: &str) -> DestinationKind {
    if let Host::Name(name) = host {
        if PACKAGE_REGISTRIES.contains(&name.as_str()) {
            return DestinationKind::PackageRegistry;
        }
        let first = name.split('.').next().unwrap_or_default();
        let api_host = first == "api"
            || first.starts_with("api-")
            || first.ends_with("-api")
            || name.ends_with(".googleapis.com")
            || name.ends_with(".amazonaws.com")
            || name.ends_with(".azure-api.net");
        if api_host {
            return DestinationKind::Api;
        }
    }
    let versioned = path
        .strip_prefix("/v")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit());
    if path.starts_with("/api/") || path == "/api" || path.starts_with("/graphql") || versioned {
        DestinationKind::Api
    } else {
        DestinationKind::Unknown
    }
}

/// Operation from the path of an OpenAI-style (also Anthropic, Cohere) API. Keywords are
/// checked from the most to the least specific, so `/v1/messages/batches` is a batch and
/// `/v1/messages/count_tokens` a token count.
fn generic_operation(segments: &[&str], method: &str) -> Operation {
    let has = |name: &str| segments.contains(&name);
    let pair = |a: &str, b: &str| segments.windows(2).any(|w| w[0] == a && w[1] == b);
    let last = segments.last().copied().unwrap_or_default();
    if has("threads") || has("assistants") || has("vector_stores") {
        Operation::Other
    } else if has("batches") || has("batch") {
        Operation::Batches
    } else if has("fine_tuning") || has("fine-tuning") || has("fine_tunes") {
        Operation::FineTuning
    } else if has("files") || has("uploads") {
        Operation::Files
    } else if has("realtime") {
        Operation::Realtime
    } else if has("count_tokens") || has("count-tokens") || last == "input_tokens" {
        Operation::CountTokens
    } else if pair("chat", "completions") || pair("agents", "completions") {
        Operation::Chat
    } else if has("responses") {
        Operation::Responses
    } else if has("messages") {
        Operation::Messages
    } else if has("completions") || last == "complete" || last == "generate" {
        Operation::Completions
    } else if has("embeddings") || has("embed") {
        Operation::Embeddings
    } else if has("images") || has("text_to_image") {
        Operation::Images
    } else if has("audio") {
        Operation::Audio
    } else if has("moderations") {
        Operation::Moderations
    } else if has("chat") {
        Operation::Chat
    } else if has("models") && method.eq_ignore_ascii_case("GET") {
        Operation::ModelsList
    } else {
        Operation::Other
    }
}

/// Gemini and Vertex: the `:verb` of the last segment decides; without one, the path
/// keywords do (files, batches, models list, the OpenAI-compatible endpoint).
fn google_operation(
    segments: &[&str],
    op_segments: &[&str],
    method: &str,
    model: Option<&str>,
) -> (Operation, bool) {
    let last = segments.last().copied().unwrap_or_default();
    let model = model.unwrap_or_default().to_ascii_lowercase();
    if let Some((_, verb)) = last.rsplit_once(':') {
        let anthropic = segments.contains(&"anthropic");
        let op = match verb {
            "generateContent" | "generateAnswer" | "generateMessage" => Operation::Chat,
            "streamGenerateContent" => return (Operation::Chat, true),
            "countTokens" | "computeTokens" => Operation::CountTokens,
            "embedContent"
            | "batchEmbedContents"
            | "asyncBatchEmbedContent"
            | "embedText"
            | "batchEmbedText" => Operation::Embeddings,
            "generateText" => Operation::Completions,
            "batchGenerateContent" => Operation::Batches,
            "bidiGenerateContent" => Operation::Realtime,
            "rawPredict" if anthropic => Operation::Messages,
            "streamRawPredict" if anthropic => return (Operation::Messages, true),
            "rawPredict" => Operation::Chat,
            "streamRawPredict" => return (Operation::Chat, true),
            "predict" | "predictLongRunning" if model.contains("embedding") => {
                Operation::Embeddings
            }
            "predict" | "predictLongRunning" if model.contains("imagen") => Operation::Images,
            _ => Operation::Other,
        };
        return (op, false);
    }
    if last.contains("BidiGenerateContent") {
        return (Operation::Realtime, false);
    }
    let has = |name: &str| segments.contains(&name);
    if has("cachedContents") {
        (Operation::Other, false)
    } else if has("tunedModels") && !method.eq_ignore_ascii_case("GET") || has("tuningJobs") {
        (Operation::FineTuning, false)
    } else if has("batchPredictionJobs") {
        (Operation::Batches, false)
    } else {
        (generic_operation(op_segments, method), false)
    }
}

/// Bedrock runtime: `/model/{id}/{action}`.
fn bedrock_operation(segments: &[&str], model: Option<&str>) -> (Operation, bool) {
    let action = segments
        .iter()
        .position(|s| *s == "model")
        .and_then(|i| segments.get(i + 2))
        .copied()
        .unwrap_or_default();
    let model = model.unwrap_or_default().to_ascii_lowercase();
    let invoked = || {
        if model.contains("embed") {
            Operation::Embeddings
        } else if model.contains("image")
            || model.contains("canvas")
            || model.starts_with("stability.")
            || model.contains("stable-diffusion")
        {
            Operation::Images
        } else if model.contains("rerank") {
            Operation::Other
        } else {
            Operation::Chat
        }
    };
    match action {
        "invoke" => (invoked(), false),
        "invoke-with-response-stream" => (invoked(), true),
        "converse" => (Operation::Chat, false),
        "converse-stream" => (Operation::Chat, true),
        "count-tokens" => (Operation::CountTokens, false),
        _ => (Operation::Other, false),
    }
}

/// `gemini-2.0-flash:generateContent` → `gemini-2.0-flash`. A suffix that is not all
/// letters stays: Bedrock ids end in `:0`.
fn strip_verb(segment: &str) -> &str {
    match segment.rsplit_once(':') {
        Some((head, verb)) if !verb.is_empty() && verb.bytes().all(|b| b.is_ascii_alphabetic()) => {
            head
        }
        _ => segment,
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
pub(crate) fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(&key.replace('+', " ")) == name).then_some(value)
        })
        .next()
        .map(|value| {
            if value.contains('+') {
                Cow::Owned(percent_decode(&value.replace('+', " ")).into_owned())
            } else {
                percent_decode(value)
            }
        })
}

/// How many times `name` appears in a query string (names percent-decoded).
pub(crate) fn query_param_count(query: Option<&str>, name: &str) -> usize {
    query.map_or(0, |q| {
        q.split('&')
            .filter(|pair| {
                let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
                percent_decode(&key.replace('+', " ")) == name
            })
            .count()
    })
}

/// Decode `%XX` escapes; a malformed escape is kept as written, invalid UTF-8 is replaced.
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                // Two hex digits: at most 0xff.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(byte);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_verb_keeps_bedrock_version_suffixes() {
        assert_eq!(
            strip_verb("gemini-2.0-flash:generateContent"),
            "gemini-2.0-flash"
        );
        assert_eq!(
            strip_verb("anthropic.claude-3-5-sonnet-20240620-v1:0"),
            "anthropic.claude-3-5-sonnet-20240620-v1:0"
        );
        assert_eq!(strip_verb("plain"), "plain");
    }

    #[test]
    fn percent_decode_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%3Ab"), "a:b");
        assert_eq!(percent_decode("a%zzb%"), "a%zzb%");
        assert_eq!(percent_decode("%2F%2f"), "//");
    }

    #[test]
    fn query_param_decodes_and_takes_the_first_value() {
        assert_eq!(
            query_param(Some("a=1&model=gpt%2D4o&model=x"), "model").as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(query_param(Some("alt=sse"), "alt").as_deref(), Some("sse"));
        assert_eq!(query_param(Some("q=a+b"), "q").as_deref(), Some("a b"));
        assert_eq!(query_param(None, "model"), None);
    }

    #[test]
    fn query_param_count_sees_encoded_duplicates() {
        assert_eq!(query_param_count(Some("model=a&m%6fdel=b"), "model"), 2);
        assert_eq!(query_param_count(Some("model=a&models=b"), "model"), 1);
        assert_eq!(query_param_count(Some("model"), "model"), 1);
        assert_eq!(query_param_count(None, "model"), 0);
    }
}
