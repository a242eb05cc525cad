//! Validation of the sidecar settings: who a transparent listener's
//! connections act as, and the `[dns]` responder.
//!
//! A transparent connection carries no credential, so its agent comes from
//! config: one fixed agent, or a source-CIDR map. A fixed agent on a
//! non-loopback bind needs `force_unauthenticated`, as on other listeners:
//! anyone who can reach the address would act as that agent.

use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use super::raw::{RawDns, RawListener, RawSource, S};
use super::validate::{Errors, OrderedIds};
use super::values::{parse_bind, parse_net};
use super::{AdminConfig, DnsConfig, ListenerAuth, SourceAgent};

const DEFAULT_DNS_TTL: u32 = 30;

impl Errors<'_> {
    pub(super) fn transparent_auth(
        &mut self,
        listener: &RawListener,
        span: Range<usize>,
        bind: Option<SocketAddr>,
        agents: &OrderedIds,
    ) -> Option<ListenerAuth> {
        match listener.auth.as_ref() {
            None => {}
            Some(a) if a.get_ref() == "none" => {}
            Some(a) => {
                self.at(
                    &a.span(),
                    "a transparent listener takes no credentials; remove `auth` and name the agent with `agent = \"…\"` or `sources = [{ cidr = \"…\", agent = \"…\" }]`",
                );
                return None;
            }
        }
        let forced = listener.force_unauthenticated == Some(true);
        self.who(
            listener.agent.as_ref(),
            listener.sources.as_ref(),
            span,
            bind,
            forced,
            agents,
            "transparent listener",
        )
    }

    pub(super) fn dns(
        &mut self,
        raw: Option<S<RawDns>>,
        agents: &OrderedIds,
        admin: &AdminConfig,
    ) -> Option<DnsConfig> {
        let raw = raw?;
        let span = raw.span();
        let raw = raw.into_inner();
        let bind = match &raw.bind {
            None => {
                self.at_table(
                    &span,
                    "[dns] needs a `bind` address, as in `bind = \"127.0.0.1:15053\"`",
                );
                None
            }
            Some(b) => {
                let addr = self.check(&b.span(), parse_bind(b.get_ref()));
                // UDP and TCP ports are separate, but sharing the admin's would
                // only confuse: say so rather than guess.
                if addr.is_some_and(|a| a == admin.bind && a.port() != 0) {
                    self.at(
                        &b.span(),
                        "[dns] bind is also the admin bind; use another port",
                    );
                }
                addr
            }
        };
        let ttl = match &raw.ttl {
            None => Some(DEFAULT_DNS_TTL),
            Some(t) => match u32::try_from(*t.get_ref()) {
                Ok(v) if v <= 86_400 => Some(v),
                _ => {
                    self.at(&t.span(), "`ttl` is seconds, from 0 to 86400");
                    None
                }
            },
        };
        // The responder only ever sees loopback traffic in a pod; a fixed
        // agent elsewhere would answer anyone, which is only a leak of which
        // names are allowed, so no `force_unauthenticated` is asked for.
        let auth = self.who(
            raw.agent.as_ref(),
            raw.sources.as_ref(),
            span,
            None,
            true,
            agents,
            "[dns]",
        );
        Some(DnsConfig {
            bind: bind?,
            auth: auth?,
            ttl: ttl?,
        })
    }

    /// `agent = "…"` or `sources = [...]`, exactly one.
    #[allow(clippy::too_many_arguments)]
    fn who(
        &mut self,
        agent: Option<&S<String>>,
        sources: Option<&S<Vec<S<RawSource>>>>,
        span: Range<usize>,
        bind: Option<SocketAddr>,
        forced: bool,
        agents: &OrderedIds,
        what: &str,
    ) -> Option<ListenerAuth> {
        match (agent, sources) {
            (Some(_), Some(s)) => {
                self.at(
                    &s.span(),
                    format!("a {what} takes `agent` or `sources`, not both"),
                );
                None
            }
            (None, None) => {
                self.at(
                    &span,
                    format!("a {what} needs `agent = \"…\"` (every connection is that agent) or `sources = [{{ cidr = \"10.0.0.0/24\", agent = \"…\" }}]`"),
                );
                None
            }
            (Some(agent), None) => {
                let id = agent.get_ref();
                if !agents.contains(id) {
                    self.at(
                        &agent.span(),
                        format!("{what} refers to unknown agent `{id}`; declare it with [[agents]] or fix the spelling"),
                    );
                    return None;
                }
                if let Some(bind) = bind {
                    if !bind.ip().is_loopback() && !forced {
                        self.at(
                            &agent.span(),
                            format!("a fixed agent on the non-loopback address {bind} lets anyone who can reach it act as agent `{id}`; bind to 127.0.0.1 (iptables REDIRECT of local traffic lands there), map `sources` instead, or set force_unauthenticated = true"),
                        );
                        return None;
                    }
                }
                Some(ListenerAuth::None { agent: id.clone() })
            }
            (None, Some(list)) => {
                if list.get_ref().is_empty() {
                    self.at(&list.span(), "`sources` is empty; map at least one network");
                    return None;
                }
                let mut out = Vec::new();
                let mut ok = true;
                for entry in list.get_ref() {
                    match self.source(entry, agents) {
                        Some(s) => out.push(s),
                        None => ok = false,
                    }
                }
                ok.then_some(ListenerAuth::Sources(out))
            }
        }
    }

    fn source(&mut self, entry: &Spanned<RawSource>, agents: &OrderedIds) -> Option<SourceAgent> {
        let span = entry.span();
        let entry = entry.get_ref();
        let net = match &entry.cidr {
            None => {
                self.at(&span, "a `sources` entry needs `cidr = \"…\"`");
                None
            }
            Some(c) => self.check(&c.span(), parse_net(c.get_ref())),
        };
        let agent = match &entry.agent {
            None => {
                self.at(&span, "a `sources` entry needs `agent = \"…\"`");
                None
            }
            Some(a) if !agents.contains(a.get_ref()) => {
                self.at(
                    &a.span(),
                    format!("`sources` refers to unknown agent `{}`; declare it with [[agents]] or fix the spelling", a.get_ref()),
                );
                None
            }
            Some(a) => Some(a.get_ref().clone()),
        };
        Some(SourceAgent {
            net: net?,
            agent: agent?,
        })
    }
}
