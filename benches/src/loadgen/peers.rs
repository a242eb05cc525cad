//! The peers a user would otherwise pick, each started as it would be deployed
//! for interception, pinned like Portcullis: Squid ssl-bump (bump all) and
//! mitmproxy (`mitmdump`), plus the bare tunnel as the floor.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::args::{Args, Peer};
use super::origin::{Origin, HOST};
use super::target::{command, free_port, logged, wait_ready, Kind, Target};

pub fn start(peer: Peer, a: &Args, origin: &Origin) -> Result<Target> {
    let started = match peer {
        Peer::Tunnel => tunnel(a, origin),
        Peer::Squid => squid(a, origin),
        Peer::Mitmproxy => mitmproxy(a, origin),
    };
    started.with_context(|| format!("starting the {} peer", peer.name()))
}

fn tunnel(a: &Args, origin: &Origin) -> Result<Target> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut child = command(&exe, a.pin)
        .arg("--serve-tunnel")
        .arg(origin.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("tunnel stdout")?;
    let mut addr: Option<SocketAddr> = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(x) = line.strip_prefix("# listening: ") {
            addr = x.parse().ok();
        }
        if line == "# ready" {
            break;
        }
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the tunnel did not print its address");
    };
    // Through a bare tunnel the client talks TLS to the origin itself.
    let ca = origin.pki.ca_pem_path.clone();
    Ok(Target::new(Kind::Peer(Peer::Tunnel), child, addr, ca, dir))
}

/// Squid 5 with `ssl_bump peek step1` then `bump all`: it reads the SNI, connects
/// and verifies upstream, and mints a leaf mimicking the origin's. No disk cache, no
/// access log, one worker (`-N`: no daemon, no kids), 64 MiB of minted leaves in memory.
fn squid(a: &Args, origin: &Origin) -> Result<Target> {
    for (bin, what) in [(&a.squid, "--squid-bin"), (&a.certgen, "--certgen-bin")] {
        if !bin.is_file() {
            bail!(
                "{} not found: apt-get install squid-openssl (tests/run.sh does), or pass {what}",
                bin.display()
            );
        }
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (ca_pem, ca_key) = mint_ca("Portcullis bench Squid CA")?;
    std::fs::write(d.join("ca.pem"), &ca_pem)?;
    std::fs::write(d.join("ca.key"), ca_key)?;
    // Squid drops to its own user: every file it reads lives in its own directory.
    std::fs::copy(&origin.pki.ca_pem_path, d.join("origin-ca.pem"))?;
    std::fs::write(d.join("hosts"), format!("127.0.0.1 {HOST}\n"))?;
    let db = d.join("ssl_db");
    let init = Command::new(&a.certgen)
        .args(["-c", "-s"])
        .arg(&db)
        .args(["-M", "64MB"])
        .stdout(Stdio::null())
        .output()
        .context("security_file_certgen -c")?;
    if !init.status.success() {
        bail!(
            "security_file_certgen -c failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let port = free_port()?;
    let user = if rustix::process::geteuid().is_root() {
        let (uid, gid) = system_user("proxy").context(
            "squid runs as the `proxy` user, which squid-openssl's package creates; none here",
        )?;
        chown_tree(d, uid, gid)?;
        "cache_effective_user proxy\n"
    } else {
        ""
    };
    let certgen = a.certgen.display();
    let p = d.display();
    let conf = format!(
        "http_port 127.0.0.1:{port} ssl-bump tls-cert={p}/ca.pem tls-key={p}/ca.key \
         generate-host-certificates=on dynamic_cert_mem_cache_size=64MB
sslcrtd_program {certgen} -s {p}/ssl_db -M 64MB
sslcrtd_children 8 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={p}/origin-ca.pem
hosts_file {p}/hosts
http_access allow localhost
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {p}/cache.log
pid_filename none
coredump_dir {p}
netdb_filename none
pinger_enable off
visible_hostname portcullis-bench
shutdown_lifetime 0 seconds
max_filedescriptors 65536
workers 1
{user}"
    );
    let conf_path = d.join("squid.conf");
    std::fs::write(&conf_path, conf)?;
    let log = d.join("squid.out");
    let mut cmd = command(&a.squid, a.pin);
    cmd.arg("-N").arg("-f").arg(&conf_path);
    logged(&mut cmd, &log)?;
    let mut child = cmd.spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = wait_ready(&mut child, addr, &d.join("cache.log"), || true) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let ca = d.join("ca.pem");
    Ok(Target::new(Kind::Peer(Peer::Squid), child, addr, ca, dir))
}

/// `mitmdump` with its defaults (it connects upstream before it answers the client,
/// and buffers each body), quiet, its CA in a fresh confdir, trusting the origin's CA.
fn mitmproxy(a: &Args, origin: &Origin) -> Result<Target> {
    if !a.mitmdump.is_file() {
        bail!(
            "{} not found: tests/run.sh makes the venv .venv-peers (or: python3 -m venv V && \
             V/bin/pip install -r benches/peers-requirements.txt); or pass --mitmdump-bin",
            a.mitmdump.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let conf = d.join("conf");
    std::fs::create_dir(&conf)?;
    let port = free_port()?;
    let log = d.join("mitmdump.out");
    let mut cmd = command(&a.mitmdump, a.pin);
    cmd.args(["-q", "--listen-host", "127.0.0.1", "--listen-port"])
        .arg(port.to_string())
        .arg("--set")
        .arg(format!("confdir={}", conf.display()))
        .arg("--set")
        .arg(format!(
            "ssl_verify_upstream_trusted_ca={}",
            origin.pki.ca_pem_path.display()
        ));
    logged(&mut cmd, &log)?;
    let mut child = cmd.spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ca = conf.join("mitmproxy-ca-cert.pem");
    if let Err(e) = wait_ready(&mut child, addr, &log, || ca.is_file()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(Target::new(
        Kind::Peer(Peer::Mitmproxy),
        child,
        addr,
        ca,
        dir,
    ))
}

/// A self-signed CA: (certificate PEM, PKCS#8 key PEM).
fn mint_ca(name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// (uid, gid) of a user in `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() == Some(&name) {
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        } else {
            None
        }
    })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}
