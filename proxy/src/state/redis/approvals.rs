//! Approvals on Redis: a request held by one replica is listed and decided
//! through the admin API of any replica.
//!
//! The holding replica keeps the request (and its body) and writes only the
//! content-free facts to `portcullis:{tenant}:approval:{id}`, with a TTL of
//! the hold's timeout, plus a member `{tenant}:{id}` in the index
//! `portcullis:approvals` (scored by expiry, for listing). A decision is one
//! script that succeeds only while the entry is still pending: it deletes the
//! entry, writes the verdict (and the grant, `SET … PX`) and returns. The
//! holding replica polls the verdict key every [`POLL`] and lets the request
//! go. When a hold times out or its client goes away, another script removes
//! the entry; if a verdict got there first, the verdict wins, so an approver
//! who was told "approved" is never contradicted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::super::approvals::{Approvals, DecideError, Ended, Held, Verdict, Wait, Waiter};
use super::super::{BoxFuture, StateError};
use super::{unix_ms, RedisConn};

/// How often a holding replica looks for its verdict.
const POLL: Duration = Duration::from_millis(150);
/// How long a verdict waits for the holding replica to pick it up.
const VERDICT_TTL_MS: u64 = 120_000;
/// The index of held requests across tenants.
const INDEX: &str = "portcullis:approvals";

/// KEYS: entry, index. ARGV: entry JSON, TTL ms, expiry ms, member, now ms.
const HOLD: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
";

/// KEYS: entry, verdict, index, grant. ARGV: member, verdict JSON, verdict
/// TTL ms, grant TTL ms (0: none). 1 if decided, 0 if no longer pending.
const DECIDE: &str = r"
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
end
return 1
";

/// KEYS: entry, verdict, index. ARGV: member. Ends a hold from the holder's
/// side: nil if it was still pending (now removed), else the verdict that won.
const ABANDON: &str = r"
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('DEL', KEYS[1]) == 1 then
  return false
end
local verdict = redis.call('GET', KEYS[2])
redis.call('DEL', KEYS[2])
return verdict
";

/// An approver's answer as the holding replica reads it.
#[derive(Serialize, Deserialize)]
struct Answer {
    approve: bool,
    grant_ms: Option<u64>,
    approver: String,
}

impl Answer {
    fn ended(self) -> Ended {
        let verdict = if self.approve {
            Verdict::Approve {
                grant: self.grant_ms.map(Duration::from_millis),
            }
        } else {
            Verdict::Deny
        };
        Ended::Decided(verdict, self.approver)
    }
}

fn entry_key(tenant: &str, id: &str) -> String {
    format!("portcullis:{tenant}:approval:{id}")
}

fn verdict_key(tenant: &str, id: &str) -> String {
    format!("portcullis:{tenant}:approval:{id}:verdict")
}

fn grant_key(tenant: &str, agent: &str, route: &str) -> String {
    format!("portcullis:{tenant}:grant:{agent}:{route}")
}

