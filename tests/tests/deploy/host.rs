//! The host-side pieces, for real: `prepare.sh`, the systemd unit, and `iptables.sh` in
//! network namespaces.

use super::*;

#[test]
fn prepare_script_copies_key_files_private_and_fills_in_the_replica_id() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let secrets = root.join("secrets");
    for (file, body) in [
        ("ca/ca.pem", "cert\n"),
        ("ca/ca.key", "key\n"),
        ("ca/ledger-signing.key", "seed\n"),
        ("vault/vault.json", "{}\n"),
    ] {
        let path = secrets.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        // What a Secret volume with fsGroup gives: group-readable.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    }
    let config_in = root.join("portcullis.toml");
    std::fs::write(
        &config_in,
        "version = 1\n\n[ledger]\ndir = \"/var/lib/portcullis/ledger\"\nreplica_id = \"central\"\n",
    )
    .unwrap();
    let bin_dir = portcullis_bin().parent().unwrap().to_path_buf();
    let run = |replica: &str| {
        Command::new("sh")
            .arg(repo().join("deploy/kubernetes/prepare.sh"))
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("SECRETS_DIR", &secrets)
            .env("STATE_DIR", root.join("state"))
            .env("CONFIG_IN", &config_in)
            .env("CONFIG_OUT", root.join("run/portcullis.toml"))
            .env("REPLICA_ID", replica)
            .output()
            .unwrap()
    };
    let out = run("portcullis-7d9f8b6c5-x2x9z");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |rel: &str| {
        std::fs::metadata(root.join("state").join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca/ca.key"), 0o600);
    assert_eq!(mode("ca/ledger-signing.key"), 0o600);
    assert_eq!(mode("vault.json"), 0o600);
    assert_eq!(mode("ca/ca.pem"), 0o644);
    assert_eq!(mode("ledger"), 0o700);
    let rendered = std::fs::read_to_string(root.join("run/portcullis.toml")).unwrap();
    assert!(
        rendered.contains("\nreplica_id = \"portcullis-7d9f8b6c5-x2x9z\"\n"),
        "{rendered}"
    );
    assert!(!rendered.contains("\"central\""), "{rendered}");

    // A replica id that would break the TOML (or the sed) is refused.
    let bad = run("x\"; rm -rf /");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("REPLICA_ID"));
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_and_its_security_review() {
    // The unit with ExecStart pointing at the binary under test, so verify can resolve it.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("portcullis.service");
    let text = read("deploy/systemd/portcullis.service");
    assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(text.contains("CapabilityBoundingSet=\n"));
    std::fs::write(
        &unit,
        text.replace(
            "/usr/local/bin/portcullis",
            &portcullis_bin().display().to_string(),
        ),
    )
    .unwrap();
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(&unit)
            .output()
            .expect("systemd-analyze is missing: install systemd (tests/run.sh does)")
    };
    let verify = analyze(&["verify"]);
    let noise = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && noise.trim().is_empty(),
        "{noise}"
    );
    // Exposure 0-10 in tenths: 15 is "1.5 OK". The unit scores 1.1.
    let security = analyze(&["security", "--offline=yes", "--threshold=15"]);
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

/// Network namespaces removed (and their processes killed) on drop.
struct Namespaces {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (tests/run.sh installs iproute2 and iptables)",
                cmd[0]
            )
        });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tiny TCP/UDP servers that answer with a banner, and a client that prints what it got.
const NET_PY: &str = r#"
import socket, sys, threading, time
def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET
def serve(proto, host, port, banner):
    s = socket.socket(family(host), socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ":" in host:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, int(port)))
    def tcp():
        s.listen(16)
        while True:
            c, _ = s.accept(); c.sendall(banner.encode()); c.close()
    def udp():
        while True:
            _, peer = s.recvfrom(512); s.sendto(banner.encode(), peer)
    threading.Thread(target=tcp if proto == "tcp" else udp, daemon=True).start()
if sys.argv[1] == "serve":
    for spec in sys.argv[2:]:
        serve(*spec.split(","))
    print("ready", flush=True)
    time.sleep(120)
