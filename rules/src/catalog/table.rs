//! The built-in provider table, and the catalog in effect (config entries first).

use std::collections::HashMap;
use std::sync::Arc;

use super::{ApiStyle, KeyInjection, ModelSource, Provider, ProviderHost};
use crate::host::Host;

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
pub(super) const PACKAGE_REGISTRIES: &[&str] = &[
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
}
