//! A sidecar pod in miniature, for the transparent-mode tests: a network
//! namespace for the agent, a veth pair to the host side (where the test's
//! origins listen), iptables and ip6tables `REDIRECT` rules that send the
//! agent's traffic to the proxy and exempt the proxy's own UID (the Istio
//! pattern), and the proxy itself running inside as that UID.
//!
//! Only addresses the test creates are used: 10.201.T.0/24 and
//! fd00:201:T::/64 on the veth pair, loopback inside the namespace. Dropping
//! the [`Netns`] deletes the namespace, which takes the veth pair and every
//! rule with it.

use std::io::BufRead;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The UID the proxy runs as, exempt from the REDIRECT rules (Istio's).
pub const PROXY_UID: u32 = 1337;
/// Where the rules send the agent's TCP (the transparent listeners).
pub const REDIRECT_PORT: u16 = 15001;
/// Where the rules send the agent's DNS (the responder).
pub const DNS_PORT: u16 = 15053;

pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_v4: Ipv4Addr,
    pub agent_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub agent_v6: Ipv6Addr,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (the README's test command installs iproute2 and iptables)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// These tests create namespaces and iptables rules: they need root. Not
/// having it is a failure, never a skip.
pub fn require_root() {
    let out = Command::new("id").arg("-u").output().expect("id");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "the transparent-mode tests create network namespaces and iptables rules, so they run as root"
    );
}

impl Netns {
    /// A fresh namespace `pc-agent-T`, linked to the host by a veth pair.
    /// `tag` (1..=250) keeps parallel tests apart.
    pub fn create(tag: u8) -> Netns {
        require_root();
        let name = format!("pc-agent-{tag}");
        let host_if = format!("pch{tag}");
        let agent_if = format!("pca{tag}");
        // Leftovers from a run that was killed.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let ns = Netns {
            host_v4: Ipv4Addr::new(10, 201, tag, 1),
            agent_v4: Ipv4Addr::new(10, 201, tag, 2),
            host_v6: Ipv6Addr::new(0xfd00, 0x201, u16::from(tag), 0, 0, 0, 0, 1),
            agent_v6: Ipv6Addr::new(0xfd00, 0x201, u16::from(tag), 0, 0, 0, 0, 2),
            name,
            host_if,
        };
        let n = ns.name.as_str();
        ip(&["netns", "add", n]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &agent_if,
        ]);
        ip(&["link", "set", &agent_if, "netns", n]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_v4),
            "dev",
            &ns.host_if,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/64", ns.host_v6),
            "dev",
            &ns.host_if,
            "nodad",
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", n, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&[
            "addr",
            "add",
            &format!("{}/24", ns.agent_v4),
            "dev",
            &agent_if,
        ]);
        inside(&[
            "addr",
            "add",
            &format!("{}/64", ns.agent_v6),
            "dev",
            &agent_if,
            "nodad",
        ]);
        inside(&["link", "set", &agent_if, "up"]);
        // The agent's resolver: any address will do, the rules redirect port 53.
        let etc = PathBuf::from("/etc/netns").join(n);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {}\noptions timeout:2 attempts:1\n", ns.host_v4),
        )
        .unwrap();
        ns
    }

    /// A command run inside the namespace (as root, so the rules apply to it).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The sidecar rules, for IPv4 and IPv6: the proxy's UID and loopback
    /// are exempt; all other TCP goes to the transparent listener, DNS to the
    /// responder, and any other UDP is rejected.
    pub fn redirect_to_proxy(&self) {
        for (tool, lo) in [("iptables", "127.0.0.0/8"), ("ip6tables", "::1/128")] {
            let uid = PROXY_UID.to_string();
            let port = REDIRECT_PORT.to_string();
            let dns = DNS_PORT.to_string();
            let rules: Vec<Vec<&str>> = vec![
                vec![
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-m",
                    "owner",
                    "--uid-owner",
                    &uid,
                    "-j",
                    "RETURN",
                ],
                vec![
                    "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", lo, "-j", "RETURN",
                ],
                vec![
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &port,
                ],
                vec![
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "udp",
                    "--dport",
                    "53",
                    "-m",
                    "owner",
                    "!",
                    "--uid-owner",
                    &uid,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &dns,
                ],
                vec![
                    "-A",
                    "OUTPUT",
                    "-p",
                    "udp",
                    "-m",
                    "owner",
                    "!",
                    "--uid-owner",
                    &uid,
                    "!",
                    "-d",
                    lo,
                    "-j",
                    "REJECT",
                ],
            ];
            for rule in rules {
                let mut c = self.command(tool);
                c.args(rule);
                run(&mut c);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// The proxy running inside the namespace as [`PROXY_UID`], from a copy of
/// the binary in its own directory (which that UID owns).
pub struct SidecarProxy {
    child: std::process::Child,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

impl SidecarProxy {
    /// Writes `config` to `dir/portcullis.toml` and starts the proxy on it.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> SidecarProxy {
        let bin = dir.join("portcullis");
        std::fs::copy(crate::portcullis_bin(), &bin).unwrap();
        let cfg = dir.join("portcullis.toml");
        std::fs::write(&cfg, config).unwrap();
        let owner = format!("{PROXY_UID}:{PROXY_UID}");
        run(Command::new("chown").args(["-R", &owner]).arg(dir));
        run(Command::new("chmod").args(["755"]).arg(dir));
        let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
        let mut child = ns
            .command("setpriv")
            .args([
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
            ])
            .arg(&bin)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .current_dir(dir)
            .env("PORTCULLIS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut admin = None;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("# admin: ") {
                    admin = a.parse::<SocketAddr>().ok();
                }
                if line == "# ready" {
                    let _ = tx.send(admin);
                }
            }
        });
        let admin = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
                panic!("the sidecar proxy did not become ready; its log:\n{log}")
            });
        SidecarProxy {
            child,
            admin,
            dir: dir.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait: the ledger is sealed when this returns.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for SidecarProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