else:
    proto, host, port = sys.argv[2:5]
    s = socket.socket(family(host), socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.connect((host, int(port)))
        if proto == "udp":
            s.send(b"?")
        print(s.recv(64).decode() or "empty")
    except OSError as e:
        print("refused" if isinstance(e, (ConnectionRefusedError, PermissionError)) else "timeout")
"#;

#[test]
fn iptables_script_sends_agent_traffic_to_the_proxy_and_exempts_only_the_proxy_uid() {
    // Two namespaces on a veth pair, documentation addresses only: "pod" runs the rules,
    // "world" stands for the internet. Nothing leaves this machine.
    let id = std::process::id();
    let (pod, world) = (format!("pcdeploy-pod-{id}"), format!("pcdeploy-world-{id}"));
    let (veth_pod, veth_world) = (format!("pcp{id}"), format!("pcw{id}"));
    let mut ns = Namespaces {
        names: vec![],
        children: vec![],
    };
    for n in [&pod, &world] {
        sh(&["ip", "netns", "add", n]);
        ns.names.push(n.clone());
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip",
        "link",
        "add",
        &veth_pod,
        "type",
        "veth",
        "peer",
        "name",
        &veth_world,
    ]);
    sh(&["ip", "link", "set", &veth_pod, "netns", &pod]);
    sh(&["ip", "link", "set", &veth_world, "netns", &world]);
    for (n, dev, v4, v6) in [
        (&pod, &veth_pod, "192.0.2.2/24", "2001:db8::2/64"),
        (&world, &veth_world, "192.0.2.1/24", "2001:db8::1/64"),
    ] {
        sh(&["ip", "-n", n, "addr", "add", v4, "dev", dev]);
        sh(&["ip", "-n", n, "addr", "add", v6, "dev", dev, "nodad"]);
        sh(&["ip", "-n", n, "link", "set", dev, "up"]);
    }

    // The helper must be readable by the unprivileged UIDs the clients run as.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("net.py");
    std::fs::write(&script, NET_PY).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let python = "/usr/bin/python3";
    assert!(Path::new(python).exists(), "{python} is missing");

    let serve = |netns: &str, specs: &[&str]| -> Child {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, python])
            .arg(&script)
            .arg("serve")
            .args(specs)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "servers in {netns} did not start");
        child
    };
    ns.children.push(serve(
        &world,
        &[
            "tcp,0.0.0.0,443,world",
            "tcp,::,443,world6",
            "udp,0.0.0.0,53,world-dns",
            "udp,0.0.0.0,9999,world-udp",
        ],
    ));
    // Stand-ins for the proxy's transparent listeners, its DNS responder, and an in-pod
    // helper on loopback.
    ns.children.push(serve(
        &pod,
        &[
            "tcp,127.0.0.1,15001,proxy",
            "tcp,::1,15001,proxy6",
            "udp,127.0.0.1,15053,responder",
            "tcp,127.0.0.1,8000,local",
        ],
    ));

    let rules = |pass: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &pod, "sh"])
            .arg(repo().join("deploy/kubernetes/sidecar/iptables.sh"))
            .env("PROXY_UID", "1337")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "iptables.sh ({pass}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let save = |bin: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", &pod, bin])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        (save("iptables-save"), save("ip6tables-save"))
    };
    let first = rules("first run");
    assert!(!first.0.is_empty() && !first.1.is_empty(), "{first:?}");
    // A restarted init container in the same namespace replaces the rules, never stacks them.
    assert_eq!(rules("second run"), first);

    let client = |uid: u32, proto: &str, host: &str, port: u16| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &pod, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", python])
            .arg(&script)
            .args(["client", proto, host, &port.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let agent = 1000;
    let proxy = 1337;
    let cases: &[(u32, &str, &str, u16, &str)] = &[
        // The agent: all TCP, any port, either family, lands on the transparent listener.
        (agent, "tcp", "192.0.2.1", 443, "proxy"),
        (agent, "tcp", "192.0.2.1", 22, "proxy"),
        (agent, "tcp", "2001:db8::1", 443, "proxy6"),
        // Its DNS queries, to whatever nameserver, reach the responder.
        (agent, "udp", "192.0.2.1", 53, "responder"),
        // Other UDP (QUIC, home-made tunnels) is refused, in both families.
        (agent, "udp", "192.0.2.1", 9999, "refused"),
        (agent, "udp", "2001:db8::1", 9999, "refused"),
        // Loopback stays in the pod.
        (agent, "tcp", "127.0.0.1", 8000, "local"),
        // The proxy's UID goes out as it is: upstream connections and its own lookups.
        (proxy, "tcp", "192.0.2.1", 443, "world"),
        (proxy, "tcp", "2001:db8::1", 443, "world6"),
        (proxy, "udp", "192.0.2.1", 53, "world-dns"),
        (proxy, "udp", "192.0.2.1", 9999, "world-udp"),
    ];
    let mut wrong = Vec::new();
    for &(uid, proto, host, port, want) in cases {
        let got = client(uid, proto, host, port);
        if got != want {
            wrong.push(format!(
                "uid {uid} {proto} {host}:{port}: got {got:?}, want {want:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
