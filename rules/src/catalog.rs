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

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::body::BodyView;
use crate::host::Host;

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

/// One host pattern of a provider. Unlike route hosts, a `*` may stand for part of any
/// one label, because provider hosts embed regions: `*.openai.azure.com`,
/// `*-aiplatform.googleapis.com`, `bedrock-runtime.*.amazonaws.com`. A `*` never
/// matches an empty string or a dot, and the last two labels are always literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderHost {
    text: String,
    labels: Vec<LabelGlob>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelGlob {
    Literal(String),
    Glob { prefix: String, suffix: String },
}

impl LabelGlob {
    fn matches(&self, label: &str) -> bool {
        match self {
            LabelGlob::Literal(want) => want == label,
            LabelGlob::Glob { prefix, suffix } => {
                label.len() > prefix.len() + suffix.len()
                    && label.starts_with(prefix.as_str())
                    && label.ends_with(suffix.as_str())
            }
        }
    }
}

impl ProviderHost {
    /// Parse `api.openai.com`, `*.openai.azure.com` or `bedrock-runtime.*.amazonaws.com`.
    /// Case-insensitive; a trailing dot is ignored. The error says how to fix it.
    pub fn parse(s: &str) -> Result<ProviderHost, String> {
        let text = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if text.is_empty() {
            return Err(
                "the provider host is empty; write a name such as `api.example.com`".to_owned(),
            );
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*')))
        {
            return Err(format!(
                "provider host `{s}` has the character {bad:?}; use a-z, 0-9, `-`, `.` and `*` (IDNs in punycode)"
            ));
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() < 2 {
            return Err(format!(
                "provider host `{s}` has a single label; write a full name such as `api.example.com`"
            ));
        }
        let mut labels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(format!(
                    "provider host `{s}` has an empty label (two dots in a row, or a leading dot)"
                ));
            }
            if part.len() > 63 {
                return Err(format!(
                    "a label of provider host `{s}` is longer than 63 characters"
                ));
            }
            let stars = part.matches('*').count();
            if stars == 0 {
                labels.push(LabelGlob::Literal((*part).to_owned()));
                continue;
            }
            if stars > 1 {
                return Err(format!(
                    "provider host `{s}` has more than one `*` in a label; use one `*` per label, as in `*-aiplatform.googleapis.com`"
                ));
            }
            if i + 2 >= parts.len() {
                return Err(format!(
                    "provider host `{s}` has a `*` in its last two labels, which would match unrelated domains; wildcard a label further left, as in `*.openai.azure.com`"
                ));
            }
            let (prefix, suffix) = part.split_once('*').unwrap_or((part, ""));
            labels.push(LabelGlob::Glob {
                prefix: prefix.to_owned(),
                suffix: suffix.to_owned(),
            });
        }
        if text.parse::<std::net::IpAddr>().is_ok()
            || parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "provider host `{s}` is an IP address; providers are named by host name"
            ));
        }
        Ok(ProviderHost { text, labels })
    }

    /// Whether `host` (canonical) is matched. IP literals never are.
    pub fn matches(&self, host: &Host) -> bool {
        match host {
            Host::Name(name) => self.matches_name(name),
            Host::Ip(_) => false,
        }
    }

    fn matches_name(&self, name: &str) -> bool {
        let mut labels = name.split('.');
        for glob in &self.labels {
            match labels.next() {
                Some(label) if glob.matches(label) => {}
                _ => return false,
            }
        }
        labels.next().is_none()
    }

    /// The name itself when the pattern has no `*`.
    fn exact(&self) -> Option<&str> {
        self.labels
            .iter()
            .all(|l| matches!(l, LabelGlob::Literal(_)))
            .then_some(self.text.as_str())
    }
}

impl fmt::Display for ProviderHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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

/// A built-in catalog row, as constants.
struct Builtin {
    id: &'static str,
    hosts: &'static [&'static str],
    api: ApiStyle,
    model_from: &'static [&'static str],
    header: &'static str,
    format: &'static str,
}

const BEARER: &str = "Bearer {key}";

