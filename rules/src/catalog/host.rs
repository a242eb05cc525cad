//! Provider host patterns: a `*` may stand for part of one label.

use std::fmt;

use crate::host::Host;

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

    pub(super) fn matches_name(&self, name: &str) -> bool {
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
    pub(super) fn exact(&self) -> Option<&str> {
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
