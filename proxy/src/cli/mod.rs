//! The `portcullis` command line. `anyhow` lives here and in `main.rs` only.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use portcullis_certs::{CaError, CertificateAuthority};
use portcullis_rules::{
    parse_config, Config, ListenerAuth, ListenerMode, ResolveEntry, EMBEDDED_DEFAULT,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::app::{resolve_path, start, Settings};

mod approvals;
mod vault;
mod webhook;

/// Exit code for an invalid config file (EX_CONFIG-style, as linkerd does).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "Portcullis: the egress proxy for AI agents",
    long_about = "Portcullis is the only network path out of an agent runtime. Agents set HTTPS_PROXY \
and trust the Portcullis CA; Portcullis authenticates them, sees inside their TLS, allows only the \
routes they have, and streams responses back.\n\nWith no subcommand it runs the proxy (`portcullis run`) \
on the embedded default policy: listen on 127.0.0.1:8080, allow the well-known model provider APIs, \
deny everything else.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate a config file and report every error with file:line:col.
    Check {
        /// The config file to check.
        file: PathBuf,
    },
    /// Show how the policy classifies and decides a request, without sending anything.
    Explain {
        /// Config file (default: the embedded default).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// The agent making the request.
        #[arg(long, value_name = "ID")]
        agent: String,
        /// HTTP method, e.g. POST.
        method: String,
        /// Full URL, e.g. https://api.openai.com/v1/chat/completions.
        url: String,
        /// Request body (JSON) to classify and inspect.
        #[arg(long, value_name = "FILE")]
        body: Option<PathBuf>,
    },
    /// Manage the local CA that signs intercepted connections.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Agent helpers.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Verify the tamper-evident ledger and export its checkpoint key.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Manage the provider keys the proxy injects (stored encrypted with AES-256-GCM).
    #[command(subcommand)]
    Vault(vault::VaultCommand),
    /// Webhook helpers for receivers.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// List and decide requests held for approval (through the admin API).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
}

#[derive(Subcommand, Debug)]
enum LedgerCommand {
    /// Check a ledger: every hash link, every checkpoint signature, no truncation.
    /// Exits 0 when intact, 1 on tampering (naming the first bad record), 2 on usage or I/O errors.
    Verify {
        /// A segment file, a ledger directory, or a directory of replica ledger directories.
        path: PathBuf,
        /// The checkpoint public key (hex, from `portcullis ledger pubkey`). Without it the key
        /// stored beside the log is used, which proves less.
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
        /// A checkpoint line kept elsewhere (e.g. from the webhook sink): detects a rolled-back log.
        #[arg(long, value_name = "FILE")]
        trusted_checkpoint: Option<PathBuf>,
        /// Treat records after the last checkpoint (unanchored) as an error.
        #[arg(long)]
        strict: bool,
    },
    /// Print the Ed25519 public key that signs checkpoints (hex).
    Pubkey {
        /// The signing key file (default: the CA directory's ledger-signing.key).
        #[arg(
            long,
            value_name = "FILE",
            default_value = ".portcullis/ca/ledger-signing.key"
        )]
        key: PathBuf,
    },
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// Config file (TOML). Without it, the embedded default is used.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Extra CA to trust for upstream TLS (PEM). Repeatable. Adds to [upstream] extra_ca.
    #[arg(long = "upstream-ca", value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,
    /// Pin HOST:PORT to ADDR:PORT, skipping DNS (split-horizon, tests). Repeatable.
    #[arg(long, value_name = "HOST:PORT:ADDR:PORT")]
    resolve: Vec<String>,
    /// Override the bind address of the first listener (e.g. 127.0.0.1:0).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Override the admin API's bind address (default from [admin], 127.0.0.1:9901).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Log lines on stderr: text for people, or json (one object per line, with
    /// the ledger's field names) for log pipelines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PORTCULLIS_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create the CA (ECDSA P-256; key written mode 0600). Never overwrites.
    Init(CaDir),
    /// Print the CA certificate (PEM) to stdout.
    Export(CaDir),
    /// Show the CA's subject, fingerprint and the lines that make clients trust it.
    Show(CaDir),
}

