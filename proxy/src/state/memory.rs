//! Budgets in process memory: one lock around a small map, taken once per
//! request to reserve and once to settle (never per byte).
//!
//! Token budgets reset at midnight UTC; request rates use fixed one-minute
//! windows. `Retry-After` is the time until the window that refused the
//! request starts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Ask, BoxFuture, Budgets, Held, Refused, Reservation, StateError};

pub(super) const DAY: u64 = 86_400;
pub(super) const MINUTE: u64 = 60;

/// The wall clock, in seconds since the Unix epoch (replaceable in tests).
pub type Clock = fn() -> u64;

pub(super) fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Default)]
struct Counter {
    day: u64,
    tokens: u64,
    minute: u64,
    requests: u32,
}

impl Counter {
    fn roll(&mut self, now: u64) {
        if self.day != now / DAY {
            self.day = now / DAY;
            self.tokens = 0;
        }
        if self.minute != now / MINUTE {
            self.minute = now / MINUTE;
            self.requests = 0;
        }
    }
}

pub struct MemoryBudgets {
    counters: Mutex<HashMap<String, Counter>>,
    clock: Clock,
}

impl Default for MemoryBudgets {
    fn default() -> Self {
        MemoryBudgets::with_clock(system_clock)
    }
}

impl MemoryBudgets {
    pub fn with_clock(clock: Clock) -> Self {
        MemoryBudgets {
            counters: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn reserve_now(&self, asks: &[Ask]) -> Result<Reservation, Refused> {
        let now = (self.clock)();
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        // Check every scope first, then charge them all: all or nothing.
        for ask in asks {
            let c = map.entry(ask.key.clone()).or_default();
            c.roll(now);
            if let Some(limit) = ask.tokens_per_day {
                if c.tokens.saturating_add(ask.tokens) > limit {
                    return Err(Refused {
                        scope: ask.scope,
                        tokens: true,
                        retry_after: Duration::from_secs(DAY - now % DAY),
                    });
                }
            }
            if let Some(limit) = ask.requests_per_minute {
                if c.requests >= limit {
                    return Err(Refused {
                        scope: ask.scope,
                        tokens: false,
                        retry_after: Duration::from_secs(MINUTE - now % MINUTE),
                    });
                }
            }
        }
        let mut held = Vec::with_capacity(asks.len());
        let mut remaining = Vec::with_capacity(asks.len());
        for ask in asks {
            let c = map.entry(ask.key.clone()).or_default();
            if ask.requests_per_minute.is_some() {
                c.requests += 1;
            }
            if ask.tokens_per_day.is_some() {
                c.tokens = c.tokens.saturating_add(ask.tokens);
                if let Some(limit) = ask.tokens_per_day {
                    remaining.push((ask.scope, limit.saturating_sub(c.tokens)));
                }
                held.push(Held {
                    key: ask.key.clone(),
                    day: c.day,
                    tokens: ask.tokens,
                });
            }
        }
        Ok(Reservation { held, remaining })
    }

    fn settle_now(&self, reservation: Reservation, used: u64) {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        for h in reservation.held {
            if let Some(c) = map.get_mut(&h.key) {
                // A reservation from yesterday was charged to a window already gone.
                if c.day == h.day {
                    c.tokens = c.tokens.saturating_sub(h.tokens).saturating_add(used);
                }
            }
        }
    }
}

impl Budgets for MemoryBudgets {
    fn reserve<'a>(
        &'a self,
        asks: &'a [Ask],
    ) -> BoxFuture<'a, Result<Result<Reservation, Refused>, StateError>> {
        Box::pin(async move { Ok(self.reserve_now(asks)) })
    }

    fn settle(&self, reservation: Reservation, used: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.settle_now(reservation, used) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Scope;
    use super::*;

    fn noon() -> u64 {
        20_000 * DAY + DAY / 2
    }

    fn ask(key: &str, tokens_per_day: Option<u64>, rpm: Option<u32>, tokens: u64) -> Ask {
        Ask {
            key: key.to_owned(),
            scope: Scope::Tenant,
            tokens_per_day,
            requests_per_minute: rpm,
            tokens,
        }
    }

    #[test]
    fn the_request_that_would_cross_the_budget_is_refused_up_front() {
        let b = MemoryBudgets::with_clock(noon);
        let a = [ask("t", Some(100), None, 60)];
        assert!(b.reserve_now(&a).is_ok());
        let refused = b.reserve_now(&a).unwrap_err();
        assert!(refused.tokens);
        assert_eq!(refused.retry_after, Duration::from_secs(DAY / 2));
    }

    #[test]
    fn settling_replaces_the_reservation_with_the_tokens_used() {
        let b = MemoryBudgets::with_clock(noon);
        let a = [ask("t", Some(100), None, 60)];
        let r = b.reserve_now(&a).unwrap();
        b.settle_now(r, 10);
        // 10 used, so another 60 fits and a third does not.
        assert!(b.reserve_now(&a).is_ok());
        assert!(b.reserve_now(&a).is_err());
    }

    #[test]
    fn all_scopes_are_charged_or_none() {
        let b = MemoryBudgets::with_clock(noon);
        let tight = ask("agent", Some(50), None, 40);
        let loose = ask("tenant", Some(1_000), None, 40);
        assert!(b.reserve_now(&[loose.clone(), tight.clone()]).is_ok());
        assert!(b.reserve_now(&[loose.clone(), tight]).is_err());
        // The refused request charged nothing to the tenant: 960 are left.
        let rest = ask("tenant", Some(1_000), None, 960);
        assert!(b.reserve_now(&[rest]).is_ok());
    }

    #[test]
    fn request_rate_is_limited_per_minute_with_a_truthful_retry_after() {
        fn at_20s() -> u64 {
            20_000 * DAY + 20
        }
        let b = MemoryBudgets::with_clock(at_20s);
        let a = [ask("t", None, Some(2), 0)];
        assert!(b.reserve_now(&a).is_ok());
        assert!(b.reserve_now(&a).is_ok());
        let refused = b.reserve_now(&a).unwrap_err();
        assert!(!refused.tokens);
        assert_eq!(refused.retry_after, Duration::from_secs(40));
    }
}
