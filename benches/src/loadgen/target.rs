//! A proxy under measurement: a child process (and whatever it forks), its
//! address, the CA a client must trust through it, and its CPU and memory
//! read from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portcullis_tests::{basic, AGENT, TOKEN};

use super::args::Peer;
use super::client::{connector, Authority, Connect, Via};
use super::origin::{Origin, HOST};
use super::workload::Workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Portcullis with this ledger `sync` mode.
    Portcullis(&'static str),
    Peer(Peer),
}

pub struct Target {
    pub kind: Kind,
    child: Child,
    pub addr: SocketAddr,
    /// The CA a client trusts through this target (the origin's own for the tunnel).
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// CPU seconds (user + system) and peak resident memory, summed over a process tree.
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub cpu: f64,
    pub hwm_kib: u64,
}

impl Target {
    pub fn new(
        kind: Kind,
        child: Child,
        addr: SocketAddr,
        ca: PathBuf,
        dir: tempfile::TempDir,
    ) -> Target {
        Target {
            kind,
            child,
            addr,
            ca,
            _dir: dir,
        }
    }

    pub fn label(&self) -> String {
        match self.kind {
            Kind::Portcullis(sync) => format!("sync={sync}"),
            Kind::Peer(p) => p.name().to_owned(),
        }
    }

    /// The short name in ratio rows: `always/squid`.
    pub fn short(&self) -> &'static str {
        match self.kind {
            Kind::Portcullis(sync) => sync,
            Kind::Peer(p) => p.name(),
        }
    }

    pub fn is_portcullis(&self) -> bool {
        matches!(self.kind, Kind::Portcullis(_))
    }

    /// Why this target does not run `w`, if it does not.
    pub fn skips(&self, w: Workload, h2: bool) -> Option<&'static str> {
        match (self.kind, w) {
            (Kind::Peer(Peer::Squid), _) if h2 => Some("squid does not speak HTTP/2 to clients"),
            (Kind::Peer(Peer::Tunnel), Workload::Mint) => {
                Some("a bare tunnel mints nothing (the client talks TLS to the origin)")
            }
            _ => None,
        }
    }

    /// How the client reaches the origin through this target for workload `w`.
    pub fn via(&self, origin: &Origin, w: Workload, h2: bool) -> Result<Via> {
        let port = origin.addr.port();
        let (authority, auth, host_header) = match self.kind {
            // Portcullis resolves the name itself (`[upstream] resolve`).
            Kind::Portcullis(_) => (Authority::Host(443), Some(basic(AGENT, TOKEN)), HOST),
            // The tunnel dials the origin whatever the CONNECT names.
            Kind::Peer(Peer::Tunnel) => (Authority::Host(443), None, HOST),
            // Squid resolves `api.openai.com` through its hosts_file, and serves a bumped
            // request only on the pinned connection whose host:port the Host header names.
            // The mint hosts are not in that file: they go by address, named in the SNI.
            Kind::Peer(Peer::Squid) if w == Workload::Mint => {
                (Authority::Addr(origin.addr), None, HOST)
            }
            Kind::Peer(Peer::Squid) => (Authority::Host(port), None, ""),
            // mitmproxy cannot be told how to resolve: by address, the name in the SNI.
            Kind::Peer(Peer::Mitmproxy) => (Authority::Addr(origin.addr), None, HOST),
        };
        let host_header = if host_header.is_empty() {
            format!("{HOST}:{port}")
        } else {
            host_header.to_owned()
        };
        Ok(Via {
            dial: self.addr,
            connect: Some(Connect { authority, auth }),
            tls: connector(&self.ca, h2)?,
            host_header,
        })
    }

    fn tree(&self) -> Vec<u32> {
        process_tree(self.child.id())
    }

    /// CPU and peak RSS so far, summed over the process and its descendants.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for pid in self.tree() {
            u.cpu += cpu_secs(pid);
            u.hwm_kib += status_kib(pid, "VmHWM:");
        }
        u
    }

    /// Resident memory now, in KiB, summed over the process tree.
    pub fn rss(&self) -> u64 {
        self.tree().iter().map(|p| status_kib(*p, "VmRSS:")).sum()
    }

    /// Fails if the process has exited (a peer that died mid-run).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.label());
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Helpers first (Squid's certificate generators), then the process itself.
        let tree = self.tree();
        for pid in tree.iter().skip(1) {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pid` first, then every live descendant (from each process's `PPid` in `/proc`).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = stat_fields(p).and_then(|f| f.get(1)?.parse().ok()) {
                parents.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// The fields of `/proc/PID/stat` after the `(comm)`, which may hold spaces:
/// index 0 is the state, 1 the parent pid.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime + cutime + cstime (fields 14–17): the reaped children's share too.
fn cpu_secs(pid: u32) -> f64 {
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `bin` on CPU 0 under taskset when pinning (taskset execs it: same pid).
pub fn command(bin: &Path, pin: bool) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// A free loopback port, for a peer that cannot report the one it bound.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` accepts connections and `ready` holds, failing early (with the
/// tail of `log`) if the child exits.
pub fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    log: &Path,
    ready: impl Fn() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "exited during start-up ({status}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let up = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        if up && ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not listening on {addr} after 60 s (log: {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child's stdout and stderr into one log file.
pub fn logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let f = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    Ok(())
}
