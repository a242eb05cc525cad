//! `portcullis vault …`: manage the provider keys the proxy injects (SPEC §9).
//!
//! A key is read from stdin, never from argv (argv is visible to every user
//! of the machine in `ps`). Nothing printed here ever shows more than a key's
//! last four characters.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use portcullis_certs::{MasterKey, Secret, Vault};
use zeroize::Zeroizing;

pub use portcullis_certs::MASTER_KEY_ENV;
/// The new master key for `rotate-master`, unless `--new-master-key-file` is given.
pub const NEW_MASTER_KEY_ENV: &str = "PORTCULLIS_NEW_MASTER_KEY";

#[derive(Subcommand, Debug)]
pub enum VaultCommand {
    /// Print a fresh random master key (base64). Keep it in a secret store and
    /// give it to the proxy as PORTCULLIS_MASTER_KEY or a key file (mode 0600).
    GenMasterKey,
    /// Store a provider key for a tenant, read from stdin (never from argv).
    /// Creates the vault file if it does not exist. A new version of the slot
    /// becomes the one injected; older versions stay until removed.
    Put {
        #[command(flatten)]
        vault: VaultArgs,
        /// The tenant that uses the key.
        tenant: String,
        /// The provider slot, as in a route's `inject_key` (e.g. openai, anthropic).
        provider: String,
        /// A label for the key within the slot.
        #[arg(long, default_value = "default")]
        key_id: String,
        /// Read AWS credentials instead: access key id, secret access key and an
        /// optional session token, one per line.
        #[arg(long)]
        aws: bool,
    },
    /// List the stored keys: tenant, provider, key id, version, and the last 4 characters only.
    List {
        #[command(flatten)]
        vault: VaultArgs,
    },
    /// Remove every version of a key.
    Rm {
        #[command(flatten)]
        vault: VaultArgs,
        tenant: String,
        provider: String,
        #[arg(long, default_value = "default")]
        key_id: String,
    },
    /// Re-encrypt every key under a new master key (from PORTCULLIS_NEW_MASTER_KEY
    /// or --new-master-key-file).
    RotateMaster {
        #[command(flatten)]
        vault: VaultArgs,
        /// File holding the new master key (base64, mode 0600).
        #[arg(long, value_name = "FILE")]
        new_master_key_file: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct VaultArgs {
    /// The vault file.
    #[arg(long, value_name = "FILE", default_value = ".portcullis/vault.json")]
    file: PathBuf,
    /// File holding the master key (base64, mode 0600). Default: PORTCULLIS_MASTER_KEY.
    #[arg(long, value_name = "FILE")]
    master_key_file: Option<PathBuf>,
}

impl VaultArgs {
    fn master(&self) -> Result<MasterKey> {
        let env = std::env::var(MASTER_KEY_ENV).ok().map(Zeroizing::new);
        Ok(MasterKey::from_env_or_file(
            env.as_deref().map(String::as_str),
            self.master_key_file.as_deref(),
        )?)
    }

    fn open(&self) -> Result<(Vault, MasterKey)> {
        let master = self.master()?;
        let vault = Vault::open(&self.file, &master)
            .with_context(|| format!("opening the vault {}", self.file.display()))?;
        Ok((vault, master))
    }
}

pub fn vault(cmd: VaultCommand) -> Result<ExitCode> {
    match cmd {
        VaultCommand::GenMasterKey => {
            println!("{}", MasterKey::generate().to_base64().as_str());
        }
        VaultCommand::Put {
            vault,
            tenant,
            provider,
            key_id,
            aws,
        } => {
            let master = vault.master()?;
            let mut store = if vault.file.exists() {
                Vault::open(&vault.file, &master)
                    .with_context(|| format!("opening the vault {}", vault.file.display()))?
            } else {
                if let Some(dir) = vault.file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                Vault::create(&vault.file, &master)?
            };
            let secret = read_secret(aws)?;
            let last4 = secret.last4();
            let version = store.put(&tenant, &provider, &key_id, secret)?;
            println!("stored {tenant}/{provider}/{key_id} version {version} ({last4})");
        }
        VaultCommand::List { vault } => {
            let (store, _) = vault.open()?;
            println!("TENANT\tPROVIDER\tKEY_ID\tVERSION\tACTIVE\tKIND\tKEY");
            for e in store.list() {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    e.tenant, e.provider, e.key_id, e.version, e.active, e.kind, e.last4
                );
            }
        }
        VaultCommand::Rm {
            vault,
            tenant,
            provider,
            key_id,
        } => {
            let (mut store, _) = vault.open()?;
            let n = store.rm(&tenant, &provider, &key_id)?;
            if n == 0 {
                println!("{tenant}/{provider}/{key_id} was already removed");
            } else {
                println!("removed {n} version(s) of {tenant}/{provider}/{key_id}");
            }
        }
        VaultCommand::RotateMaster {
            vault,
            new_master_key_file,
        } => {
            let (mut store, _) = vault.open()?;
            let env = std::env::var(NEW_MASTER_KEY_ENV).ok().map(Zeroizing::new);
            let new = match (env.as_deref(), new_master_key_file.as_deref()) {
                (_, Some(path)) => MasterKey::from_file(path)?,
                (Some(text), None) => MasterKey::from_base64(text)?,
                (None, None) => bail!(
                    "give the new master key as {NEW_MASTER_KEY_ENV} or --new-master-key-file"
                ),
            };
            store.rotate_master(&new)?;
            println!(
                "re-encrypted {} key(s) under the new master key; the old one no longer opens the vault",
                store.list().len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The key from stdin, trailing newline removed. Refuses an empty key.
fn read_secret(aws: bool) -> Result<Secret> {
    let mut input = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the key from stdin")?;
    if aws {
        let mut lines = input.lines().map(str::trim).filter(|l| !l.is_empty());
        let (Some(id), Some(secret)) = (lines.next(), lines.next()) else {
            bail!(
                "--aws reads the access key id and the secret access key, one per line, from stdin"
            );
        };
        let session = lines.next();
        return Ok(Secret::aws(id, secret, session.map(str::to_owned)));
    }
    let key = input.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        bail!("no key on stdin: pipe it in, e.g. `printf %s \"$KEY\" | portcullis vault put TENANT PROVIDER`");
    }
    Ok(Secret::api_key(key.as_bytes().to_vec()))
}
