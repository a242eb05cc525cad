//! Detectors (SPEC §6): prompt injection, provider key formats, vault values, and the
//! streaming redactor for responses.
//!
//! A hit is recorded as a detector name and a stable pattern id ([`DetectorHit`]),
//! never as the text that matched.

use std::fmt;

pub(crate) mod decode;
pub(crate) mod fold;
pub(crate) mod injection;
pub(crate) mod ngram;
pub(crate) mod patterns;
pub(crate) mod redact;
pub(crate) mod secrets;
pub(crate) mod squeeze;
pub(crate) mod text;
pub(crate) mod vault;

/// Build the detectors' automata and model now rather than on the first request that
/// needs them (the injection pattern sets take a few hundred milliseconds of CPU).
pub fn warm_detectors() {
    injection::warm();
    std::sync::LazyLock::force(&secrets::PREFIXES);
}

/// One detector hit: which detector, which pattern. Never the matched text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectorHit {
    /// `"injection"`, `"secrets"` or `"vault"`.
    pub detector: &'static str,
    /// A stable pattern id (`"ignore_previous"`, `"openai_project_key"`), or the vault
    /// key id for a vault hit.
    pub pattern: String,
}

impl DetectorHit {
    /// `"injection:ignore_previous"`: the form the ledger's `detectors` field holds.
    pub fn ledger_id(&self) -> String {
        format!("{}:{}", self.detector, self.pattern)
    }
}

impl fmt::Display for DetectorHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.detector, self.pattern)
    }
}

/// What a route does when a detector fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DetectorMode {
    /// Do not run the detector (the default).
    #[default]
    Off,
    /// Run it; a hit turns an allow into a warn.
    Warn,
    /// Run it; a hit denies the request.
    Block,
}

impl DetectorMode {
    /// `"off"`, `"warn"` or `"block"`, as in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            DetectorMode::Off => "off",
            DetectorMode::Warn => "warn",
            DetectorMode::Block => "block",
        }
    }

    /// The mode with this name.
    pub fn parse(name: &str) -> Option<DetectorMode> {
        match name {
            "off" => Some(DetectorMode::Off),
            "warn" => Some(DetectorMode::Warn),
            "block" => Some(DetectorMode::Block),
            _ => None,
        }
    }

    /// Whether the detector runs.
    pub fn is_on(&self) -> bool {
        *self != DetectorMode::Off
    }
}

/// A route's `detectors = { injection = "block", secrets = "warn", sensitivity = "high" }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Detectors {
    /// Prompt injection over the prompt text.
    pub injection: DetectorMode,
    /// How readily the injection detector fires (`balanced` unless set).
    pub sensitivity: injection::Sensitivity,
    /// Provider key formats anywhere in the URL or body.
    pub secrets: DetectorMode,
}

impl Detectors {
    /// Whether any detector runs (the route then needs the whole body).
    pub fn any(&self) -> bool {
        self.injection.is_on() || self.secrets.is_on()
    }
}
