//! Narrowing (SPEC §4.2): rewrite a JSON request body within a route's bounds and name
//! the fields that changed.
//!
//! - `max_tokens`: `max_tokens`, `max_output_tokens` and `max_completion_tokens` above
//!   the bound (or `null`, or not a number) are set to it, as are Gemini's
//!   `generationConfig.maxOutputTokens` and Bedrock Converse's
//!   `inferenceConfig.maxTokens`. When the request names no bound at all, the field
//!   its API uses is added, so leaving it out does not escape the clamp.
//! - `fallback_model`: a model outside the route's `models` is replaced, when the model
//!   is a body field. A model in the path or query cannot be rewritten, and is refused.
//! - `tools_allow`: `tools` / `functions` entries whose name is not listed are dropped
//!   (an entry without a readable name too). If none remain the list is removed, with
//!   the `tool_choice` / `function_call` / `parallel_tool_calls` that would now be
//!   invalid; a `tool_choice` naming a dropped tool is removed.
//! - `force_include_usage`: an OpenAI-style streaming chat or completion gets
//!   `stream_options.include_usage = true`, so the proxy can meter it.
//!
//! Narrowing reads the one strict parse of the body ([`crate::body`]): a body that did
//! not parse is refused, never forwarded with a member left unchecked, and a key given
//! twice never reaches it (the parse refuses it). The body is rebuilt from its
//! top-level members: untouched members keep their exact bytes.

use std::fmt;

use serde_json::{Map, Value};

use crate::body::{Document, Parsed};
use crate::catalog::{ApiStyle, Operation};

/// A route's `narrow = { … }` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NarrowSpec {
    /// Upper bound for the response token limit.
    pub max_tokens: Option<u64>,
    /// Model that replaces one outside the route's `models`.
    pub fallback_model: Option<String>,
    /// Tool / function names that may stay; `None` keeps all.
    pub tools_allow: Option<Vec<String>>,
    /// Force `stream_options.include_usage = true` on OpenAI-style streams.
    pub force_include_usage: bool,
}

/// A rewritten body and the names of the fields that changed.
#[derive(Clone, PartialEq, Eq)]
pub struct Narrowed {
    /// The body to forward.
    pub body: Vec<u8>,
    /// Changed field names only, e.g. `["max_tokens", "model", "tools"]`.
    pub fields: Vec<String>,
}

impl fmt::Debug for Narrowed {
    /// The body is prompt content: only its size is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Narrowed")
            .field("body_len", &self.body.len())
            .field("fields", &self.fields)
            .finish()
    }
}

/// What narrowing needs to know about the request.
pub(crate) struct NarrowRequest<'a> {
    /// The one strict parse of the body.
    pub(crate) body: &'a Parsed<'a>,
    pub(crate) provider: Option<&'a str>,
    pub(crate) api: Option<ApiStyle>,
    pub(crate) operation: Option<Operation>,
    pub(crate) path: &'a str,
    pub(crate) stream: bool,
    /// `Some(field)` when the model must be replaced and lives in body field `field`;
    /// `None` when the model is acceptable.
    pub(crate) replace_model_in: Option<&'a str>,
}

/// Why a request could not be narrowed into bounds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NarrowError {
    /// The model must change but is not a body field, or the body is not a JSON object.
    ModelNotRewritable,
    /// The body looks like JSON but did not parse strictly, or a member has no parsed
    /// value: it is refused, never forwarded with that member unchecked.
    Unparseable,
}

/// One top-level member: untouched bytes with their parsed value, or a new value.
enum Member<'a> {
    Raw(&'a str, &'a Value),
    New(Value),
}

impl Member<'_> {
    fn value(&self) -> Value {
        self.value_ref().clone()
    }

    fn value_ref(&self) -> &Value {
        match self {
            Member::Raw(_, value) => value,
            Member::New(value) => value,
        }
    }
}