#[derive(Args, Debug)]
struct CaDir {
    /// CA directory.
    #[arg(long, default_value = ".portcullis/ca")]
    dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Read a token on stdin and print the token_sha256 value for [[agents]].
    HashToken,
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        None => cli.run.log_format,
        Some(Command::Run(args)) => args.log_format,
        Some(_) => LogFormat::Text,
    };
    init_tracing(format);
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Check { file }) => check(&file),
        Some(Command::Explain {
            config,
            agent,
            method,
            url,
            body,
        }) => explain(config.as_deref(), &agent, &method, &url, body.as_deref()),
        Some(Command::Ca(c)) => ca(c),
        Some(Command::Agent(AgentCommand::HashToken)) => hash_token(),
        Some(Command::Ledger(c)) => Ok(ledger(c)),
        Some(Command::Vault(c)) => vault::vault(c),
        Some(Command::Webhook(c)) => webhook::webhook(c),
        Some(Command::Approvals(c)) => approvals::approvals(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Reads and validates a config, printing every error. `Err(code)` = exit now.
fn load_config(path: Option<&Path>) -> Result<(Config, PathBuf), ExitCode> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let Some(path) = path else {
        return match parse_config("<embedded default>", EMBEDDED_DEFAULT) {
            Ok(c) => Ok((c, cwd)),
            Err(e) => {
                eprintln!("{e}");
                Err(ExitCode::from(EXIT_BAD_CONFIG))
            }
        };
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis: cannot read {}: {e}", path.display());
            return Err(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    match parse_config(&path.display().to_string(), &text) {
        Ok(c) => {
            let base = path
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .map(|p| resolve_path(&cwd, p))
                .unwrap_or(cwd);
            Ok((c, base))
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "portcullis: {} error(s) in {}",
                e.errors.len(),
                path.display()
            );
            Err(ExitCode::from(EXIT_BAD_CONFIG))
        }
    }
}

fn check(file: &Path) -> Result<ExitCode> {
    match load_config(Some(file)) {
        Ok((cfg, _)) => {
            println!(
                "{}: ok ({} listener(s), {} route(s), policy {})",
                file.display(),
                cfg.listeners.len(),
                cfg.policy.routes().len(),
                &cfg.policy.hash_hex()[..12]
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

fn explain(
    config: Option<&Path>,
    agent: &str,
    method: &str,
    url: &str,
    body: Option<&Path>,
) -> Result<ExitCode> {
    let (cfg, _) = match load_config(config) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let body = match body {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    print!(
        "{}",
        portcullis_rules::explain(&cfg.policy, agent, method, url, body.as_deref())
    );
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let (mut cfg, base) = match load_config(args.config.as_deref()) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let cwd = std::env::current_dir().context("current directory")?;
    for ca in args.upstream_ca {
        cfg.upstream.extra_ca.push(resolve_path(&cwd, &ca));
    }
    for r in &args.resolve {
        match ResolveEntry::parse(r) {
            Ok(e) => cfg.upstream.resolve.push(e),
            Err(e) => {
                eprintln!("portcullis: --resolve {r}: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    if let Some(addr) = args.admin {
        cfg.admin.bind = addr;
    }
    if let Some(addr) = args.listen {
        match cfg.listeners.first_mut() {
            Some(l) => l.bind = addr,
            None => anyhow::bail!("--listen given but the config has no listener"),
        }
    }
    let config_path = args
        .config
        .as_ref()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    let auth: Vec<(String, ListenerMode, ListenerAuth)> = cfg
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.mode, l.auth.clone()))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let stop = StopSignals::listen();
        let proxy = start(Settings {
            config: cfg,
            base_dir: base,
            config_path,
            master_key: std::env::var(vault::MASTER_KEY_ENV)
                .ok()
                .map(Zeroizing::new),
        })
        .await?;
        print_banner(&proxy, &auth);
        stop.wait().await;
        tracing::info!("shutting down: no new connections; draining");
        proxy.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_banner(proxy: &crate::RunningProxy, auth: &[(String, ListenerMode, ListenerAuth)]) {
    let ca =
        std::fs::canonicalize(&proxy.ca_cert_path).unwrap_or_else(|_| proxy.ca_cert_path.clone());
    let ca = ca.display();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "# Portcullis is running. Paste these lines into the agent's shell:"
    );
    // The first forward listener is the one HTTPS_PROXY names.
    let forward = auth
        .iter()
        .find(|(_, mode, _)| *mode == ListenerMode::Forward)
        .and_then(|(name, _, a)| Some((proxy.addr(name)?, a)));
    if let Some((addr, a)) = forward {
        let creds = match a {
            ListenerAuth::None { .. } => String::new(),
            _ => "AGENT_ID:TOKEN@".to_owned(),
        };
        let _ = writeln!(out, "export HTTPS_PROXY=http://{creds}{addr}");
        let _ = writeln!(out, "export HTTP_PROXY=http://{creds}{addr}");
    }
    for var in [
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "CARGO_HTTP_CAINFO",
    ] {
        let _ = writeln!(out, "export {var}={ca}");
    }
    for (name, addr) in &proxy.listeners {
        let _ = writeln!(out, "# listening: {name}={addr}");
        if auth
            .iter()
            .any(|(n, m, _)| n == name && *m == ListenerMode::Transparent)
        {
            let _ = writeln!(
                out,
                "# transparent: {name} takes connections redirected with iptables -j REDIRECT --to-ports {}",
                addr.port()
            );
        }
    }
    if let Some(addr) = proxy.dns_addr {
        let _ = writeln!(out, "# dns: {addr} (udp)");
    }
    let _ = writeln!(out, "# admin: {}", proxy.admin_addr);
    let _ = writeln!(out, "# ready");
    let _ = out.flush();
}

/// SIGTERM and SIGINT, listened for from before the proxy says it is ready:
/// a supervisor that stops it right after `# ready` gets a graceful
/// shutdown, not the default signal action.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn listen() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => {}
                _ = recv(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn ca(cmd: CaCommand) -> Result<ExitCode> {
    match cmd {
        CaCommand::Init(d) => match CertificateAuthority::init(&d.dir) {
            Ok(ca) => {
                println!("created CA in {}", d.dir.display());
                print_ca(&ca, &d.dir);
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ CaError::AlreadyExists { .. }) => {
                eprintln!("portcullis: {e}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        },
        CaCommand::Export(d) => {
            let ca = CertificateAuthority::load(&d.dir)?;
            print!("{}", ca.cert_pem());
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Show(d) => {
            let ca = CertificateAuthority::load(&d.dir)?;
            print_ca(&ca, &d.dir);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_ca(ca: &CertificateAuthority, dir: &Path) {
    let path = CertificateAuthority::cert_path(dir);
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let not_after: time::OffsetDateTime = ca.not_after().into();
    println!("subject:     {}", ca.subject());
    println!("sha256:      {}", ca.fingerprint_sha256());
    println!("not after:   {not_after}");
    println!("certificate: {}", path.display());
    println!("# Make clients trust it:");
    for var in [
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "CARGO_HTTP_CAINFO",
    ] {
        println!("export {var}={}", path.display());
    }
}

fn ledger(cmd: LedgerCommand) -> ExitCode {
    match cmd {
        LedgerCommand::Verify {
            path,
            pubkey,
            trusted_checkpoint,
            strict,
        } => {
            let opts = portcullis_ledger::VerifyOptions {
                pubkey,
                trusted_checkpoint,
                strict,
            };
            match portcullis_ledger::verify(&path, &opts) {
                Ok(outcome) => {
                    if outcome.is_intact() {
                        println!("{outcome}");
                    } else {
                        eprintln!("{outcome}");
                    }
                    ExitCode::from(u8::try_from(outcome.exit_code()).unwrap_or(1))
                }
                Err(e) => {
                    eprintln!("portcullis: ledger verify: {}", e.full_message());
                    ExitCode::from(2)
                }
            }
        }
        LedgerCommand::Pubkey { key } => {
            match portcullis_ledger::public_key_from_signing_key_file(&key) {
                Ok(hex) => {
                    println!("{hex}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis: {}", e.full_message());
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn hash_token() -> Result<ExitCode> {
    let mut buf = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut buf)
        .context("reading the token from stdin")?;
    let token = buf.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        eprintln!("portcullis: empty token on stdin (try: printf %s \"$TOKEN\" | portcullis agent hash-token)");
        return Ok(ExitCode::from(2));
    }
    println!("{}", hex::encode(Sha256::digest(token.as_bytes())));
    Ok(ExitCode::SUCCESS)
}
