//! A `portcullis run` child with the bench's policy: the route has
//! classification and both detectors on.

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use portcullis_tests::{sha256_hex, AGENT, TOKEN};

use super::origin::{Origin, HOST, MINT_DOMAIN};
use super::target::{command, Kind, Target};

pub fn start(bin: &Path, origin: &Origin, sync: &'static str, pin: bool) -> Result<Target> {
    let dir = tempfile::tempdir()?;
    let cfg = format!(
        r#"version = 1
[[listeners]]
name = "forward"
bind = "127.0.0.1:0"
auth = "basic"
[admin]
bind = "127.0.0.1:0"
[limits]
# The idle workload holds thousands of connections of one agent, all from 127.0.0.1.
max_connections = 1000000
max_connections_per_agent = 1000000
max_connections_per_peer = 1000000
[ca]
dir = "ca"
[ledger]
dir = "ledger"
sync = "{sync}"
[upstream]
extra_ca = ["{origin_ca}"]
resolve = ["{HOST}:443:{addr}"]
[[tenants]]
id = "acme"
[[agents]]
id = "{AGENT}"
tenant = "acme"
token_sha256 = "{token}"
[[routes]]
id = "openai"
action = "allow"
tenants = ["acme"]
hosts = ["{HOST}"]
detectors = {{ injection = "block", secrets = "block" }}
[[routes]]
id = "mint"
action = "allow"
tenants = ["acme"]
hosts = ["*.{MINT_DOMAIN}"]
"#,
        origin_ca = origin.pki.ca_pem_path.display(),
        addr = origin.addr,
        token = sha256_hex(TOKEN),
    );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, cfg)?;
    let mut child = command(bin, pin)
        .args(["run", "--config"])
        .arg(&path)
        .env("PORTCULLIS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it: cargo build --release -p portcullis)",
                bin.display()
            )
        })?;
    let stdout = child.stdout.take().context("proxy stdout")?;
    let mut addr = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix("# listening: forward=") {
            addr = a.parse().ok();
        }
        if line == "# ready" {
            break;
        }
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{} did not print its address", bin.display());
    };
    let ca = dir.path().join("ca/ca.pem");
    Ok(Target::new(Kind::Portcullis(sync), child, addr, ca, dir))
}
