//! `portcullis webhook verify`: what a receiver does with a Portcullis webhook,
//! as a command, so an operator can check one by hand.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Subcommand;
use zeroize::Zeroizing;

use crate::webhook::{verify, DEFAULT_TOLERANCE};

#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Check a webhook's signature: reads the body on stdin, exits 0 when the
    /// signature is valid and fresh, 1 when it is not.
    Verify {
        /// The environment variable that holds the signing secret (the tenant's
        /// `webhook` key in the vault).
        #[arg(long, value_name = "VAR")]
        secret_env: String,
        /// The X-Portcullis-Signature header value: t=<unix>,v1=<hex>.
        #[arg(long, value_name = "VALUE")]
        header: String,
        /// How old (or new) a timestamp may be, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TOLERANCE.as_secs())]
        tolerance: u64,
    },
}

pub fn webhook(cmd: WebhookCommand) -> Result<ExitCode> {
    let WebhookCommand::Verify {
        secret_env,
        header,
        tolerance,
    } = cmd;
    let secret = Zeroizing::new(
        std::env::var(&secret_env)
            .with_context(|| format!("the secret variable {secret_env} is not set"))?,
    );
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .context("reading the body from stdin")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = header
        .strip_prefix("X-Portcullis-Signature:")
        .unwrap_or(&header)
        .trim();
    match verify(
        secret.as_bytes(),
        header,
        &body,
        now,
        Duration::from_secs(tolerance),
    ) {
        Ok(()) => {
            println!("valid: the signature matches and is fresh");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("invalid: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
