//! The single writer: start-up recovery, then a loop that drains the queue into one write and
//! one `fdatasync` per batch (group commit), checkpoints, and rotates segments.
//!
//! All file work is synchronous code ([`WriterState`]); the async shell ([`run`]) collects
//! commands and fires timers, and hands the state to `spawn_blocking` once per batch that
//! may sync, checkpoint, rotate or recover. A light batch (`sync = batch`, appends only,
//! nothing due: one buffered write) runs on the shell itself. While a batch is being synced, new appends pile up in the
//! channel and form the next batch.

mod checkpoint;
mod recovery;
mod segment;
mod state;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::shared::{Cmd, Shared};

pub(crate) use state::{Hooks, WriterState};
// The handle's tests build a fake wall clock for `Hooks`.
#[cfg(test)]
pub(crate) use state::Clock;

/// Most commands taken into one batch, so one write stays bounded.
const MAX_BATCH: usize = 4096;

/// The async shell around [`WriterState`]: wait for a command or a timer, drain a batch, and
/// run it on a blocking thread.
pub(crate) async fn run(mut state: WriterState, mut rx: mpsc::Receiver<Cmd>, shared: Arc<Shared>) {
    loop {
        let deadline = state.next_deadline();
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            () = sleep_until(deadline) => {
                let now = Instant::now();
                match on_blocking_thread(state, &shared, move |s| s.tick(now)).await {
                    Some(s) => state = s,
                    None => return,
                }
                continue;
            }
        };
        let Some(first) = first else {
            // Every handle was dropped without shutdown.
            let _ = on_blocking_thread(state, &shared, WriterState::close).await;
            return;
        };
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        // The queue has room again.
        shared.saturated.store(false, Ordering::SeqCst);
        let now = Instant::now();
        if state.is_light(&batch, now) {
            state.process(batch, now);
            if state.stopped() {
                return;
            }
            continue;
        }
        match on_blocking_thread(state, &shared, move |s| s.process(batch, now)).await {
            Some(s) => state = s,
            None => return,
        }
        if state.stopped() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn on_blocking_thread(
    mut state: WriterState,
    shared: &Shared,
    f: impl FnOnce(&mut WriterState) + Send + 'static,
) -> Option<WriterState> {
    match tokio::task::spawn_blocking(move || {
        f(&mut state);
        state
    })
    .await
    {
        Ok(state) => Some(state),
        Err(err) => {
            let reason = format!("ledger writer stopped unexpectedly: {err}");
            tracing::error!(error = %reason, "ledger writer lost; refusing appends (fail closed)");
            shared.set_fatal(reason);
            None
        }
    }
}
