//! Shared state on a Redis server (SPEC §8, §14): budgets, rate limits and
//! approvals that several replicas see as one.
//!
//! Key layout. Everything a tenant owns is under `portcullis:{tenant}:`:
//! - `…:{scope}:{id}:tokens:{day}`: tokens charged today (UTC day number);
//! - `…:{scope}:{id}:rpm:{minute}`: requests in this minute window;
//! - `…:approval:{id}`: a held request's content-free facts (JSON), for as
//!   long as it is held, and `…:approval:{id}:verdict`: the approver's answer
//!   until the holding replica picks it up;
//! - `…:grant:{agent}:{route}`: an approval's grant, until it expires.
//!
//! One key is not under a tenant: `portcullis:approvals`, a sorted set of
//! `{tenant}:{id}` by hold expiry, so that any replica can list every held
//! request without scanning the keyspace. Every counter and entry has a TTL,
//! so the windows and abandoned holds clean themselves up.
//!
//! Every change that must be atomic is one Lua script. Every command runs
//! under `[state] timeout`; an error or a timeout is a [`StateError`], and the
//! caller fails closed. The [`ConnectionManager`] reconnects by itself, so a
//! Redis that comes back is used again without a restart.

mod approvals;
mod budgets;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, RedisResult};
use portcullis_rules::RedisUrl;

use super::StateError;

pub use approvals::RedisApprovals;
pub use budgets::RedisBudgets;

/// A handle on the Redis server: cheap to clone, shared by every store.
#[derive(Clone)]
pub struct RedisConn {
    manager: ConnectionManager,
    timeout: Duration,
    /// Shown in errors: the URL with its credentials replaced by `***`.
    shown: String,
    /// Scrubbed from any error text the client library produces.
    password: Option<String>,
}

impl RedisConn {
    /// A lazy connection: nothing is sent until the first command. Must be
    /// called inside the tokio runtime.
    pub fn open(url: &RedisUrl, timeout: Duration) -> Result<RedisConn, StateError> {
        let shown = url.to_string();
        let password = url.password().map(str::to_owned);
        let scrub = |e: RedisError| {
            StateError::Unavailable(scrubbed(&format!("{shown}: {e}"), password.as_deref()))
        };
        let client = ::redis::Client::open(url.expose()).map_err(scrub)?;
        // Few, quick reconnect attempts: a request never waits past `timeout`
        // anyway, and a server that comes back should be used again at once.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(scrub)?;
        Ok(RedisConn {
            manager,
            timeout,
            shown,
            password,
        })
    }

    /// A connection to run commands on (a clone of the multiplexed one).
    fn conn(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Runs one command (or script) under the timeout; `what` names it in errors.
    async fn run<T>(
        &self,
        what: &str,
        command: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StateError::Unavailable(scrubbed(
                &format!("{what} on {}: {e}", self.shown),
                self.password.as_deref(),
            ))),
            Err(_) => Err(StateError::Unavailable(format!(
                "{what} on {}: no answer within {:?}",
                self.shown, self.timeout
            ))),
        }
    }

    /// `PING`, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StateError> {
        let mut c = self.conn();
        let pong: String = self
            .run("PING", ::redis::cmd("PING").query_async(&mut c))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StateError::Unavailable(format!(
                "PING on {}: unexpected answer",
                self.shown
            )))
        }
    }
}

/// `text` without `secret` in it.
fn scrubbed(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_owned(),
    }
}

/// Milliseconds since the Unix epoch, by this process's clock.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