/// The built-in catalog (SPEC §5). Keys: OpenAI-compatible providers, Vertex (an OAuth
/// access token) and Bedrock (a Bedrock API key) take `Authorization: Bearer`.
const BUILTIN: &[Builtin] = &[
    Builtin {
        id: "openai",
        hosts: &["api.openai.com"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model", "query:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "azure_openai",
        hosts: &["*.openai.azure.com", "*.cognitiveservices.azure.com"],
        api: ApiStyle::OpenAi,
        model_from: &["path:deployments", "query:deployment", "body:model"],
        header: "api-key",
        format: "{key}",
    },
    Builtin {
        id: "anthropic",
        hosts: &["api.anthropic.com"],
        api: ApiStyle::Anthropic,
        model_from: &["body:model"],
        header: "x-api-key",
        format: "{key}",
    },
    Builtin {
        id: "gemini",
        hosts: &["generativelanguage.googleapis.com"],
        api: ApiStyle::Google,
        model_from: &["path:models", "path:tunedModels", "query:model"],
        header: "x-goog-api-key",
        format: "{key}",
    },
    Builtin {
        id: "vertex",
        hosts: &["aiplatform.googleapis.com", "*-aiplatform.googleapis.com"],
        api: ApiStyle::Google,
        model_from: &["path:models", "body:model", "path:endpoints"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "bedrock",
        hosts: &[
            "bedrock-runtime.*.amazonaws.com",
            "bedrock-runtime-fips.*.amazonaws.com",
        ],
        api: ApiStyle::Bedrock,
        model_from: &["path:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "mistral",
        hosts: &["api.mistral.ai", "codestral.mistral.ai"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "cohere",
        hosts: &["api.cohere.com", "api.cohere.ai"],
        api: ApiStyle::Cohere,
        model_from: &["body:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "groq",
        hosts: &["api.groq.com"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "together",
        hosts: &["api.together.xyz", "api.together.ai"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "fireworks",
        hosts: &["api.fireworks.ai"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model", "path:models"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "openrouter",
        hosts: &["openrouter.ai"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "deepseek",
        hosts: &["api.deepseek.com"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "xai",
        hosts: &["api.x.ai"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model"],
        header: "authorization",
        format: BEARER,
    },
    Builtin {
        id: "perplexity",
        hosts: &["api.perplexity.ai"],
        api: ApiStyle::OpenAi,
        model_from: &["body:model"],
        header: "authorization",
        format: BEARER,
    },
];

/// Package registries (SPEC §5: they matter for supply-chain controls).
const PACKAGE_REGISTRIES: &[&str] = &[
    "pypi.org",
    "upload.pypi.org",
    "test.pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
];

/// The ids of the built-in catalog entries, in table order.
pub fn builtin_provider_ids() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|b| b.id)
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
}

/// The catalog in effect: config entries first, then the built-ins they do not replace.
#[derive(Debug)]
pub(crate) struct Catalog {
    providers: Vec<Arc<Provider>>,
    exact: HashMap<String, usize>,
    globs: Vec<(ProviderHost, usize)>,
}

impl Catalog {
    /// The built-in table plus `extra` (validated config entries). An extra entry with a
    /// built-in id replaces that entry.
    pub(crate) fn new(extra: Vec<Provider>) -> Catalog {
        let mut providers: Vec<Provider> = extra;
        for builtin in BUILTIN {
            if providers.iter().any(|p| p.id == builtin.id) {
                continue;
            }
            providers.push(Provider {
                id: builtin.id.to_owned(),
                hosts: builtin
                    .hosts
                    .iter()
                    .filter_map(|h| ProviderHost::parse(h).ok())
                    .collect(),
                api: builtin.api,
                model_from: builtin
                    .model_from
                    .iter()
                    .filter_map(|m| ModelSource::parse(m).ok())
                    .collect(),
                key_injection: KeyInjection {
                    header: builtin.header.to_owned(),
                    format: builtin.format.to_owned(),
                },
            });
        }
        let mut exact = HashMap::new();
        let mut globs = Vec::new();
        for (i, provider) in providers.iter().enumerate() {
            for host in &provider.hosts {
                match host.exact() {
                    Some(name) => {
                        exact.entry(name.to_owned()).or_insert(i);
                    }
                    None => globs.push((host.clone(), i)),
                }
            }
        }
        Catalog {
            providers: providers.into_iter().map(Arc::new).collect(),
            exact,
            globs,
        }
    }

    pub(crate) fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// The provider that answers on `host`. When several claim it, the earlier entry
    /// (config before built-in) wins.
    pub(crate) fn provider_for(&self, host: &Host) -> Option<&Arc<Provider>> {
        let Host::Name(name) = host else {
            return None;
        };
        let exact = self.exact.get(name.as_str()).copied();
        let glob = self
            .globs
            .iter()
            .find(|(pattern, _)| pattern.matches_name(name))
            .map(|(_, i)| *i);
        let index = match (exact, glob) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        self.providers.get(index)
    }

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
    fn every_builtin_row_parses_completely() {
        for builtin in BUILTIN {
            for host in builtin.hosts {
                assert!(ProviderHost::parse(host).is_ok(), "{}: {host}", builtin.id);
            }
            for source in builtin.model_from {
                assert!(
                    ModelSource::parse(source).is_ok(),
                    "{}: {source}",
                    builtin.id
                );
            }
            assert_eq!(builtin.format.matches("{key}").count(), 1, "{}", builtin.id);
        }
    }

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
}
