//! Validation: convert the raw structs into the public types, recording every error
//! with its position and carrying on. Routes and providers are in `routes.rs`, the
//! proxy settings in `settings.rs`, single-value parsers in `values.rs`.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use crate::agent::Agent;
use crate::budget::BudgetSpec;
use crate::catalog::Catalog;
use crate::policy::Policy;
use crate::webhook::{WebhookSpec, WEBHOOK_EVENTS};

use super::raw::{RawAgent, RawBudget, RawConfig, RawTenant, RawWebhook, S};
use super::values::{line_col, parse_token_hash, validate_id};
use super::{Config, ConfigError, ConfigErrors};

pub(super) struct Errors<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) errors: Vec<ConfigError>,
    /// Where the tables that had unknown keys removed start.
    pub(super) pruned: Vec<usize>,
}

/// Where the first declaration of an id was, for "duplicate" messages.
pub(super) type Seen = HashMap<String, Range<usize>>;

impl Errors<'_> {
    pub(super) fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            message: message.into(),
        });
    }

    /// An error about a table as a whole (a required key is missing, it sets nothing).
    /// Dropped for a table that had unknown keys: the key is most likely misspelled, and
    /// the unknown-key error already says so.
    pub(super) fn at_table(&mut self, span: &Range<usize>, message: impl Into<String>) {
        if !self.pruned.contains(&span.start) {
            self.at(span, message);
        }
    }

    /// A syntax or type error from the TOML reader.
    pub(super) fn toml_error(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        // Serde messages may span lines; keep one line per error.
        self.at(&span, e.message().trim().replace('\n', "; "));
    }

    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    pub(super) fn finish(mut self) -> ConfigErrors {
        // Stable sort: errors at one position keep the order they were found in.
        self.errors.sort_by_key(|e| (e.line, e.col));
        ConfigErrors {
            errors: self.errors,
        }
    }

    /// Record `result`'s error at `span`, and turn it into an `Option`.
    pub(super) fn check<T>(&mut self, span: &Range<usize>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.at(span, message);
                None
            }
        }
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        match &raw.version {
            None => self.at_table(
                &(0..0),
                "missing `version = 1`; add it as the first line of the file",
            ),
            Some(v) if *v.get_ref() != 1 => self.at(
                &v.span(),
                format!(
                    "unsupported version {}; this Portcullis reads `version = 1`",
                    v.get_ref()
                ),
            ),
            Some(_) => {}
        }

        // References are checked against every declared id, valid or not, so that one
        // broken agent does not also produce an error at each place that names it.
        let (tenants, (tenant_budgets, tenant_webhooks)) = self.tenants(raw.tenants);
        let (agent_ids, agents) = self.agents(raw.agents, &tenants);
        let (provider_ids, providers) = self.providers(raw.providers);
        let catalog = Catalog::new(providers);
        let known = Known {
            tenants: &tenants,
            agents: &agent_ids,
            providers: &provider_ids,
            catalog: &catalog,
        };
        let routes = self.routes(raw.routes, &known);
        let admin = self.admin(raw.admin);
        let listeners = self.listeners(raw.listeners, &agent_ids, &admin);
        let ca = self.ca(raw.ca);
        let ledger = self.ledger(raw.ledger);
        let upstream = self.upstream(raw.upstream);
        let limits = self.limits(raw.limits);
        let vault = self.vault(raw.vault);
        let dns = self.dns(raw.dns, &agent_ids, &admin);
        let state = self.state(raw.state);

        let tenants: Vec<String> = tenants.into_keys_in_order();
        Config {
            listeners,
            admin,
            ca,
            upstream,
            limits,
            ledger,
            vault,
            dns,
            state,
            policy: Arc::new(Policy::new(
                tenants,
                tenant_budgets,
                tenant_webhooks,
                agents,
                routes,
                catalog,
                self.text,
            )),
        }
    }

    /// A valid, not yet seen id; records an error otherwise.
    pub(super) fn new_id(&mut self, kind: &str, id: &S<String>, seen: &mut Seen) -> Option<String> {
        let value = id.get_ref();
        if let Err(message) = validate_id(kind, value) {
            self.at(&id.span(), message);
            return None;
        }
        if let Some(first) = seen.get(value) {
            let line = self.line_of(first);
            self.at(
                &id.span(),
                format!("duplicate {kind} id `{value}` (first declared on line {line}); ids must be unique, rename one"),
            );
            return None;
        }
        seen.insert(value.clone(), id.span());
        Some(value.clone())
    }

    /// The declared tenant ids, and the budgets of those that have one.
    pub(super) fn tenants(&mut self, raw: Vec<S<RawTenant>>) -> (OrderedIds, TenantSettings) {
        let mut seen = Seen::new();
        let mut ids = OrderedIds::default();
        let mut budgets = HashMap::new();
        let mut webhooks = HashMap::new();
        for tenant in raw {
            let span = tenant.span();
            let tenant = tenant.into_inner();
            let budget = self.budget(tenant.budget.as_ref());
            let webhook = tenant.webhook.as_ref().and_then(|w| self.webhook(w));
            match &tenant.id {
                None => self.at_table(&span, "tenant needs an `id`, as in `id = \"acme\"`"),
                Some(id) => {
                    if let Some(id) = self.new_id("tenant", id, &mut seen) {
                        if let Some(budget) = budget {
                            budgets.insert(id.clone(), budget);
                        }
                        if let Some(webhook) = webhook {
                            webhooks.insert(id.clone(), webhook);
                        }
                        ids.push(id);
                    }
                }
            }
        }
        (ids, (budgets, webhooks))
    }

    /// `webhook = { url, events }`: an http(s) URL and known event names.
    fn webhook(&mut self, raw: &S<RawWebhook>) -> Option<WebhookSpec> {
        let span = raw.span();
        let raw = raw.get_ref();
        let url = match &raw.url {
            None => {
                self.at(&span, "a webhook needs a `url`, as in `url = \"https://hooks.example.com/portcullis\"`");
                None
            }
            Some(url) => {
                let u = url.get_ref();
                let rest = u
                    .strip_prefix("https://")
                    .or_else(|| u.strip_prefix("http://"));
                match rest {
                    Some(r)
                        if !r.is_empty()
                            && !r.starts_with('/')
                            && !u.contains(char::is_whitespace) =>
                    {
                        Some(u.clone())
                    }
                    _ => {
                        self.at(
                            &url.span(),
                            format!(
                                "webhook url `{u}` is not an http:// or https:// URL with a host"
                            ),
                        );
                        None
                    }
                }
            }
        };
        let mut events = Vec::new();
        match &raw.events {
            None => events.push("all".to_owned()),
            Some(list) if list.get_ref().is_empty() => {
                self.at(
                    &list.span(),
                    "`events` is empty; name at least one, or leave it out for all",
                );
            }
            Some(list) => {
                for e in list.get_ref() {
                    if WEBHOOK_EVENTS.contains(&e.get_ref().as_str()) {
                        events.push(e.get_ref().clone());
                    } else {
                        self.at(
                            &e.span(),
                            format!(
                                "unknown webhook event `{}`; use one of {}",
                                e.get_ref(),
                                WEBHOOK_EVENTS.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        Some(WebhookSpec { url: url?, events })
    }

    /// `budget = { tokens_per_day, requests_per_minute, default_reserve, hard_cap }`:
    /// positive integers, at least one limit, and the token settings only with a token
    /// limit. `None` when absent or invalid (the error is recorded).
    pub(super) fn budget(&mut self, raw: Option<&S<RawBudget>>) -> Option<BudgetSpec> {
        let raw = raw?;
        let span = raw.span();
        let raw = raw.get_ref();
        let errors_before = self.errors.len();
        let no_limit = raw.tokens_per_day.is_none() && raw.requests_per_minute.is_none();
        if no_limit {
            self.at_table(
                &span,
                "`budget` sets no limit; give tokens_per_day, requests_per_minute or both, as in `budget = { tokens_per_day = 2_000_000 }`",
            );
        }
        let tokens_per_day: Option<u64> = self.positive(raw.tokens_per_day.clone());
        let requests_per_minute: Option<u32> = self.positive(raw.requests_per_minute.clone());
        let default_reserve: Option<u64> = self.positive(raw.default_reserve.clone());
        let hard_cap: Option<u64> = self.positive(raw.hard_cap.clone());
        if raw.tokens_per_day.is_none() && !no_limit {
            for (key, value) in [
                ("default_reserve", &raw.default_reserve),
                ("hard_cap", &raw.hard_cap),
            ] {
                if let Some(value) = value {
                    self.at(
                        &value.span(),
                        format!("`{key}` is about tokens and needs `tokens_per_day` in the same budget; add it, or remove `{key}`"),
                    );
                }
            }
        }
        if let Some(day) = tokens_per_day {
            let checks = [
                ("default_reserve", default_reserve, &raw.default_reserve),
                ("hard_cap", hard_cap, &raw.hard_cap),
            ];
            for (key, value, raw_value) in checks {
                if let (Some(value), Some(raw_value)) = (value, raw_value) {
                    if value > day {
                        self.at(
                            &raw_value.span(),
                            format!("{key} {value} is above tokens_per_day {day}, so no request could fit; lower it"),
                        );
                    }
                }
            }
        }
        if let (Some(reserve), Some(cap), Some(raw_reserve)) =
            (default_reserve, hard_cap, &raw.default_reserve)
        {
            if reserve > cap {
                self.at(
                    &raw_reserve.span(),
                    format!("default_reserve {reserve} is above hard_cap {cap}; a request is never metered past hard_cap, so reserve at most that"),
                );
            }
        }
        if no_limit || self.errors.len() != errors_before {
            return None;
        }
        Some(BudgetSpec {
            tokens_per_day,
            requests_per_minute,
            default_reserve: default_reserve.unwrap_or(BudgetSpec::DEFAULT_RESERVE),
            hard_cap,
        })
    }

    pub(super) fn agents(
        &mut self,
        raw: Vec<S<RawAgent>>,
        tenants: &OrderedIds,
    ) -> (OrderedIds, Vec<Agent>) {
        let mut seen = Seen::new();
        let mut ids = OrderedIds::default();
        let mut agents = Vec::new();
        for agent in raw {
            let span = agent.span();
            let agent = agent.into_inner();
            let id = match &agent.id {
                None => {
                    self.at_table(&span, "agent needs an `id`, as in `id = \"research-bot\"`");
                    None
                }
                Some(id) => self.new_id("agent", id, &mut seen),
            };
            if let Some(id) = &id {
                ids.push(id.clone());
            }
            let tenant = match &agent.tenant {
                None => {
                    self.at_table(&span, "agent needs a `tenant`, as in `tenant = \"acme\"`; every agent belongs to exactly one tenant");
                    None
                }
                Some(tenant) if !tenants.contains(tenant.get_ref()) => {
                    self.at(
                        &tenant.span(),
                        format!(
                            "agent refers to unknown tenant `{}`; declare it with [[tenants]] id = \"{}\"",
                            tenant.get_ref(),
                            tenant.get_ref()
                        ),
                    );
                    None
                }
                Some(tenant) => Some(tenant.get_ref().clone()),
            };
            let budget = self.budget(agent.budget.as_ref());
            let token = match &agent.token_sha256 {
                None => {
                    self.at_table(&span, "agent needs a `token_sha256` (64 hex characters; `portcullis agent hash-token` prints it)");
                    None
                }
                Some(token) => self.check(&token.span(), parse_token_hash(token.get_ref())),
            };
            if let (Some(id), Some(tenant), Some(token)) = (id, tenant, token) {
                agents.push(Agent::new(id, tenant, budget, token));
            }
        }
        (ids, agents)
    }
}

/// Per-tenant settings: budgets and webhooks, by tenant id.
pub(super) type TenantSettings = (HashMap<String, BudgetSpec>, HashMap<String, WebhookSpec>);

/// The ids a route may refer to.
pub(super) struct Known<'a> {
    pub(super) tenants: &'a OrderedIds,
    pub(super) agents: &'a OrderedIds,
    pub(super) providers: &'a OrderedIds,
    /// The catalog built from the valid `[[providers]]` entries and the built-ins.
    pub(super) catalog: &'a Catalog,
}

impl Known<'_> {
    pub(super) fn provider(&self, id: &str) -> Result<String, String> {
        if self.providers.contains(id) {
            Ok(id.to_owned())
        } else {
            Err(format!(
                "unknown provider `{id}`; use a catalog id ({}) or declare it with [[providers]]",
                self.providers.order.join(", ")
            ))
        }
    }
}

/// Declared ids in file order, with a fast membership test.
#[derive(Default)]
pub(super) struct OrderedIds {
    order: Vec<String>,
    set: HashSet<String>,
}

impl OrderedIds {
    pub(super) fn push(&mut self, id: String) {
        self.set.insert(id.clone());
        self.order.push(id);
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// The ids in file order.
    pub(super) fn order(&self) -> &[String] {
        &self.order
    }

    pub(super) fn into_keys_in_order(self) -> Vec<String> {
        self.order
    }
}
