//! The provider catalog (SPEC §5) and request classification.
//!
//! The catalog is a data table: for each model provider, the hosts it answers on, the
//! shape of its API ([`ApiStyle`]), where a request carries the model
//! ([`ModelSource`]), and how its key is injected ([`KeyInjection`]). The built-in table
//! covers the providers SPEC §5 lists; `[[providers]]` entries in the config add to it or
//! replace a built-in entry with the same id.
//!
//! Classification reads only the host, method, path, query and (when it was read) the
//! JSON body. It never fails: what cannot be worked out is `None`, and a host outside the
//! catalog is an `api`, a `package_registry` or `unknown` destination.

use std::fmt;

mod classify;
mod host;
mod table;

pub(crate) use classify::percent_decode;
pub use host::ProviderHost;
pub use table::builtin_provider_ids;
pub(crate) use table::Catalog;

/// What a request to a model provider does. The codes are stable: they are the values of
/// a route's `operations` and of the ledger's `operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Chat completions (`/v1/chat/completions`, Gemini `generateContent`, Bedrock
    /// `converse`/`invoke`, Cohere `/v2/chat`).
    Chat,
    /// The OpenAI Responses API.
    Responses,
    /// The Anthropic Messages API.
    Messages,
    /// Legacy text completions, FIM.
    Completions,
    /// Embeddings.
    Embeddings,
    /// Image generation and editing.
    Images,
    /// Speech, transcription, translation.
    Audio,
    /// Moderation.
    Moderations,
    /// File uploads and downloads.
    Files,
    /// Batch jobs.
    Batches,
    /// Fine-tuning jobs.
    FineTuning,
    /// Realtime (WebSocket) sessions.
    Realtime,
    /// Token counting.
    CountTokens,
    /// Listing or reading model metadata.
    ModelsList,
    /// Anything else on a provider host.
    Other,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: &'static [Operation] = &[
        Operation::Chat,
        Operation::Responses,
        Operation::Messages,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Images,
        Operation::Audio,
        Operation::Moderations,
        Operation::Files,
        Operation::Batches,
        Operation::FineTuning,
        Operation::Realtime,
        Operation::CountTokens,
        Operation::ModelsList,
        Operation::Other,
    ];

    /// The stable snake_case code: `"chat"`, `"responses"`, …, `"models_list"`, `"other"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Responses => "responses",
            Operation::Messages => "messages",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Images => "images",
            Operation::Audio => "audio",
            Operation::Moderations => "moderations",
            Operation::Files => "files",
            Operation::Batches => "batches",
            Operation::FineTuning => "fine_tuning",
            Operation::Realtime => "realtime",
            Operation::CountTokens => "count_tokens",
            Operation::ModelsList => "models_list",
            Operation::Other => "other",
        }
    }

    /// The operation with this code.
    pub fn parse(code: &str) -> Option<Operation> {
        Operation::ALL
            .iter()
            .copied()
            .find(|op| op.as_str() == code)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of destination a host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestinationKind {
    /// A host in the provider catalog.
    ModelProvider,
    /// Some other HTTP API (`api.github.com`, `/api/…`, `/v1/…`).
    Api,
    /// PyPI, npm or crates.io.
    PackageRegistry,
    /// Anything else.
    Unknown,
}

impl DestinationKind {
    /// `"model_provider"`, `"api"`, `"package_registry"` or `"unknown"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DestinationKind::ModelProvider => "model_provider",
            DestinationKind::Api => "api",
            DestinationKind::PackageRegistry => "package_registry",
            DestinationKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a provider's key is sent: the header name and its value with `{key}` in place
/// of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInjection {
    /// Lowercase header name, e.g. `"authorization"`.
    pub header: String,
    /// The header value, e.g. `"Bearer {key}"`. Contains `{key}` exactly once.
    pub format: String,
}

impl fmt::Display for KeyInjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.header, self.format)
    }
}

/// What a request is: the destination kind and, for a model provider, which provider,
/// model and operation, and whether the response will stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    /// Model provider, API, package registry or unknown.
    pub kind: DestinationKind,
    /// The catalog id (`"openai"`, `"azure_openai"`, `"anthropic"`, …); `None` outside
    /// the catalog.
    pub provider: Option<String>,
    /// The model or deployment, from the body, the path or the query.
    pub model: Option<String>,
    /// `None` for hosts outside the catalog.
    pub operation: Option<Operation>,
    /// The client asked for a streamed response (`"stream": true`,
    /// `:streamGenerateContent`, `converse-stream`, `alt=sse`, …).
    pub stream: bool,
    /// How the provider's key is injected; `None` outside the catalog.
    pub key_injection: Option<KeyInjection>,
}

impl Classification {
    fn outside(kind: DestinationKind) -> Classification {
        Classification {
            kind,
            provider: None,
            model: None,
            operation: None,
            stream: false,
            key_injection: None,
        }
    }
}

