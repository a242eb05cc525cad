//! Route indices by host, in file order.

use std::collections::HashMap;
use std::sync::Arc;

use crate::host::{wildcard_key, Host, HostPattern};
use crate::route::Route;

/// Route indices by host. Each list is in ascending (file) order, so merging the exact
/// and wildcard lists for a name keeps "first match wins".
#[derive(Debug, Default)]
pub(super) struct HostIndex {
    /// `api.openai.com` → routes with that exact host.
    exact: HashMap<String, Vec<usize>>,
    /// `.openai.azure.com` → routes with `*.openai.azure.com`.
    wildcard: HashMap<String, Vec<usize>>,
    /// Routes with at least one IP pattern; few, so scanned.
    ip: Vec<usize>,
}

impl HostIndex {
    pub(super) fn build(routes: &[Arc<Route>]) -> HostIndex {
        fn push(list: &mut Vec<usize>, i: usize) {
            // A route naming the same key twice is indexed once.
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
        let mut index = HostIndex::default();
        for (i, route) in routes.iter().enumerate() {
            for pattern in &route.hosts {
                match pattern {
                    HostPattern::Exact(name) => {
                        push(index.exact.entry(name.clone()).or_default(), i)
                    }
                    HostPattern::Wildcard(suffix) => {
                        push(index.wildcard.entry(suffix.clone()).or_default(), i)
                    }
                    HostPattern::Ip(_) => push(&mut index.ip, i),
                }
            }
        }
        index
    }

    pub(super) fn candidates<'a>(
        &'a self,
        host: &'a Host,
        routes: &'a [Arc<Route>],
    ) -> Candidates<'a> {
        match host {
            Host::Name(name) => Candidates::Names {
                exact: self.exact.get(name).map_or(&[], Vec::as_slice),
                wildcard: wildcard_key(name)
                    .and_then(|key| self.wildcard.get(key))
                    .map_or(&[], Vec::as_slice),
            },
            Host::Ip(_) => Candidates::Ips {
                list: self.ip.iter(),
                routes,
                host,
            },
        }
    }
}

/// Route indices matching one host, ascending.
pub(super) enum Candidates<'a> {
    /// Merge of two ascending lists, without duplicates.
    Names {
        exact: &'a [usize],
        wildcard: &'a [usize],
    },
    /// The IP-pattern routes, filtered by an actual match.
    Ips {
        list: std::slice::Iter<'a, usize>,
        routes: &'a [Arc<Route>],
        host: &'a Host,
    },
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Names { exact, wildcard } => {
                let next = match (exact.first(), wildcard.first()) {
                    (Some(&a), Some(&b)) => a.min(b),
                    (Some(&a), None) => a,
                    (None, Some(&b)) => b,
                    (None, None) => return None,
                };
                // A route under both keys is yielded once.
                if let Some((&head, rest)) = exact.split_first() {
                    if head == next {
                        *exact = rest;
                    }
                }
                if let Some((&head, rest)) = wildcard.split_first() {
                    if head == next {
                        *wildcard = rest;
                    }
                }
                Some(next)
            }
            Candidates::Ips { list, routes, host } => list
                .by_ref()
                .copied()
                .find(|&i| routes.get(i).is_some_and(|route| route.matches_host(host))),
        }
    }
}