/// The body being rewritten: the members of the one strict parse, in body order (keys
/// are unique: the parse refuses a key given twice).
struct Body<'a> {
    members: Vec<(String, Member<'a>)>,
    fields: Vec<String>,
}

impl<'a> Body<'a> {
    fn new(doc: &'a Document<'a>) -> Result<Body<'a>, NarrowError> {
        let map = doc.value.as_object().ok_or(NarrowError::Unparseable)?;
        let members = doc
            .members()
            .ok_or(NarrowError::Unparseable)?
            .into_iter()
            .map(|(key, raw)| {
                let value = map.get(key).ok_or(NarrowError::Unparseable)?;
                Ok((key.to_owned(), Member::Raw(raw, value)))
            })
            .collect::<Result<Vec<_>, NarrowError>>()?;
        Ok(Body {
            members,
            fields: Vec::new(),
        })
    }

    fn get(&self, key: &str) -> Option<Value> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, m)| m.value())
    }

    fn lookup(&self, key: &str) -> Option<&Value> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, m)| m.value_ref())
    }

    fn has(&self, key: &str) -> bool {
        self.members.iter().any(|(k, _)| k == key)
    }

    fn set(&mut self, key: &str, value: Value, field: &str) {
        match self.members.iter_mut().find(|(k, _)| k == key) {
            Some((_, member)) => *member = Member::New(value),
            None => self.members.push((key.to_owned(), Member::New(value))),
        }
        self.changed(field);
    }

    fn remove(&mut self, key: &str) -> bool {
        let before = self.members.len();
        self.members.retain(|(k, _)| k != key);
        if self.members.len() != before {
            self.changed(key);
            true
        } else {
            false
        }
    }

    fn changed(&mut self, field: &str) {
        if !self.fields.iter().any(|f| f == field) {
            self.fields.push(field.to_owned());
        }
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(b'{');
        for (i, (key, member)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // A String always serializes.
            out.extend(serde_json::to_vec(key).unwrap_or_default());
            out.push(b':');
            match member {
                Member::Raw(raw, _) => out.extend_from_slice(raw.as_bytes()),
                Member::New(value) => out.extend(serde_json::to_vec(value).unwrap_or_default()),
            }
        }
        out.push(b'}');
        out
    }
}

/// What narrowing made of a request.
pub(crate) struct NarrowOutcome {
    /// The rewritten body; `None` when nothing had to change.
    pub(crate) narrowed: Option<Narrowed>,
    /// [`max_tokens_bound`] of the body as it will be forwarded.
    pub(crate) max_output_tokens: Option<u64>,
}

/// Apply `spec` to the request.
pub(crate) fn narrow(
    spec: &NarrowSpec,
    req: &NarrowRequest<'_>,
) -> Result<NarrowOutcome, NarrowError> {
    let mut body = match req.body {
        Parsed::Json(doc) if doc.is_object() => Body::new(doc)?,
        Parsed::Unparseable => return Err(NarrowError::Unparseable),
        // Not an object (or not JSON): there is no field to bound or replace.
        _ => {
            return match req.replace_model_in {
                Some(_) => Err(NarrowError::ModelNotRewritable),
                None => Ok(NarrowOutcome {
                    narrowed: None,
                    max_output_tokens: None,
                }),
            }
        }
    };

    if let Some(field) = req.replace_model_in {
        let Some(fallback) = &spec.fallback_model else {
            return Err(NarrowError::ModelNotRewritable);
        };
        body.set(field, Value::String(fallback.clone()), field);
    }
    if let Some(limit) = spec.max_tokens {
        clamp_tokens(&mut body, limit, req);
    }
    if let Some(allow) = &spec.tools_allow {
        filter_tools(&mut body, allow);
    }
    if spec.force_include_usage
        && req.stream
        && req.api == Some(ApiStyle::OpenAi)
        && matches!(
            req.operation,
            Some(Operation::Chat | Operation::Completions)
        )
    {
        force_usage(&mut body);
    }

    let max_output_tokens = max_tokens_bound(|key| body.lookup(key));
    let narrowed = (!body.fields.is_empty()).then(|| Narrowed {
        body: body.render(),
        fields: body.fields,
    });
    Ok(NarrowOutcome {
        narrowed,
        max_output_tokens,
    })
}

