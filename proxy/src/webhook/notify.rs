//! Which tenant's receiver hears about which decision. The sink is looked up
//! in the policy in force (URL, events) and the vault (the signing secret,
//! slot `webhook`) when an event happens; webhook-worthy events are rare.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{EventSet, Sink, WebhookSender};
use crate::policy::PolicyHolder;
use crate::vault::Keys;

/// The vault slot that holds a tenant's webhook signing secret.
pub const SECRET_SLOT: &str = "webhook";

pub struct Webhooks {
    sender: WebhookSender,
    policy: Arc<PolicyHolder>,
    keys: Arc<Keys>,
}

impl Webhooks {
    pub fn new(sender: WebhookSender, policy: Arc<PolicyHolder>, keys: Arc<Keys>) -> Webhooks {
        Webhooks {
            sender,
            policy,
            keys,
        }
    }

    /// Whether the tenant has a receiver at all (so callers skip building a
    /// notice nobody would get).
    pub fn configured(&self, tenant: Option<&str>) -> bool {
        tenant.is_some_and(|t| self.policy.load().policy.tenant_webhook(t).is_some())
    }

    /// Queues `event` for the tenant's receiver, if it has one that wants it.
    /// Never blocks, never fails the caller. `body` is built only when sent.
    pub fn notify(
        &self,
        tenant: Option<&str>,
        event: &str,
        event_id: &str,
        body: impl FnOnce() -> Vec<u8>,
    ) {
        let Some(tenant) = tenant else {
            return;
        };
        let snap = self.policy.load();
        let Some(spec) = snap.policy.tenant_webhook(tenant) else {
            return;
        };
        let Ok(events) = EventSet::parse(&spec.events) else {
            return;
        };
        if !events.wants(event) {
            return;
        }
        let Some((portcullis_certs::Secret::ApiKey(secret), _)) =
            self.keys.get(tenant, SECRET_SLOT)
        else {
            tracing::warn!(
                tenant,
                "tenant has a webhook but no signing secret in the vault (slot `webhook`); not sent"
            );
            return;
        };
        let Ok(url) = spec.url.parse() else {
            return;
        };
        let sink = Arc::new(Sink {
            url,
            secret: Zeroizing::new(secret.to_vec()),
            events,
        });
        self.sender.send(&sink, event, event_id, body());
    }
}