/// Tenant and request ids never contain `:` (config and event-id alphabets).
fn member(tenant: &str, id: &str) -> String {
    format!("{tenant}:{id}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

struct Scripts {
    hold: Script,
    decide: Script,
    abandon: Script,
}

pub struct RedisApprovals {
    conn: RedisConn,
    scripts: Arc<Scripts>,
    /// Requests this process holds.
    local: Arc<AtomicUsize>,
}

impl RedisApprovals {
    pub fn new(conn: RedisConn) -> RedisApprovals {
        RedisApprovals {
            conn,
            scripts: Arc::new(Scripts {
                hold: Script::new(HOLD),
                decide: Script::new(DECIDE),
                abandon: Script::new(ABANDON),
            }),
            local: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn hold_now(&self, held: Held, timeout: Duration) -> Result<Waiter, StateError> {
        let json = serde_json::to_string(&held)
            .map_err(|e| StateError::Unavailable(format!("approval entry: {e}")))?;
        let now = unix_ms();
        let ttl = millis(timeout);
        let mut call = self.scripts.hold.prepare_invoke();
        call.key(entry_key(&held.tenant, &held.id))
            .key(INDEX)
            .arg(json)
            .arg(ttl)
            .arg(now.saturating_add(ttl))
            .arg(member(&held.tenant, &held.id))
            .arg(now);
        let mut c = self.conn.conn();
        let _: i64 = self
            .conn
            .run("approval hold", call.invoke_async(&mut c))
            .await?;
        self.local.fetch_add(1, Ordering::Relaxed);
        let wait = RedisWait {
            conn: self.conn.clone(),
            scripts: self.scripts.clone(),
            local: self.local.clone(),
            tenant: held.tenant,
            id: held.id.clone(),
            deadline: Instant::now() + timeout,
            ended: false,
        };
        Ok(Waiter::new(held.id, Box::new(wait)))
    }

    async fn decide_now(
        &self,
        id: &str,
        verdict: Verdict,
        approver: &str,
    ) -> Result<Held, DecideError> {
        // Only ids of our own alphabet name a key.
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(DecideError::NotFound);
        }
        let mut c = self.conn.conn();
        let members: Vec<String> = self
            .conn
            .run("approval index", c.zrange(INDEX, 0, -1))
            .await?;
        let Some(tenant) = members
            .iter()
            .filter_map(|m| m.split_once(':'))
            .find(|(_, i)| *i == id)
            .map(|(t, _)| t.to_owned())
        else {
            return Err(DecideError::NotFound);
        };
        let entry: Option<String> = self
            .conn
            .run("approval entry", c.get(entry_key(&tenant, id)))
            .await?;
        let Some(held) = entry.and_then(|e| serde_json::from_str::<Held>(&e).ok()) else {
            return Err(DecideError::NotFound);
        };
        let (approve, grant) = match verdict {
            Verdict::Approve { grant } => (true, grant),
            Verdict::Deny => (false, None),
        };
        let answer = Answer {
            approve,
            grant_ms: grant.map(millis),
            approver: approver.to_owned(),
        };
        let answer = serde_json::to_string(&answer)
            .map_err(|e| DecideError::Unavailable(format!("approval verdict: {e}")))?;
        let mut call = self.scripts.decide.prepare_invoke();
        call.key(entry_key(&tenant, id))
            .key(verdict_key(&tenant, id))
            .key(INDEX)
            .key(grant_key(&tenant, &held.agent, &held.route))
            .arg(member(&tenant, id))
            .arg(answer)
            .arg(VERDICT_TTL_MS)
            .arg(grant.map_or(0, millis));
        let decided: i64 = self
            .conn
            .run("approval decide", call.invoke_async(&mut c))
            .await?;
        if decided == 1 {
            Ok(held)
        } else {
            Err(DecideError::NotFound)
        }
    }

    async fn list_now(&self) -> Result<Vec<Held>, StateError> {
        let now = unix_ms();
        let mut c = self.conn.conn();
        let members: Vec<(String, f64)> = self
            .conn
            .run(
                "approval list",
                c.zrangebyscore_withscores(INDEX, now, "+inf"),
            )
            .await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = members
            .iter()
            .filter_map(|(m, _)| m.split_once(':').map(|(t, id)| entry_key(t, id)))
            .collect();
        let entries: Vec<Option<String>> = self.conn.run("approval list", c.mget(&keys)).await?;
        let mut out = Vec::with_capacity(entries.len());
        for ((_, expiry), entry) in members.iter().zip(entries) {
            // Gone since the index was read: decided, timed out, or abandoned.
            let Some(mut held) = entry.and_then(|e| serde_json::from_str::<Held>(&e).ok()) else {
                continue;
            };
            // invariant: scores are the u64 millisecond expiries this module wrote.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let expiry = *expiry as u64;
            held.expires_in = expiry.saturating_sub(now) / 1000;
            out.push(held);
        }
        Ok(out)
    }

    async fn granted_now(
        &self,
        tenant: &str,
        agent: &str,
        route: &str,
    ) -> Result<bool, StateError> {
        let mut c = self.conn.conn();
        self.conn
            .run("approval grant", c.exists(grant_key(tenant, agent, route)))
            .await
    }
}

impl Approvals for RedisApprovals {
    fn granted<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        route: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(self.granted_now(tenant, agent, route))
    }

    fn hold(&self, held: Held, timeout: Duration) -> BoxFuture<'_, Result<Waiter, StateError>> {
        Box::pin(self.hold_now(held, timeout))
    }

    fn decide<'a>(
        &'a self,
        id: &'a str,
        verdict: Verdict,
        approver: &'a str,
    ) -> BoxFuture<'a, Result<Held, DecideError>> {
        Box::pin(self.decide_now(id, verdict, approver))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Held>, StateError>> {
        Box::pin(self.list_now())
    }

    fn pending(&self) -> usize {
        self.local.load(Ordering::Relaxed)
    }
}

