//! `portcullis approvals …`: list and decide held requests through the admin API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// List held requests: id, tenant, agent, route, method, host, path, model, size.
    List(AdminArgs),
    /// Let a held request through. With --grant for:10m, later requests of the
    /// same agent on the same route pass without a hold for 10 minutes.
    Approve {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        #[arg(long, default_value = "once", value_name = "once|for:DURATION")]
        grant: String,
    },
    /// Refuse a held request (the agent gets 403 approval_denied).
    Deny {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The admin API address.
    #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR")]
    admin: SocketAddr,
    /// The environment variable holding the admin bearer token.
    #[arg(long, default_value = "PORTCULLIS_ADMIN_TOKEN", value_name = "VAR")]
    token_env: String,
}

pub fn approvals(cmd: ApprovalsCommand) -> Result<ExitCode> {
    let (status, body) = match &cmd {
        ApprovalsCommand::List(a) => call(a, "GET", "/v1/approvals", "")?,
        ApprovalsCommand::Approve { admin, id, grant } => {
            let body = serde_json::json!({"decision": "approve", "grant": grant}).to_string();
            call(admin, "POST", &format!("/v1/approvals/{id}"), &body)?
        }
        ApprovalsCommand::Deny { admin, id } => {
            let body = serde_json::json!({"decision": "deny"}).to_string();
            call(admin, "POST", &format!("/v1/approvals/{id}"), &body)?
        }
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status != 200 {
        eprintln!(
            "portcullis: the admin API answered {status}: {}",
            v["error"].as_str().unwrap_or(body.trim())
        );
        return Ok(ExitCode::FAILURE);
    }
    match cmd {
        ApprovalsCommand::List(_) => {
            println!("ID\tTENANT\tAGENT\tROUTE\tMETHOD\tHOST\tPATH\tMODEL\tSIZE\tEXPIRES_IN");
            for h in v["approvals"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}s",
                    h["id"].as_str().unwrap_or(""),
                    h["tenant"].as_str().unwrap_or(""),
                    h["agent"].as_str().unwrap_or(""),
                    h["route"].as_str().unwrap_or(""),
                    h["method"].as_str().unwrap_or(""),
                    h["host"].as_str().unwrap_or(""),
                    h["path_template"].as_str().unwrap_or(""),
                    h["model"].as_str().unwrap_or("-"),
                    h["size"],
                    h["expires_in"],
                );
            }
        }
        _ => println!("{}", v["decision"].as_str().unwrap_or("done")),
    }
    Ok(ExitCode::SUCCESS)
}

/// One HTTP/1.1 request to the admin API on loopback; returns status and body.
fn call(a: &AdminArgs, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let token = Zeroizing::new(
        std::env::var(&a.token_env)
            .with_context(|| format!("set {} to the admin bearer token", a.token_env))?,
    );
    let mut s = TcpStream::connect_timeout(&a.admin, Duration::from_secs(5))
        .with_context(|| format!("connecting to the admin API at {}", a.admin))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        a.admin,
        token.as_str(),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("the admin API sent no complete response");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}
