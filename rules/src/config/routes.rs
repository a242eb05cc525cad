//! Validation of `[[routes]]` and `[[providers]]`.

use std::ops::Range;

use toml::Spanned;

use crate::catalog::{
    builtin_provider_ids, ApiStyle, KeyInjection, ModelSource, Provider, ProviderHost,
};
use crate::detect::injection::Sensitivity;
use crate::detect::{DetectorMode, Detectors};
use crate::host::{Host, HostPattern};
use crate::narrow::NarrowSpec;
use crate::reason::Action;
use crate::route::{Mode, ModelPattern, PathPattern, Route};

use super::raw::{RawDetectors, RawNarrow, RawProvider, RawRoute, S};
use super::validate::{Errors, Known, OrderedIds, Seen};
use super::values::{
    parse_auth_format, parse_auth_header, parse_method, parse_net, parse_operation,
};

/// How long an approve route holds a request when it names no `approval_timeout`.
const DEFAULT_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl Errors<'_> {
    pub(super) fn routes(&mut self, raw: Vec<S<RawRoute>>, known: &Known<'_>) -> Vec<Route> {
        let mut seen = Seen::new();
        raw.into_iter()
            .map(|route| self.route(route, known, &mut seen))
            .collect()
    }

    pub(super) fn route(&mut self, raw: S<RawRoute>, known: &Known<'_>, seen: &mut Seen) -> Route {
        let span = raw.span();
        let raw = raw.into_inner();

        let id = match &raw.id {
            None => {
                self.at_table(&span, "route needs an `id`, as in `id = \"acme-openai\"`; it names the route in the ledger");
                String::new()
            }
            Some(id) => self.new_id("route", id, seen).unwrap_or_default(),
        };

        if let (Some(t), Some(_)) = (&raw.tenants, &raw.agents) {
            self.at(
                &t.span(),
                "a route takes `tenants` or `agents`, not both; split it into two routes",
            );
        }
        let tenants = self.scope_list(raw.tenants, "tenants", "tenant", |id| {
            known.tenants.contains(id)
        });
        let agents = self.scope_list(raw.agents, "agents", "agent", |id| {
            known.agents.contains(id)
        });

        let hosts = self.route_hosts(&span, raw.hosts);
        let action = self.route_action(&span, raw.action.as_ref());
        let mode = self.route_mode(raw.mode.as_ref());
        let allow_plaintext = raw.allow_plaintext.unwrap_or(false);
        let ports = self.route_ports(raw.ports, action, allow_plaintext);
        let methods = self.optional_list(raw.methods.as_ref(), "methods", "method", parse_method);
        let paths = self.optional_list(raw.paths.as_ref(), "paths", "path", PathPattern::parse);

        let models =
            self.optional_list(raw.models.as_ref(), "models", "model", ModelPattern::parse);
        let operations = self.optional_list(
            raw.operations.as_ref(),
            "operations",
            "operation",
            parse_operation,
        );
        let providers = self.optional_list(raw.providers.as_ref(), "providers", "provider", |id| {
            known.provider(id)
        });
        let detectors = self.route_detectors(raw.detectors.as_ref());
        let narrow = self.route_narrow(raw.narrow.as_ref(), raw.action.as_ref(), action, &models);
        let approval_span = raw.approval_timeout.as_ref().map(|t| t.span());
        let approval_timeout = self
            .duration(raw.approval_timeout, false)
            .unwrap_or(DEFAULT_APPROVAL_TIMEOUT);
        if let (Some(span), false) = (&approval_span, action == Action::Approve) {
            self.at(
                span,
                "`approval_timeout` only applies to a route with action = \"approve\"; remove it",
            );
        }
        if action == Action::Approve && mode == Mode::Passthrough {
            self.at_table(
                &span,
                "a passthrough route cannot hold requests for approval (the proxy never sees them); use mode = \"intercept\"",
            );
        }
        let inject_key = self.route_inject_key(
            raw.inject_key.as_ref(),
            action,
            mode,
            &hosts,
            &providers,
            known,
        );
        let budget = self.budget(raw.budget.as_ref());

        if mode == Mode::Passthrough {
            let spans = [
                ("methods", raw.methods.as_ref().map(Spanned::span)),
                ("paths", raw.paths.as_ref().map(Spanned::span)),
                ("models", raw.models.as_ref().map(Spanned::span)),
                ("operations", raw.operations.as_ref().map(Spanned::span)),
                ("detectors", raw.detectors.as_ref().map(Spanned::span)),
                ("narrow", raw.narrow.as_ref().map(Spanned::span)),
                ("budget", raw.budget.as_ref().map(Spanned::span)),
            ];
            for (key, span) in spans {
                if let Some(span) = span {
                    self.at(
                        &span,
                        format!("a passthrough route cannot enforce `{key}` (the proxy never sees the requests inside); remove `{key}` or use mode = \"intercept\""),
                    );
                }
            }
        }
        if action == Action::Deny {
            if let Some(raw_detectors) = &raw.detectors {
                self.at(
                    &raw_detectors.span(),
                    "a deny route refuses every request it matches, so `detectors` has nothing to do; remove it, or use action = \"allow\"",
                );
            }
            if let Some(raw_budget) = &raw.budget {
                self.at(
                    &raw_budget.span(),
                    "a deny route forwards nothing, so a `budget` on it has nothing to count; remove it, or put it on the allow route",
                );
            }
        }

        // WebSocket frames are relayed, not inspected: a route must not look as if
        // its detectors guard a session they never see.
        if let (Some(true), Some(raw_detectors)) = (raw.websocket, &raw.detectors) {
            if detectors.any() {
                self.at(
                    &raw_detectors.span(),
                    "WebSocket frames are not inspected, so `detectors` cannot guard a `websocket = true` route; move the WebSocket path to a route of its own without detectors",
                );
            }
        }

        let allow_private = raw
            .allow_private
            .unwrap_or_default()
            .into_iter()
            .filter_map(|net| self.check(&net.span(), parse_net(net.get_ref())))
            .collect();

        Route {
            id,
            tenants,
            agents,
            hosts,
            ports,
            methods,
            paths,
            action,
            models,
            operations,
            providers,
            detectors,
            narrow,
            mode,
            websocket: raw.websocket.unwrap_or(false),
            approval_timeout,
            allow_plaintext,
            allow_private,
            inject_key,
            budget,
        }
    }

    /// `inject_key = "openai"`: a catalog provider id naming the vault slot. Only on an
    /// intercepted route that forwards, and only where requests go to that provider.
    pub(super) fn route_inject_key(
        &mut self,
        raw: Option<&S<String>>,
        action: Action,
        mode: Mode,
        hosts: &[HostPattern],
        providers: &[String],
        known: &Known<'_>,
    ) -> Option<String> {
        let raw = raw?;
        let span = raw.span();
        let id = raw.get_ref();
        if !known.providers.contains(id) {
            self.at(
                &span,
                format!(
                    "inject_key `{id}` is not a catalog provider; it names the vault slot, which is a provider id: {}, or a [[providers]] id",
                    known.providers.order().join(", ")
                ),
            );
            return None;
        }
        if action == Action::Deny {
            self.at(
                &span,
                "a deny route forwards nothing, so there is no request to inject a key into; remove `inject_key`, or put it on the allow route",
            );
            return None;
        }
        if mode == Mode::Passthrough {
            self.at(
                &span,
                "a passthrough route splices the TLS tunnel, so the proxy never sees the request headers a key goes in; remove `inject_key`, or use mode = \"intercept\"",
            );
            return None;
        }
        if !providers.is_empty() && !providers.contains(id) {
            self.at(
                &span,
                format!("inject_key `{id}` is not in this route's `providers`, so its key would go to another provider; add it to `providers`, or name one of them"),
            );
            return None;
        }
        // The key must only ever reach its own provider: a named host that belongs to
        // another provider (or to none) is refused here; wildcard hosts are checked
        // per request ([`Route::key_slot`]).
        for host in hosts {
            let host = match host {
                HostPattern::Exact(name) => Host::Name(name.clone()),
                HostPattern::Ip(ip) => Host::Ip(*ip),
                HostPattern::Wildcard(_) => continue,
            };
            let owner = known.catalog.provider_for(&host).map(|p| p.id.as_str());
            if owner != Some(id.as_str()) {
                let whose = match owner {
                    Some(other) => format!("a host of provider `{other}`"),
                    None => "outside the provider catalog".to_owned(),
                };
                self.at(
                    &span,
                    format!("inject_key `{id}` would send the `{id}` key to {host}, which is {whose}; move that host to a route of its own, or declare it in a [[providers]] entry"),
                );
                return None;
            }
        }
        // A `[[providers]]` entry that failed validation is not in the catalog; its own
        // error is reported already. Every valid entry has a key injection (its
        // `auth_header` and `auth_format` have defaults).
        Some(id.clone())
    }

    pub(super) fn route_hosts(
        &mut self,
        route_span: &Range<usize>,
        raw: Option<S<Vec<S<String>>>>,
    ) -> Vec<HostPattern> {
        let example = "as in `hosts = [\"api.openai.com\"]`";
        let Some(list) = raw else {
            self.at_table(
                route_span,
                format!("route has no `hosts`; add the hosts it covers, {example}"),
            );
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.at(
                &list.span(),
                format!("route has an empty `hosts` list; add the hosts it covers, {example}"),
            );
        }
        list.into_inner()
            .iter()
            .filter_map(|host| self.check(&host.span(), HostPattern::parse(host.get_ref())))
            .collect()
    }

    /// A missing or unusable action becomes `Deny` (the config is rejected anyway).
    pub(super) fn route_action(
        &mut self,
        route_span: &Range<usize>,
        raw: Option<&S<String>>,
    ) -> Action {
        let choices = "\"allow\", \"deny\", \"narrow\", \"warn\" or \"approve\"";
        let Some(action) = raw else {
            self.at_table(route_span, format!("route needs an `action`: {choices}"));
            return Action::Deny;
        };
        match action.get_ref().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "narrow" => Action::Narrow,
            "warn" => Action::Warn,
            "approve" => Action::Approve,
            other => {
                self.at(
                    &action.span(),
                    format!("unknown action \"{other}\"; use {choices}"),
                );
                Action::Deny
            }
        }
    }

    /// `detectors = { injection = "block", secrets = "warn", sensitivity = "high" }`;
    /// omitted means off (and `balanced`).
    pub(super) fn route_detectors(&mut self, raw: Option<&S<RawDetectors>>) -> Detectors {
        let mut detectors = Detectors::default();
        let Some(raw) = raw else {
            return detectors;
        };
        let raw = raw.get_ref();
        for (slot, value) in [
            (&mut detectors.injection, &raw.injection),
            (&mut detectors.secrets, &raw.secrets),
        ] {
            if let Some(value) = value {
                match DetectorMode::parse(value.get_ref()) {
                    Some(mode) => *slot = mode,
                    None => self.at(
                        &value.span(),
                        format!(
                            "unknown detector mode \"{}\"; use \"block\", \"warn\" or \"off\"",
                            value.get_ref()
                        ),
                    ),
                }
            }
        }
        if let Some(value) = &raw.sensitivity {
            match Sensitivity::parse(value.get_ref()) {
                Some(sensitivity) => detectors.sensitivity = sensitivity,
                None => self.at(
                    &value.span(),
                    format!(
                        "unknown detector sensitivity \"{}\"; use \"balanced\" or \"high\"",
                        value.get_ref()
                    ),
                ),
            }
        }
        detectors
    }

    /// `narrow = { … }`: present exactly when `action = "narrow"`, and sets something.
    pub(super) fn route_narrow(
        &mut self,
        raw: Option<&S<RawNarrow>>,
        raw_action: Option<&S<String>>,
        action: Action,
        models: &[ModelPattern],
    ) -> Option<NarrowSpec> {
        let Some(table) = raw else {
            if action == Action::Narrow {
                let span = raw_action.map_or(0..0, Spanned::span);
                self.at(
                    &span,
                    "action = \"narrow\" needs a `narrow` table saying how, as in `narrow = { max_tokens = 2048 }`",
                );
            }
            return None;
        };
        if action != Action::Narrow {
            self.at(
                &table.span(),
                "`narrow` only applies to a route with action = \"narrow\"; set the action, or remove `narrow`",
            );
            return None;
        }
        let span = table.span();
        let table = table.get_ref();
        let mut spec = NarrowSpec::default();
        if table.max_tokens.is_none()
            && table.fallback_model.is_none()
            && table.tools_allow.is_none()
            && table.force_include_usage.is_none()
        {
            self.at_table(
                &span,
                "`narrow` sets nothing; give at least one of max_tokens, fallback_model, tools_allow or force_include_usage",
            );
        }
        if let Some(max) = &table.max_tokens {
            spec.max_tokens = self.positive(Some(max.clone()));
        }
        if let Some(model) = &table.fallback_model {
            let name = model.get_ref();
            match ModelPattern::parse(name) {
                Ok(ModelPattern::Exact(_)) => {
                    let covered = models.is_empty() || models.iter().any(|p| p.matches(name));
                    if covered {
                        spec.fallback_model = Some(name.clone());
                    } else {
                        self.at(
                            &model.span(),
                            format!("fallback_model `{name}` is not in this route's `models`, so narrowing would still send a disallowed model; pick one of the listed models"),
                        );
                    }
                }
                Ok(ModelPattern::Prefix(_)) => self.at(
                    &model.span(),
                    format!("fallback_model `{name}` is a pattern; it must name one model, as in \"gpt-4o-mini\""),
                ),
                Err(message) => self.at(&model.span(), message),
            }
        }
        if let Some(tools) = &table.tools_allow {
            let mut names = Vec::new();
            for tool in tools.get_ref() {
                if tool.get_ref().trim().is_empty() {
                    self.at(
                        &tool.span(),
                        "a tools_allow entry is empty; write a tool or function name",
                    );
                } else {
                    names.push(tool.get_ref().clone());
                }
            }
            spec.tools_allow = Some(names);
        }
        spec.force_include_usage = table.force_include_usage.unwrap_or(false);
        Some(spec)
    }

    /// `[[providers]]`: catalog entries. Returns every declared id (valid or not, for
    /// reference checks) with the built-in ids, and the valid entries.
    pub(super) fn providers(&mut self, raw: Vec<S<RawProvider>>) -> (OrderedIds, Vec<Provider>) {
        let mut ids = OrderedIds::default();
        for id in builtin_provider_ids() {
            ids.push(id.to_owned());
        }
        let mut seen = Seen::new();
        let mut providers = Vec::new();
        for entry in raw {
            let span = entry.span();
            let entry = entry.into_inner();
            let id = match &entry.id {
                None => {
                    self.at_table(&span, "provider needs an `id`, as in `id = \"local-vllm\"`; routes name it in `providers`");
                    None
                }
                Some(id) => {
                    if !ids.contains(id.get_ref()) {
                        ids.push(id.get_ref().clone());
                    }
                    self.new_id("provider", id, &mut seen)
                }
            };
            let hosts = match &entry.hosts {
                None => {
                    self.at_table(&span, "provider has no `hosts`; list the hosts it answers on, as in `hosts = [\"llm.example.com\"]`");
                    None
                }
                Some(list) => {
                    if list.get_ref().is_empty() {
                        self.at(
                            &list.span(),
                            "provider has an empty `hosts` list; list the hosts it answers on",
                        );
                    }
                    let hosts: Vec<ProviderHost> = list
                        .get_ref()
                        .iter()
                        .filter_map(|h| self.check(&h.span(), ProviderHost::parse(h.get_ref())))
                        .collect();
                    Some(hosts)
                }
            };
            let api = match &entry.api {
                None => Some(ApiStyle::OpenAi),
                Some(api) => {
                    let parsed = ApiStyle::parse(api.get_ref());
                    if parsed.is_none() {
                        let names: Vec<&str> = ApiStyle::ALL.iter().map(ApiStyle::as_str).collect();
                        self.at(
                            &api.span(),
                            format!(
                                "unknown api \"{}\"; use one of {}",
                                api.get_ref(),
                                names.join(", ")
                            ),
                        );
                    }
                    parsed
                }
            };
            let model_from = match &entry.model_from {
                None => vec![ModelSource::Body("model".to_owned())],
                Some(list) => {
                    if list.get_ref().is_empty() {
                        self.at(&list.span(), "provider has an empty `model_from` list; remove it for the default [\"body:model\"], or list sources");
                    }
                    list.get_ref()
                        .iter()
                        .filter_map(|m| self.check(&m.span(), ModelSource::parse(m.get_ref())))
                        .collect()
                }
            };
            let header = match &entry.auth_header {
                None => Some("authorization".to_owned()),
                Some(h) => self.check(&h.span(), parse_auth_header(h.get_ref())),
            };
            let format = match &entry.auth_format {
                None => Some("Bearer {key}".to_owned()),
                Some(f) => self.check(&f.span(), parse_auth_format(f.get_ref())),
            };
            if let (Some(id), Some(hosts), Some(api), Some(header), Some(format)) =
                (id, hosts, api, header, format)
            {
                providers.push(Provider {
                    id,
                    hosts,
                    api,
                    model_from,
                    key_injection: KeyInjection { header, format },
                });
            }
        }
        (ids, providers)
    }

    pub(super) fn route_mode(&mut self, raw: Option<&S<String>>) -> Mode {
        let Some(mode) = raw else {
            return Mode::Intercept;
        };
        match mode.get_ref().as_str() {
            "intercept" => Mode::Intercept,
            "passthrough" => Mode::Passthrough,
            other => {
                self.at(
                    &mode.span(),
                    format!("unknown mode \"{other}\"; use \"intercept\" or \"passthrough\""),
                );
                Mode::Intercept
            }
        }
    }

    /// Default `[443]`, plus 80 with `allow_plaintext`. A deny route covers both by
    /// default, so that it cannot be sidestepped over plain HTTP.
    pub(super) fn route_ports(
        &mut self,
        raw: Option<S<Vec<S<i64>>>>,
        action: Action,
        allow_plaintext: bool,
    ) -> Vec<u16> {
        let Some(list) = raw else {
            return match (action, allow_plaintext) {
                (Action::Deny, _) | (_, true) => vec![443, 80],
                _ => vec![443],
            };
        };
        if list.get_ref().is_empty() {
            self.at(
                &list.span(),
                "route has an empty `ports` list; list ports, or remove `ports` to use the default [443]",
            );
        }
        let mut ports = Vec::new();
        for port in list.into_inner() {
            let value = *port.get_ref();
            match u16::try_from(value) {
                Ok(p) if p != 0 => ports.push(p),
                _ => self.at(
                    &port.span(),
                    format!("port {value} is out of range; use a port from 1 to 65535"),
                ),
            }
        }
        ports
    }

    /// `methods` / `paths`: absent means "any", so an explicit empty list is a mistake.
    pub(super) fn optional_list<T>(
        &mut self,
        raw: Option<&S<Vec<S<String>>>>,
        key: &str,
        what: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let Some(list) = raw else {
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.at(
                &list.span(),
                format!("route has an empty `{key}` list; remove `{key}` to allow any {what}, or list them"),
            );
        }
        list.get_ref()
            .iter()
            .filter_map(|item| self.check(&item.span(), parse(item.get_ref())))
            .collect()
    }

    /// A route's `tenants` or `agents` list: present means non-empty, and every id known.
    pub(super) fn scope_list(
        &mut self,
        list: Option<S<Vec<S<String>>>>,
        key: &str,
        kind: &str,
        known: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let Some(list) = list else {
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.at(
                &list.span(),
                format!("`{key} = []` names no {kind}; list at least one, or remove `{key}` to apply the route to every agent"),
            );
        }
        let mut ids = Vec::new();
        for id in list.into_inner() {
            if known(id.get_ref()) {
                ids.push(id.into_inner());
            } else {
                self.at(
                    &id.span(),
                    format!(
                        "route refers to unknown {kind} `{}`; declare it with [[{key}]] or fix the spelling",
                        id.get_ref()
                    ),
                );
            }
        }
        ids
    }
}
