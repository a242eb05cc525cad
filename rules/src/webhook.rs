//! Per-tenant webhooks: where a tenant's policy events are sent, and which.
//! The proxy delivers them; its secret lives in the vault, never in the config.

/// Event names a webhook may select.
pub const WEBHOOK_EVENTS: &[&str] = &["deny", "warn", "narrow", "approval.requested", "all"];

/// `[[tenants]] webhook = { url = "https://…", events = ["deny", "warn"] }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSpec {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// Selected events (each one of [`WEBHOOK_EVENTS`]); never empty.
    pub events: Vec<String>,
}
