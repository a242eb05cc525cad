//! The command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::workload::Workload;

/// A proxy measured beside Portcullis in the same run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A plain CONNECT splice, no interception: the floor any tunnel pays.
    Tunnel,
    /// Squid with ssl-bump (Debian `squid-openssl`).
    Squid,
    /// `mitmdump` from the bench's own venv.
    Mitmproxy,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Tunnel => "tunnel",
            Peer::Squid => "squid",
            Peer::Mitmproxy => "mitmproxy",
        }
    }
}

pub struct Args {
    pub duration: Duration,
    pub conns: usize,
    pub h2: bool,
    pub workloads: Vec<Workload>,
    pub bin: PathBuf,
    /// Every proxy on CPU 0, this process (client and origin) on the rest, so a proxy's
    /// CPU time is its own and not shared with the load it serves.
    pub pin: bool,
    /// Stop a mint run after this many new hosts (else at `duration`).
    pub mint_hosts: Option<u64>,
    pub peers: Vec<Peer>,
    pub squid: PathBuf,
    pub certgen: PathBuf,
    pub mitmdump: PathBuf,
}

const HELP: &str = "\
portcullis-loadgen: one workload, direct, through Portcullis (ledger sync = always and
batch) and through the peers you ask for, in one run, with every figure's ratio

  --duration SECS     per run (default 5)
  --conns N           concurrent connections (default 16)
  --h2                HTTP/2 inside the tunnel (default HTTP/1.1; squid is then skipped:
                      it does not speak HTTP/2 to clients)
  --workload W        keepalive | newconn | big | sse | mint | idle | all (default keepalive;
                      idle holds --conns connections open, e.g. --conns 10000)
  --peers LIST        also run these, comma separated (default none):
                        tunnel     a bare CONNECT splice, no interception (the floor)
                        squid      Squid ssl-bump, bump all (apt-get install squid-openssl)
                        mitmproxy  mitmdump (pip install -r benches/peers-requirements.txt)
                        all        all three
  --proxy-bin PATH    the portcullis binary (default: beside this one)
  --squid-bin PATH    squid (default: squid on PATH, else /usr/sbin/squid)
  --certgen-bin PATH  squid's security_file_certgen (default /usr/lib/squid/security_file_certgen)
  --mitmdump-bin PATH mitmdump (default: $PORTCULLIS_BENCH_MITMDUMP, else the venv that
                      tests/run.sh makes, .venv-peers/bin/mitmdump, else mitmdump on PATH)
  --no-pin            do not pin (default with 2+ CPUs: every proxy on CPU 0, client and
                      origin on the others, with taskset)
  --mint-hosts N      mint: stop after N new hosts per proxy (default: --duration)

Example, every workload against every peer:
  cargo build --release -p portcullis -p portcullis-benches
  target/release/portcullis-loadgen --workload all --peers all --duration 5";

pub fn parse() -> Result<Args> {
    let mut a = Args {
        duration: Duration::from_secs(5),
        conns: 16,
        h2: false,
        workloads: vec![Workload::KeepAlive],
        bin: beside_this_exe("portcullis"),
        pin: std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        mint_hosts: None,
        peers: Vec::new(),
        squid: on_path("squid").unwrap_or_else(|| PathBuf::from("/usr/sbin/squid")),
        certgen: PathBuf::from("/usr/lib/squid/security_file_certgen"),
        mitmdump: default_mitmdump(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().context(format!("{flag} needs a value"));
        match flag.as_str() {
            "--duration" => a.duration = Duration::from_secs_f64(val()?.parse()?),
            "--conns" => a.conns = val()?.parse()?,
            "--h2" => a.h2 = true,
            "--no-pin" => a.pin = false,
            "--proxy-bin" => a.bin = PathBuf::from(val()?),
            "--squid-bin" => a.squid = PathBuf::from(val()?),
            "--certgen-bin" => a.certgen = PathBuf::from(val()?),
            "--mitmdump-bin" => a.mitmdump = PathBuf::from(val()?),
            "--mint-hosts" => a.mint_hosts = Some(val()?.parse()?),
            "--workload" => a.workloads = workloads(&val()?)?,
            "--peers" => a.peers = peers(&val()?)?,
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            f => bail!("unknown flag {f}; see --help"),
        }
    }
    Ok(a)
}

fn workloads(w: &str) -> Result<Vec<Workload>> {
    Ok(match w {
        "keepalive" => vec![Workload::KeepAlive],
        "newconn" => vec![Workload::NewConn],
        "big" => vec![Workload::Big],
        "sse" => vec![Workload::Sse],
        "mint" => vec![Workload::Mint],
        "idle" => vec![Workload::Idle],
        "all" => vec![
            Workload::KeepAlive,
            Workload::NewConn,
            Workload::Big,
            Workload::Sse,
            Workload::Mint,
        ],
        w => bail!("unknown workload {w}: keepalive, newconn, big, sse, mint, idle or all"),
    })
}

fn peers(list: &str) -> Result<Vec<Peer>> {
    let mut out = Vec::new();
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let add: &[Peer] = match p {
            "tunnel" => &[Peer::Tunnel],
            "squid" => &[Peer::Squid],
            "mitmproxy" | "mitmdump" => &[Peer::Mitmproxy],
            "all" => &[Peer::Tunnel, Peer::Squid, Peer::Mitmproxy],
            p => bail!("unknown peer {p}: tunnel, squid, mitmproxy or all"),
        };
        for peer in add {
            if !out.contains(peer) {
                out.push(*peer);
            }
        }
    }
    // Always in this order, so every run prints the same rows.
    out.sort_by_key(|p| *p as u8);
    Ok(out)
}

fn beside_this_exe(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn default_mitmdump() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_BENCH_MITMDUMP") {
        return PathBuf::from(p);
    }
    // The venv tests/run.sh makes at the workspace root.
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-peers/bin/mitmdump");
    if venv.is_file() {
        return venv;
    }
    on_path("mitmdump").unwrap_or(venv)
}