impl fmt::Display for Classification {
    /// `kind=model_provider provider=openai model=gpt-4o-mini operation=chat stream=false`;
    /// unknown values print as `-`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kind={} provider={} model={} operation={} stream={}",
            self.kind,
            self.provider.as_deref().unwrap_or("-"),
            self.model.as_deref().unwrap_or("-"),
            self.operation.map_or("-", |op| op.as_str()),
            self.stream
        )
    }
}

/// The shape of a provider's API: how its operation and streaming are read from the
/// path, and which body fields narrowing touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiStyle {
    /// OpenAI and the many OpenAI-compatible APIs: `/…/chat/completions`, `"stream": true`.
    OpenAi,
    /// Anthropic: `/v1/messages`.
    Anthropic,
    /// Gemini and Vertex AI: `models/{m}:generateContent`, `:streamGenerateContent`.
    Google,
    /// AWS Bedrock runtime: `/model/{id}/invoke`, `converse-stream`.
    Bedrock,
    /// Cohere: `/v2/chat`, `/v2/embed`.
    Cohere,
}

impl ApiStyle {
    /// Every style, in declaration order.
    pub const ALL: &'static [ApiStyle] = &[
        ApiStyle::OpenAi,
        ApiStyle::Anthropic,
        ApiStyle::Google,
        ApiStyle::Bedrock,
        ApiStyle::Cohere,
    ];

    /// `"openai"`, `"anthropic"`, `"google"`, `"bedrock"` or `"cohere"`, as in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiStyle::OpenAi => "openai",
            ApiStyle::Anthropic => "anthropic",
            ApiStyle::Google => "google",
            ApiStyle::Bedrock => "bedrock",
            ApiStyle::Cohere => "cohere",
        }
    }

    /// The style with this name.
    pub fn parse(name: &str) -> Option<ApiStyle> {
        ApiStyle::ALL.iter().copied().find(|s| s.as_str() == name)
    }
}

/// Where a provider's requests carry the model.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelSource {
    /// `body:model`: a top-level string field of the JSON body.
    Body(String),
    /// `path:models`: the path segment after the segment `models` (percent-decoded; in
    /// the last segment a Google-style `:verb` suffix is dropped).
    Path(String),
    /// `query:deployment`: a query parameter.
    Query(String),
}

impl ModelSource {
    /// Parse `body:FIELD`, `path:SEGMENT` or `query:PARAM`. The error says how to fix it.
    pub fn parse(s: &str) -> Result<ModelSource, String> {
        let hint = "write \"body:FIELD\", \"path:SEGMENT\" or \"query:PARAM\", as in \"body:model\" or \"path:deployments\"";
        let Some((kind, name)) = s.split_once(':') else {
            return Err(format!("model_from entry `{s}` has no `:`; {hint}"));
        };
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(format!(
                "model_from entry `{s}` names `{name}`; use 1 to 64 ASCII letters, digits, `_`, `-` or `.`"
            ));
        }
        match kind {
            "body" => Ok(ModelSource::Body(name.to_owned())),
            "path" => Ok(ModelSource::Path(name.to_owned())),
            "query" => Ok(ModelSource::Query(name.to_owned())),
            _ => Err(format!(
                "model_from entry `{s}` has the unknown source `{kind}`; {hint}"
            )),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Body(name) => write!(f, "body:{name}"),
            ModelSource::Path(name) => write!(f, "path:{name}"),
            ModelSource::Query(name) => write!(f, "query:{name}"),
        }
    }
}

/// One catalog entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The catalog id: the value of a route's `providers` and of the ledger's `provider`.
    pub id: String,
    /// The hosts the provider answers on.
    pub hosts: Vec<ProviderHost>,
    /// How its operations and streaming are read.
    pub api: ApiStyle,
    /// Where the model is read from, tried in order; the first that yields one wins.
    pub model_from: Vec<ModelSource>,
    /// How its key is injected.
    pub key_injection: KeyInjection,
}

impl Provider {
    /// The host a gateway sends this provider's requests to: its first host
    /// without a `*`. `None` for providers that only have regional patterns.
    pub fn base_host(&self) -> Option<&str> {
        self.hosts.iter().find_map(ProviderHost::exact)
    }
}

/// Where the model of a request came from; narrowing can only rewrite a body field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ModelOrigin {
    Body(String),
    Elsewhere,
}

/// A classification plus what evaluation needs besides it.
pub(crate) struct Classified {
    pub(crate) classification: Classification,
    pub(crate) model_origin: Option<ModelOrigin>,
    pub(crate) api: Option<ApiStyle>,
    /// A query parameter the provider takes the model from appears more than
    /// once (`?model=a&model=b`): the policy would judge one, the upstream may
    /// use another.
    pub(crate) model_ambiguous: bool,
}