/// The holding replica's side: poll for the verdict until the deadline.
struct RedisWait {
    conn: RedisConn,
    scripts: Arc<Scripts>,
    local: Arc<AtomicUsize>,
    tenant: String,
    id: String,
    deadline: Instant,
    /// The entry is gone (decided or removed): nothing to clean up on drop.
    ended: bool,
}

impl RedisWait {
    async fn poll_until_deadline(&mut self) -> Option<Ended> {
        let key = verdict_key(&self.tenant, &self.id);
        let mut warned = false;
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return None;
            }
            tokio::time::sleep(POLL.min(self.deadline - now)).await;
            let mut c = self.conn.conn();
            let got: Result<Option<String>, _> = self
                .conn
                .run(
                    "approval poll",
                    ::redis::cmd("GETDEL").arg(&key).query_async(&mut c),
                )
                .await;
            match got {
                Ok(Some(json)) => {
                    if let Ok(answer) = serde_json::from_str::<Answer>(&json) {
                        self.ended = true;
                        return Some(answer.ended());
                    }
                }
                Ok(None) => {}
                // Keep waiting: the verdict is still there when Redis is back,
                // and the deadline still ends the hold (a deny).
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(id = %self.id, error = %e, "approval poll failed; still waiting");
                }
                Err(_) => {}
            }
        }
    }

    /// Removes the entry; returns the verdict if one got there first.
    async fn abandon(
        conn: &RedisConn,
        scripts: &Scripts,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Ended>, StateError> {
        let mut call = scripts.abandon.prepare_invoke();
        call.key(entry_key(tenant, id))
            .key(verdict_key(tenant, id))
            .key(INDEX)
            .arg(member(tenant, id));
        let mut c = conn.conn();
        let verdict: Option<String> = conn
            .run("approval abandon", call.invoke_async(&mut c))
            .await?;
        Ok(verdict
            .and_then(|v| serde_json::from_str::<Answer>(&v).ok())
            .map(Answer::ended))
    }
}

impl Wait for RedisWait {
    fn wait(mut self: Box<Self>) -> BoxFuture<'static, Ended> {
        Box::pin(async move {
            if let Some(ended) = self.poll_until_deadline().await {
                return ended;
            }
            let ended = Self::abandon(&self.conn, &self.scripts, &self.tenant, &self.id).await;
            self.ended = ended.is_ok();
            match ended {
                Ok(Some(decided)) => decided,
                Ok(None) => Ended::TimedOut,
                Err(e) => {
                    // The entry's TTL removes it; the request is denied either way.
                    tracing::warn!(id = %self.id, error = %e, "could not remove a timed-out hold");
                    Ended::TimedOut
                }
            }
        })
    }
}

impl Drop for RedisWait {
    fn drop(&mut self) {
        self.local.fetch_sub(1, Ordering::Relaxed);
        if self.ended {
            return;
        }
        // The client went away while held: take the request off the list.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (conn, scripts) = (self.conn.clone(), self.scripts.clone());
        let (tenant, id) = (
            std::mem::take(&mut self.tenant),
            std::mem::take(&mut self.id),
        );
        handle.spawn(async move {
            if let Err(e) = RedisWait::abandon(&conn, &scripts, &tenant, &id).await {
                tracing::warn!(%id, error = %e, "could not remove an abandoned hold");
            }
        });
    }
}
