//! Budgets and rate limits on Redis, with the semantics of
//! [`MemoryBudgets`](super::super::MemoryBudgets): token budgets per UTC day,
//! requests per fixed minute window, every scope checked before any is
//! charged, `Retry-After` = the time until the refusing window starts over.
//!
//! The window is in the key (`…:tokens:{day}`, `…:rpm:{minute}`), so a new
//! window is a new key and an old one simply expires. The time comes from
//! this process's clock and is passed to the script, not read from Redis
//! `TIME`: the scripts stay deterministic (tests run them at a fixed instant)
//! and behave exactly as the memory backend does. Replicas are expected to
//! keep their clocks in sync (NTP); a skew of a few milliseconds only matters
//! at a window boundary, where it may charge the old or the new window.

use std::time::Duration;

use ::redis::Script;

use super::super::memory::{system_clock, Clock, DAY, MINUTE};
use super::super::{Ask, BoxFuture, Budgets, Held, Refused, Reservation, StateError};
use super::RedisConn;

/// KEYS: per ask, its token key then its rate key. ARGV: per ask, its token
/// limit, its rate limit (-1: none) and the tokens it asks; then the two TTLs.
/// Returns `{0, ask, is_tokens}` for a refusal, or `{1, left…}` with the
/// tokens left in each token-budgeted scope, in ask order.
const RESERVE: &str = r"
local n = #KEYS / 2
local day_ttl = ARGV[3 * n + 1]
local minute_ttl = ARGV[3 * n + 2]
for i = 1, n do
  local token_limit = tonumber(ARGV[3 * i - 2])
  local rate_limit = tonumber(ARGV[3 * i - 1])
  local want = tonumber(ARGV[3 * i])
  if token_limit >= 0 then
    local used = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    if used + want > token_limit then
      return {0, i, 1}
    end
  end
  if rate_limit >= 0 then
    local count = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    if count >= rate_limit then
      return {0, i, 0}
    end
  end
end
local out = {1}
for i = 1, n do
  local token_limit = tonumber(ARGV[3 * i - 2])
  if tonumber(ARGV[3 * i - 1]) >= 0 then
    redis.call('INCR', KEYS[2 * i])
    redis.call('EXPIRE', KEYS[2 * i], minute_ttl)
  end
  if token_limit >= 0 then
    local used = redis.call('INCRBY', KEYS[2 * i - 1], ARGV[3 * i])
    redis.call('EXPIRE', KEYS[2 * i - 1], day_ttl)
    local left = token_limit - used
    if left < 0 then left = 0 end
    out[#out + 1] = left
  end
end
return out
";

/// KEYS: the token keys charged. ARGV: for each, used minus reserved. A key
/// that is gone (its day expired) is not brought back.
const SETTLE: &str = r"
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    if redis.call('INCRBY', key, ARGV[i]) < 0 then
      redis.call('SET', key, '0', 'KEEPTTL')
    end
  end
end
return 0
";

/// A window's key outlives the window by this much, for replicas whose
/// clocks are slightly behind.
const TTL_SLACK: u64 = 60;

pub struct RedisBudgets {
    conn: RedisConn,
    clock: Clock,
    reserve: Script,
    settle: Script,
}

impl RedisBudgets {
    pub fn new(conn: RedisConn) -> RedisBudgets {
        RedisBudgets::with_clock(conn, system_clock)
    }

    pub fn with_clock(conn: RedisConn, clock: Clock) -> RedisBudgets {
        RedisBudgets {
            conn,
            clock,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
        }
    }

    async fn reserve_at(
        &self,
        asks: &[Ask],
        now: u64,
    ) -> Result<Result<Reservation, Refused>, StateError> {
        let (day, minute) = (now / DAY, now / MINUTE);
        let mut call = self.reserve.prepare_invoke();
        for ask in asks {
            call.key(format!("{}:tokens:{day}", ask.key))
                .key(format!("{}:rpm:{minute}", ask.key))
                .arg(
                    ask.tokens_per_day
                        .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)),
                )
                .arg(ask.requests_per_minute.map_or(-1, i64::from))
                .arg(ask.tokens);
        }
        call.arg(DAY - now % DAY + TTL_SLACK)
            .arg(MINUTE - now % MINUTE + TTL_SLACK);
        let mut c = self.conn.conn();
        let reply: Vec<i64> = self
            .conn
            .run("budget reserve", call.invoke_async(&mut c))
            .await?;
        let bad = || StateError::Unavailable("budget reserve: unexpected script reply".into());
        match reply.as_slice() {
            [0, i, is_tokens] => {
                let ask = usize::try_from(*i)
                    .ok()
                    .and_then(|i| asks.get(i.checked_sub(1)?))
                    .ok_or_else(bad)?;
                let tokens = *is_tokens == 1;
                let retry_after = if tokens {
                    DAY - now % DAY
                } else {
                    MINUTE - now % MINUTE
                };
                Ok(Err(Refused {
                    scope: ask.scope,
                    tokens,
                    retry_after: Duration::from_secs(retry_after),
                }))
            }
            [1, left @ ..] => {
                let budgeted: Vec<&Ask> =
                    asks.iter().filter(|a| a.tokens_per_day.is_some()).collect();
                if left.len() != budgeted.len() {
                    return Err(bad());
                }
                let held = budgeted
                    .iter()
                    .map(|a| Held {
                        key: format!("{}:tokens:{day}", a.key),
                        day,
                        tokens: a.tokens,
                    })
                    .collect();
                let remaining = budgeted
                    .iter()
                    .zip(left)
                    .map(|(a, l)| (a.scope, u64::try_from(*l).unwrap_or(0)))
                    .collect();
                Ok(Ok(Reservation { held, remaining }))
            }
            _ => Err(bad()),
        }
    }

    async fn settle_at(&self, reservation: Reservation, used: u64, now: u64) {
        // A reservation from yesterday was charged to a window already gone.
        let today: Vec<&Held> = reservation
            .held
            .iter()
            .filter(|h| h.day == now / DAY)
            .collect();
        if today.is_empty() {
            return;
        }
        let mut call = self.settle.prepare_invoke();
        for h in &today {
            let delta = i128::from(used) - i128::from(h.tokens);
            call.key(&h.key)
                .arg(i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX }));
        }
        let mut c = self.conn.conn();
        let settled: Result<i64, _> = self
            .conn
            .run("budget settle", call.invoke_async(&mut c))
            .await;
        // The reservation stays charged: an unsettled request is never free.
        if let Err(e) = settled {
            tracing::warn!(error = %e, "budget settle failed; the reservation stays charged");
        }
    }
}

impl Budgets for RedisBudgets {
    fn reserve<'a>(
        &'a self,
        asks: &'a [Ask],
    ) -> BoxFuture<'a, Result<Result<Reservation, Refused>, StateError>> {
        Box::pin(async move { self.reserve_at(asks, (self.clock)()).await })
    }

    fn settle(&self, reservation: Reservation, used: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.settle_at(reservation, used, (self.clock)()).await })
    }
}
