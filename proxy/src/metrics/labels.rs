//! Label values kept bounded: first-seen sets and shape checks.

use super::*;

/// A first-come set of label values that closes once it holds `cap` of them. After
/// that, only the values already in it pass, and the rest become `other`.
pub(super) struct FirstSeen {
    cap: usize,
    valid: fn(&str) -> bool,
    seen: RwLock<HashSet<Box<str>>>,
}

impl FirstSeen {
    pub(super) fn new(cap: usize, valid: fn(&str) -> bool) -> FirstSeen {
        FirstSeen {
            cap,
            valid,
            seen: RwLock::new(HashSet::with_capacity(cap)),
        }
    }

    /// `value` itself if it is (or may now become) one of the set, else `other`.
    /// Allocates only when a value joins the set.
    pub(super) fn label<'a>(&self, value: &'a str) -> &'a str {
        // The fold values stand for themselves and take no slot.
        if value == OTHER || value == NONE {
            return value;
        }
        if !(self.valid)(value) {
            return OTHER;
        }
        let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(value) {
            return value;
        }
        let full = seen.len() >= self.cap;
        drop(seen);
        if full {
            return OTHER;
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(value) {
            return value;
        }
        if seen.len() >= self.cap {
            return OTHER;
        }
        seen.insert(value.into());
        value
    }
}

pub(super) fn valid_provider(id: &str) -> bool {
    (1..=MAX_PROVIDER_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub(super) fn valid_model(model: &str) -> bool {
    (1..=MAX_MODEL_LEN).contains(&model.len())
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

/// `value` as the list's own `'static` spelling, or `other`.
pub(super) fn fixed(list: &[&'static str], value: &str) -> &'static str {
    list.iter().find(|v| **v == value).copied().unwrap_or(OTHER)
}

pub(super) fn reason_code(code: &str) -> &'static str {
    Reason::ALL
        .iter()
        .map(Reason::code)
        .find(|c| *c == code)
        .unwrap_or(OTHER)
}