/// Top-level token-limit fields, in every API's spelling.
const TOKEN_FIELDS: &[&str] = &["max_tokens", "max_output_tokens", "max_completion_tokens"];

/// Nested token-limit fields: Gemini (both JSON spellings) and Bedrock Converse.
const NESTED_TOKEN_FIELDS: &[(&str, &str)] = &[
    ("generationConfig", "maxOutputTokens"),
    ("generation_config", "max_output_tokens"),
    ("inferenceConfig", "maxTokens"),
];

/// The response-token bound a JSON object body names, looked up through `member` (its
/// top-level members): [`TOKEN_FIELDS`] and [`NESTED_TOKEN_FIELDS`], read as
/// non-negative integers. When several are given the largest counts, so that a
/// reservation made from it covers whichever the upstream reads. A field that is not
/// such an integer (`null`, `"100"`, `1.5`) bounds nothing.
pub(crate) fn max_tokens_bound<'v>(member: impl Fn(&str) -> Option<&'v Value>) -> Option<u64> {
    let top = TOKEN_FIELDS.iter().filter_map(|field| member(field));
    let nested = NESTED_TOKEN_FIELDS
        .iter()
        .filter_map(|(outer, inner)| member(outer)?.get(*inner));
    top.chain(nested).filter_map(Value::as_u64).max()
}

fn within(value: &Value, limit: u64) -> bool {
    value.as_u64().is_some_and(|n| n <= limit)
}

fn clamp_tokens(body: &mut Body<'_>, limit: u64, req: &NarrowRequest<'_>) {
    let bound = Value::from(limit);
    let mut named = false;
    for field in TOKEN_FIELDS {
        if let Some(value) = body.get(field) {
            named = true;
            if !within(&value, limit) {
                body.set(field, bound.clone(), field);
            }
        }
    }
    for &(outer, inner) in NESTED_TOKEN_FIELDS {
        if let Some(Value::Object(mut config)) = body.get(outer) {
            if let Some(value) = config.get(inner) {
                named = true;
                if !within(value, limit) {
                    config.insert(inner.to_owned(), bound.clone());
                    body.set(outer, Value::Object(config), &format!("{outer}.{inner}"));
                }
            }
        }
    }
    if named {
        return;
    }
    // No limit given: add the one this API reads, where it is unambiguous.
    let openai_native = matches!(req.provider, Some("openai" | "azure_openai"));
    let converse = req.path.ends_with("/converse") || req.path.ends_with("/converse-stream");
    match (req.api, req.operation) {
        (Some(ApiStyle::OpenAi), Some(Operation::Responses)) => {
            body.set("max_output_tokens", bound, "max_output_tokens");
        }
        (Some(ApiStyle::OpenAi), Some(Operation::Chat)) if openai_native => {
            body.set("max_completion_tokens", bound, "max_completion_tokens");
        }
        (Some(ApiStyle::OpenAi), Some(Operation::Chat | Operation::Completions))
        | (Some(ApiStyle::Anthropic), Some(Operation::Messages))
        | (Some(ApiStyle::Cohere), Some(Operation::Chat)) => {
            body.set("max_tokens", bound, "max_tokens");
        }
        (Some(ApiStyle::Bedrock), Some(Operation::Chat)) if body.has("anthropic_version") => {
            body.set("max_tokens", bound, "max_tokens");
        }
        (Some(ApiStyle::Bedrock), Some(Operation::Chat)) if converse => {
            set_nested(body, "inferenceConfig", "maxTokens", bound);
        }
        (Some(ApiStyle::Google), Some(Operation::Chat)) => {
            set_nested(body, "generationConfig", "maxOutputTokens", bound);
        }
        _ => {}
    }
}

