//! Budgets: how many tokens and requests a route, a tenant or an agent may use.
//!
//! This crate only validates and holds the limits; the proxy keeps the counters.
//! A request reserves its token estimate up front (its max-tokens bound,
//! [`crate::Evaluation::max_output_tokens`], or `default_reserve` when it names none)
//! and settles to the metered usage when the response ends.

/// A `budget = { … }` table on a route, a `[[tenants]]` or an `[[agents]]` entry.
/// At least one of `tokens_per_day` and `requests_per_minute` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSpec {
    /// Tokens (prompt and output, as metered) per UTC day.
    pub tokens_per_day: Option<u64>,
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Tokens reserved for a request that names no max-tokens bound. Default 1024.
    /// Only meaningful with `tokens_per_day`.
    pub default_reserve: u64,
    /// Per-request cap on metered output tokens. Only set with `tokens_per_day`.
    pub hard_cap: Option<u64>,
}

impl BudgetSpec {
    /// `default_reserve` when the table does not set it.
    pub const DEFAULT_RESERVE: u64 = 1024;
}
