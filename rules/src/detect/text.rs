//! Text extraction from request bodies: what the injection detector reads.
//!
//! For a model provider only the fields that carry prompt text are read (SPEC §6:
//! messages, input, prompt, system, tool results, …), across the provider schemas:
//! OpenAI chat and Responses, Anthropic, Gemini `contents[].parts[].text`, Bedrock
//! `converse`, Cohere. Inside them every string is read except those under keys that
//! never hold prose (`role`, `type`, ids, base64 `data`, image URLs, …). Tool and
//! function descriptions are read too: a poisoned tool description is an injection.
//!
//! For other destinations every string in the JSON is read; a body that is not JSON is
//! read as (lossy) UTF-8.

use serde_json::Value;

/// Top-level fields that carry prompt text in some provider schema.
const PROMPT_ROOTS: &[&str] = &[
    "messages",
    "input",
    "inputs",
    "inputText",
    "prompt",
    "suffix",
    "system",
    "instructions",
    "contents",
    "systemInstruction",
    "system_instruction",
    "message",
    "preamble",
    "chat_history",
    "documents",
    "query",
    "texts",
    "text",
    "tool_results",
    "tools",
    "functions",
];

/// Keys whose string values are never prose.
const SKIP_KEYS: &[&str] = &[
    "role",
    "type",
    "id",
    "tool_call_id",
    "tool_use_id",
    "call_id",
    "model",
    "name",
    "mime_type",
    "mimeType",
    "media_type",
    "data",
    "image_url",
    "url",
    "uri",
    "file_id",
    "file_data",
    "fileUri",
    "file_uri",
    "signature",
    "thoughtSignature",
    "cache_control",
    "format",
    "detail",
    "encrypted_content",
    "audio",
    "input_audio",
    "inlineData",
    "inline_data",
    "fileData",
    "image",
    "bytes",
];

/// Collect the prompt strings of a JSON body into `out`. `schema` says the body
/// belongs to a model provider, so only [`PROMPT_ROOTS`] are read.
pub(crate) fn extract<'v>(json: &'v Value, schema: bool, out: &mut Vec<&'v str>) {
    match (schema, json) {
        (true, Value::Object(map)) => {
            for (key, value) in map {
                if PROMPT_ROOTS.contains(&key.as_str()) {
                    walk(value, out);
                }
            }
        }
        _ => walk(json, out),
    }
}

fn walk<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
        Value::Object(map) => {
            for (key, value) in map {
                if !SKIP_KEYS.contains(&key.as_str()) {
                    walk(value, out);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Every string in a JSON value, keys included, one per line: the decoded form of the
/// body that secret and vault scanning read besides the raw bytes, so that `\u0073k-`
/// escapes hide nothing.
pub(crate) fn all_strings(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::String(s) => {
            out.extend_from_slice(s.as_bytes());
            out.push(b'\n');
        }
        Value::Array(items) => items.iter().for_each(|v| all_strings(v, out)),
        Value::Object(map) => {
            for (key, value) in map {
                out.extend_from_slice(key.as_bytes());
                out.push(b'\n');
                all_strings(value, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(body: &str) -> String {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let mut out = Vec::new();
        extract(&json, true, &mut out);
        out.iter().map(|s| format!("{s}\n")).collect()
    }

    #[test]
    fn openai_chat_text_parts_are_read_but_roles_and_images_are_not() {
        let text = text_of(
            r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hello"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#,
        );
        assert_eq!(text, "Be brief.\nHello\n");
    }

    #[test]
    fn gemini_parts_and_system_instruction_are_read() {
        let text = text_of(
            r#"{"systemInstruction":{"parts":[{"text":"Sys"}]},
            "contents":[{"role":"user","parts":[{"text":"Hi"},{"inlineData":{"mimeType":"image/png","data":"AAAA"}}]}]}"#,
        );
        assert_eq!(text, "Hi\nSys\n");
    }

    #[test]
    fn tool_results_and_tool_descriptions_are_read() {
        let text = text_of(
            r#"{"messages":[{"role":"tool","tool_call_id":"c1","content":"result text"}],
            "tools":[{"type":"function","function":{"name":"f","description":"desc"}}]}"#,
        );
        assert_eq!(text, "result text\ndesc\n");
    }
}