fn set_nested(body: &mut Body<'_>, outer: &str, inner: &str, value: Value) {
    let mut config = match body.get(outer) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    config.insert(inner.to_owned(), value);
    body.set(outer, Value::Object(config), &format!("{outer}.{inner}"));
}

/// The name a tool entry goes by, across schemas; `None` if it has none.
fn tool_name(tool: &Value) -> Option<String> {
    let name = tool
        .pointer("/function/name")
        .or_else(|| tool.pointer("/toolSpec/name"))
        .or_else(|| tool.get("name"))
        .or_else(|| tool.get("type"))
        .and_then(Value::as_str);
    if let Some(name) = name {
        return Some(name.to_owned());
    }
    // Gemini built-in tools are objects with one key: `{"googleSearch": {}}`.
    match tool.as_object() {
        Some(map) if map.len() == 1 => map.keys().next().cloned(),
        _ => None,
    }
}

/// Keep allowed entries; `None` if nothing changed.
fn filter_list(items: &[Value], allow: &[String]) -> Option<Vec<Value>> {
    let mut kept = Vec::with_capacity(items.len());
    let mut changed = false;
    for item in items {
        // Gemini groups functions: filter inside the group.
        if let Some(Value::Array(decls)) = item.get("functionDeclarations") {
            match filter_list(decls, allow) {
                None => kept.push(item.clone()),
                Some(decls) if decls.is_empty() => changed = true,
                Some(decls) => {
                    let mut item = item.clone();
                    if let Some(map) = item.as_object_mut() {
                        map.insert("functionDeclarations".to_owned(), Value::Array(decls));
                    }
                    kept.push(item);
                    changed = true;
                }
            }
            continue;
        }
        match tool_name(item) {
            Some(name) if allow.contains(&name) => kept.push(item.clone()),
            _ => changed = true,
        }
    }
    changed.then_some(kept)
}

fn filter_tools(body: &mut Body<'_>, allow: &[String]) {
    if let Some(Value::Array(tools)) = body.get("tools") {
        if let Some(kept) = filter_list(&tools, allow) {
            if kept.is_empty() {
                body.remove("tools");
                for dependent in [
                    "tool_choice",
                    "parallel_tool_calls",
                    "toolConfig",
                    "tool_config",
                ] {
                    body.remove(dependent);
                }
            } else {
                body.set("tools", Value::Array(kept), "tools");
                if let Some(choice) = body.get("tool_choice") {
                    let named = choice
                        .pointer("/function/name")
                        .or_else(|| choice.get("name"))
                        .and_then(Value::as_str);
                    if named.is_some_and(|n| !allow.iter().any(|a| a == n)) {
                        body.remove("tool_choice");
                    }
                }
            }
        }
    }
    if let Some(Value::Array(functions)) = body.get("functions") {
        if let Some(kept) = filter_list(&functions, allow) {
            if kept.is_empty() {
                body.remove("functions");
                body.remove("function_call");
            } else {
                body.set("functions", Value::Array(kept), "functions");
            }
        }
    }
    // Bedrock Converse: `toolConfig.tools[].toolSpec.name`.
    if let Some(Value::Object(mut config)) = body.get("toolConfig") {
        if let Some(Value::Array(tools)) = config.get("tools") {
            if let Some(kept) = filter_list(tools, allow) {
                if kept.is_empty() {
                    body.remove("toolConfig");
                } else {
                    config.insert("tools".to_owned(), Value::Array(kept));
                    body.set("toolConfig", Value::Object(config), "toolConfig.tools");
                }
            }
        }
    }
}

fn force_usage(body: &mut Body<'_>) {
    let mut options = match body.get("stream_options") {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return;
    }
    options.insert("include_usage".to_owned(), Value::Bool(true));
    body.set(
        "stream_options",
        Value::Object(options),
        "stream_options.include_usage",
    );
}
