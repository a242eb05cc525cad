//! Validation of the proxy settings: listeners, admin, CA, ledger, upstream, limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    RawAdmin, RawCa, RawDuration, RawLedger, RawLimits, RawListener, RawUpstream, RawVault, S,
};
use super::validate::{Errors, OrderedIds, Seen};
use super::values::{parse_bind, parse_duration, parse_token_hash, validate_id};
use super::{
    AdminConfig, CaConfig, LedgerConfig, LedgerSync, Limits, ListenerAuth, ListenerConfig,
    ListenerMode, ResolveEntry, UpstreamConfig, VaultConfig,
};

/// The ledger crate's own bound on its queue.
const MAX_LEDGER_QUEUE: usize = 1 << 24;

impl Errors<'_> {
    pub(super) fn admin(&mut self, raw: Option<RawAdmin>) -> AdminConfig {
        let mut admin = AdminConfig::default();
        let Some(raw) = raw else {
            return admin;
        };
        if let Some(bind) = raw.bind {
            if let Some(addr) = self.check(&bind.span(), parse_bind(bind.get_ref())) {
                admin.bind = addr;
            }
        }
        if let Some(token) = raw.token_sha256 {
            admin.token_sha256 = self.check(&token.span(), parse_token_hash(token.get_ref()));
        }
        admin.metrics_public = raw.metrics_public.unwrap_or(false);
        admin
    }

    pub(super) fn listeners(
        &mut self,
        raw: Option<S<Vec<S<RawListener>>>>,
        agents: &OrderedIds,
        admin: &AdminConfig,
    ) -> Vec<ListenerConfig> {
        let Some(raw) = raw else {
            return vec![ListenerConfig::default()];
        };
        if raw.get_ref().is_empty() {
            self.at(
                &raw.span(),
                "`listeners` is empty; add a [[listeners]] table, or remove the key for the default listener on 127.0.0.1:8080",
            );
        }
        let mut names = Seen::new();
        let mut binds: HashMap<SocketAddr, Range<usize>> = HashMap::new();
        let mut listeners = Vec::new();
        for listener in raw.into_inner() {
            let span = listener.span();
            let listener = listener.into_inner();

            let name = match &listener.name {
                None => "forward".to_owned(),
                Some(name) => name.get_ref().clone(),
            };
            let name_span = listener.name.as_ref().map_or(span.clone(), Spanned::span);
            if let Err(message) = validate_id("listener", &name) {
                self.at(&name_span, message);
            } else if let Some(first) = names.get(&name) {
                let line = self.line_of(first);
                self.at(
                    &name_span,
                    format!("duplicate listener name `{name}` (first used on line {line}); give each listener a unique `name`"),
                );
            } else {
                names.insert(name.clone(), name_span);
            }

            let bind = match &listener.bind {
                None => {
                    self.at(
                        &span,
                        "listener needs a `bind` address, as in `bind = \"127.0.0.1:8080\"`",
                    );
                    None
                }
                Some(bind) => {
                    let addr = self.check(&bind.span(), parse_bind(bind.get_ref()));
                    if let Some(addr) = addr.filter(|addr| addr.port() != 0) {
                        if addr == admin.bind {
                            self.at(
                                &bind.span(),
                                format!(
                                    "listener bind {addr} is also the admin bind; use another port"
                                ),
                            );
                        } else if let Some(first) = binds.get(&addr) {
                            let line = self.line_of(first);
                            self.at(
                                &bind.span(),
                                format!("duplicate listener bind {addr} (first used on line {line}); each listener needs its own address"),
                            );
                        } else {
                            binds.insert(addr, bind.span());
                        }
                    }
                    addr
                }
            };

            let mode = match &listener.mode {
                None => Some(ListenerMode::Forward),
                Some(mode) => match mode.get_ref().as_str() {
                    "forward" => Some(ListenerMode::Forward),
                    "gateway" => Some(ListenerMode::Gateway),
                    "transparent" => Some(ListenerMode::Transparent),
                    other => {
                        self.at(
                            &mode.span(),
                            format!("unknown listener mode \"{other}\"; use mode = \"forward\", \"gateway\" or \"transparent\""),
                        );
                        None
                    }
                },
            };

            let auth = if mode == Some(ListenerMode::Transparent) {
                self.transparent_auth(&listener, span.clone(), bind, agents)
            } else {
                if let Some(sources) = &listener.sources {
                    self.at(
                        &sources.span(),
                        "`sources` only applies to a listener with mode = \"transparent\"; remove it",
                    );
                }
                self.listener_auth(&listener, span.clone(), bind, agents)
            };

            if let (Some(bind), Some(mode), Some(auth)) = (bind, mode, auth) {
                listeners.push(ListenerConfig {
                    name,
                    bind,
                    mode,
                    auth,
                });
            }
        }
        listeners
    }

    pub(super) fn listener_auth(
        &mut self,
        listener: &RawListener,
        span: Range<usize>,
        bind: Option<SocketAddr>,
        agents: &OrderedIds,
    ) -> Option<ListenerAuth> {
        let auth_span = listener.auth.as_ref().map_or(span.clone(), Spanned::span);
        match listener.auth.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("basic") => {
                if let Some(agent) = &listener.agent {
                    self.at(
                        &agent.span(),
                        "`agent` only applies to a listener with auth = \"none\"; remove it, or set auth = \"none\"",
                    );
                    return None;
                }
                Some(ListenerAuth::Basic)
            }
            Some("none") => {
                let Some(agent) = &listener.agent else {
                    self.at(
                        &auth_span,
                        "a listener with auth = \"none\" needs `agent = \"…\"`: the declared agent every connection acts as",
                    );
                    return None;
                };
                let id = agent.get_ref();
                if !agents.contains(id) {
                    self.at(
                        &agent.span(),
                        format!("listener refers to unknown agent `{id}`; declare it with [[agents]] or fix the spelling"),
                    );
                    return None;
                }
                if let Some(bind) = bind {
                    if !bind.ip().is_loopback() && listener.force_unauthenticated != Some(true) {
                        self.at(
                            &auth_span,
                            format!("auth = \"none\" on the non-loopback address {bind} lets anyone who can reach it act as agent `{id}`; bind to 127.0.0.1, use auth = \"basic\", or set force_unauthenticated = true"),
                        );
                        return None;
                    }
                }
                Some(ListenerAuth::None { agent: id.clone() })
            }
            Some(other) => {
                self.at(
                    &auth_span,
                    format!("unknown auth \"{other}\"; use auth = \"basic\" or auth = \"none\""),
                );
                None
            }
        }
    }

    pub(super) fn ca(&mut self, raw: Option<RawCa>) -> CaConfig {
        let mut ca = CaConfig::default();
        let Some(raw) = raw else { return ca };
        if let Some(dir) = self.dir(raw.dir) {
            ca.dir = dir;
        }
        if let Some(ttl) = self.duration(raw.leaf_ttl, false) {
            ca.leaf_ttl = ttl;
        }
        if let Some(n) = self.positive(raw.cache_capacity) {
            ca.cache_capacity = n;
        }
        ca
    }

    pub(super) fn ledger(&mut self, raw: Option<RawLedger>) -> LedgerConfig {
        let mut ledger = LedgerConfig::default();
        let Some(raw) = raw else { return ledger };
        if let Some(dir) = self.dir(raw.dir) {
            ledger.dir = dir;
        }
        if let Some(sync) = raw.sync {
            match sync.get_ref().as_str() {
                "always" => ledger.sync = LedgerSync::Always,
                "batch" => ledger.sync = LedgerSync::Batch,
                other => self.at(
                    &sync.span(),
                    format!("unknown ledger sync \"{other}\"; use \"always\" (fsync before forwarding) or \"batch\""),
                ),
            }
        }
        if let Some(value) = self.duration(raw.sync_interval, false) {
            ledger.sync_interval = value;
        }
        if let Some(value) = self.positive(raw.checkpoint_every) {
            ledger.checkpoint_every = value;
        }
        if let Some(value) = self.duration(raw.checkpoint_interval, false) {
            ledger.checkpoint_interval = value;
        }
        if let Some(raw_max) = raw.segment_max_bytes {
            let span = raw_max.span();
            match self.positive::<u64>(Some(raw_max)) {
                Some(value) if value < 4096 => self.at(
                    &span,
                    "segment_max_bytes must be at least 4096 (use e.g. 67108864)",
                ),
                Some(value) => ledger.segment_max_bytes = value,
                None => {}
            }
        }
        if let Some(value) = self.positive(raw.min_free_bytes) {
            ledger.min_free_bytes = value;
        }
        if let Some(id) = raw.replica_id {
            match validate_id("replica_id", id.get_ref()) {
                Ok(()) => ledger.replica_id = id.into_inner(),
                Err(message) => self.at(&id.span(), message),
            }
        }
        if let Some(raw_queue) = raw.queue_capacity {
            let span = raw_queue.span();
            match self.positive::<usize>(Some(raw_queue)) {
                Some(value) if value > MAX_LEDGER_QUEUE => self.at(
                    &span,
                    format!(
                        "queue_capacity must be at most {MAX_LEDGER_QUEUE} (the default is 65536)"
                    ),
                ),
                Some(value) => ledger.queue_capacity = value,
                None => {}
            }
        }
        ledger
    }

    pub(super) fn upstream(&mut self, raw: Option<RawUpstream>) -> UpstreamConfig {
        let mut upstream = UpstreamConfig::default();
        let Some(raw) = raw else { return upstream };
        for file in raw.extra_ca {
            if let Some(path) = self.dir(Some(file)) {
                upstream.extra_ca.push(path);
            }
        }
        for entry in raw.resolve {
            if let Some(entry) = self.check(&entry.span(), ResolveEntry::parse(entry.get_ref())) {
                upstream.resolve.push(entry);
            }
        }
        let timeouts = [
            (raw.connect_timeout, &mut upstream.connect_timeout),
            (raw.tls_timeout, &mut upstream.tls_timeout),
            (
                raw.response_header_timeout,
                &mut upstream.response_header_timeout,
            ),
            (raw.idle_timeout, &mut upstream.idle_timeout),
        ];
        for (raw, slot) in timeouts {
            if let Some(value) = self.duration(raw, false) {
                *slot = value;
            }
        }
        upstream
    }

    pub(super) fn limits(&mut self, raw: Option<RawLimits>) -> Limits {
        let mut limits = Limits::default();
        let Some(raw) = raw else { return limits };
        if let Some(value) = self.duration(raw.client_header_timeout, false) {
            limits.client_header_timeout = value;
        }
        if let Some(value) = self.duration(raw.body_progress_timeout, false) {
            limits.body_progress_timeout = value;
        }
        if let Some(value) = self.duration(raw.client_idle_timeout, false) {
            limits.client_idle_timeout = value;
        }
        if let Some(value) = self.positive(raw.max_header_bytes) {
            limits.max_header_bytes = value;
        }
        if let Some(value) = self.positive(raw.max_inspect_body) {
            limits.max_inspect_body = value;
        }
        let memory_span = raw
            .inspect_memory_per_tenant
            .as_ref()
            .or(raw.inspect_memory.as_ref())
            .map(|s| s.span());
        if let Some(value) = self.positive(raw.inspect_memory) {
            limits.inspect_memory = value;
        }
        if let Some(value) = self.positive(raw.inspect_memory_per_tenant) {
            limits.inspect_memory_per_tenant = value;
        }
        // One body of the largest size must always fit, or it could never be inspected.
        if let Some(span) = memory_span {
            if limits.inspect_memory_per_tenant < limits.max_inspect_body
                || limits.inspect_memory < limits.inspect_memory_per_tenant
            {
                self.at(
                    &span,
                    format!(
                        "need max_inspect_body ({}) <= inspect_memory_per_tenant ({}) <= inspect_memory ({})",
                        limits.max_inspect_body,
                        limits.inspect_memory_per_tenant,
                        limits.inspect_memory
                    ),
                );
            }
        }
        if let Some(value) = self.positive(raw.max_connections) {
            limits.max_connections = value;
        }
        if let Some(value) = self.positive(raw.max_connections_per_agent) {
            limits.max_connections_per_agent = value;
        }
        if let Some(value) = self.positive(raw.max_connections_per_peer) {
            limits.max_connections_per_peer = value;
        }
        // Zero grace is a legitimate "stop now".
        if let Some(value) = self.duration(raw.shutdown_grace, true) {
            limits.shutdown_grace = value;
        }
        limits
    }

    pub(super) fn vault(&mut self, raw: Option<RawVault>) -> VaultConfig {
        let mut vault = VaultConfig::default();
        let Some(raw) = raw else { return vault };
        if let Some(path) = self.dir(raw.path) {
            vault.path = path;
        }
        if let Some(raw_key) = raw.master_key_file {
            let span = raw_key.span();
            if let Some(file) = self.dir(Some(raw_key)) {
                // The key kept next to what it encrypts would protect nothing.
                if file == vault.path {
                    self.at(
                        &span,
                        "master_key_file is the vault file itself; keep the master key in a file of its own",
                    );
                } else {
                    vault.master_key_file = Some(file);
                }
            }
        }
        vault
    }

    pub(super) fn dir(&mut self, raw: Option<S<String>>) -> Option<PathBuf> {
        let raw = raw?;
        if raw.get_ref().is_empty() {
            self.at(
                &raw.span(),
                "the path is empty; write a file or directory path",
            );
            return None;
        }
        Some(PathBuf::from(raw.into_inner()))
    }

    pub(super) fn duration(
        &mut self,
        raw: Option<S<RawDuration>>,
        zero_ok: bool,
    ) -> Option<Duration> {
        let raw = raw?;
        let result = match raw.get_ref() {
            RawDuration::Text(text) => parse_duration(text).and_then(|d| {
                if d.is_zero() && !zero_ok {
                    Err(format!(
                        "duration \"{text}\" is zero; use a positive duration such as \"10s\""
                    ))
                } else {
                    Ok(d)
                }
            }),
            RawDuration::Number(n) => Err(format!(
                "durations are strings with a unit; write \"{n}s\" (or \"ms\", \"m\", \"h\", \"d\")"
            )),
        };
        self.check(&raw.span(), result)
    }

    pub(super) fn positive<T: TryFrom<i64>>(&mut self, raw: Option<S<i64>>) -> Option<T> {
        let raw = raw?;
        let value = *raw.get_ref();
        match T::try_from(value) {
            Ok(n) if value > 0 => Some(n),
            _ => {
                self.at(
                    &raw.span(),
                    format!("{value} is out of range; use a positive number"),
                );
                None
            }
        }
    }
}
