//! Where a request may go: CONNECT to every spelling of an address the SSRF
//! table forbids, names that only look like an allowed host (IDN homoglyphs,
//! trailing dots, percent-encoding), and DNS rebinding through a real DNS
//! server on loopback that answers an allowed address first and loopback
//! after. Each refusal has its reason and its ledger record.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_tests::extra::{ledger_dump, wait_for_record};
use portcullis_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

/// Every address below, canonical, on port 8443: the route allows them all,
/// so only the SSRF table can refuse.
const SSRF_ROUTE: &str = r#"
[[routes]]
id = "ip-literals"
action = "allow"
tenants = ["acme"]
ports = [8443]
hosts = ["127.0.0.1", "0.0.0.0", "::", "::1", "169.254.169.254", "169.254.1.1", "10.0.0.1",
         "172.16.0.1", "192.168.1.1", "100.64.0.1", "100.100.100.200", "168.63.129.16",
         "224.0.0.1", "255.255.255.255", "0.1.2.3", "fe80::1", "fc00::1", "fd00:ec2::254",
         "fec0::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
         "64:ff9b::7f00:1", "2002:7f00:1::", "2001::1", "192.0.0.170", "198.18.0.1", "240.0.0.1"]
"#;

#[tokio::test]
async fn connect_to_every_ssrf_spelling_is_refused_403_ssrf_blocked_and_recorded() {
    let (proxy, origin, _pki) = TestProxy::with_origin(SSRF_ROUTE).await;
    // (CONNECT target, the address the record must name)
    let cases: &[(&str, &str)] = &[
        ("127.0.0.1:8443", "127.0.0.1"),
        ("2130706433:8443", "127.0.0.1"),
        ("017700000001:8443", "127.0.0.1"),
        ("0177.0.0.1:8443", "127.0.0.1"),
        ("0x7f.0.0.1:8443", "127.0.0.1"),
        ("0x7F000001:8443", "127.0.0.1"),
        ("127.1:8443", "127.0.0.1"),
        ("127.000.000.001:8443", "127.0.0.1"),
        ("0.0.0.0:8443", "0.0.0.0"),
        ("0:8443", "0.0.0.0"),
        ("[::]:8443", "::"),
        ("[::1]:8443", "::1"),
        ("[0:0:0:0:0:0:0:1]:8443", "::1"),
        ("169.254.169.254:8443", "169.254.169.254"),
        ("2852039166:8443", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe:8443", "169.254.169.254"),
        ("0251.0376.0251.0376:8443", "169.254.169.254"),
        ("169.254.1.1:8443", "169.254.1.1"),
        ("10.0.0.1:8443", "10.0.0.1"),
        ("012.0.0.1:8443", "10.0.0.1"),
        ("172.16.0.1:8443", "172.16.0.1"),
        ("192.168.1.1:8443", "192.168.1.1"),
        ("3232235777:8443", "192.168.1.1"),
        ("100.64.0.1:8443", "100.64.0.1"),
        ("100.100.100.200:8443", "100.100.100.200"),
        ("168.63.129.16:8443", "168.63.129.16"),
        ("224.0.0.1:8443", "224.0.0.1"),
        ("255.255.255.255:8443", "255.255.255.255"),
        ("0.1.2.3:8443", "0.1.2.3"),
        ("[fe80::1]:8443", "fe80::1"),
        ("[fc00::1]:8443", "fc00::1"),
        ("[fd00:ec2::254]:8443", "fd00:ec2::254"),
        ("[fec0::1]:8443", "fec0::1"),
        ("[ff02::1]:8443", "ff02::1"),
        ("[::ffff:127.0.0.1]:8443", "::ffff:127.0.0.1"),
        ("[::ffff:7f00:1]:8443", "::ffff:127.0.0.1"),
        ("[::ffff:169.254.169.254]:8443", "::ffff:169.254.169.254"),
        ("[::127.0.0.1]:8443", "::7f00:1"),
        ("[64:ff9b::127.0.0.1]:8443", "64:ff9b::7f00:1"),
        ("[2002:7f00:1::]:8443", "2002:7f00:1::"),
        ("[2001::1]:8443", "2001::1"),
        ("192.0.0.170:8443", "192.0.0.170"),
        ("198.18.0.1:8443", "198.18.0.1"),
        ("240.0.0.1:8443", "240.0.0.1"),
    ];
    for (target, canonical) in cases {
        let err = proxy
            .connect(target, Some((AGENT, TOKEN)))
            .await
            .expect_err(target);
        assert!(err.starts_with("HTTP/1.1 403"), "{target}: {err}");
        assert!(err.contains("\"ssrf_blocked\""), "{target}: {err}");
        let event = portcullis_tests::extra::event_id_of(&err).unwrap();
        let rec = wait_for_record(&proxy.ledger_dir, Duration::from_secs(5), |r| {
            r["kind"] == "decision" && r["event_id"] == event.as_str()
        })
        .await
        .unwrap_or_else(|| panic!("{target}: no record\n{}", ledger_dump(&proxy.ledger_dir)));
        assert_eq!(rec["reason"], "ssrf_blocked", "{target}");
        assert_eq!(rec["decision"], "deny", "{target}");
        assert_eq!(rec["dest_host"], *canonical, "{target}");
        assert_eq!(rec["dest_port"], 8443, "{target}");
    }
    // Spellings that are no address at all: refused as malformed (by the
    // proxy, or by hyper's URI parser before it), each recorded.
    let malformed = |proxy: &TestProxy| {
        ledger_records(&proxy.ledger_dir)
            .iter()
            .filter(|r| {
                r["kind"] == "decision"
                    && (r["reason"] == "bad_request" || r["reason"] == "bad_framing")
            })
            .count()
    };
    for (i, target) in [
        "[fe80::1%25eth0]:8443",
        "[fe80::1%eth0]:8443",
        "127.0.0.1.:8443x",
        "1.2.3.999:8443",
        "0x1g.0.0.1:8443",
        "[::ffff:127.0.0.1:8443",
    ]
    .into_iter()
    .enumerate()
    {
        let err = proxy
            .connect(target, Some((AGENT, TOKEN)))
            .await
            .expect_err(target);
        assert!(err.starts_with("HTTP/1.1 400"), "{target}: {err}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while malformed(&proxy) < i + 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            malformed(&proxy),
            i + 1,
            "{target}: {}",
            ledger_dump(&proxy.ledger_dir)
        );
    }
    assert!(origin.seen().is_empty());
    proxy.shutdown().await;
}

const NAMED_ROUTES: &str = r#"
[[routes]]
id = "openai"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
"#;

#[tokio::test]
async fn look_alike_names_reach_no_route_and_spellings_of_the_real_one_reach_it() {
    let (proxy, origin, _pki) = TestProxy::with_origin(NAMED_ROUTES).await;
    // Punycode homoglyphs are real, different names: the tunnel opens (port
    // 443) and the request inside is refused with no_route.
    for name in [
        "xn--pi-7ld.openai.com",
        "api.openai.com.xn--80ak6aa92e.com",
        "api-openai.com",
    ] {
        let resp = proxy
            .h1_request(
                &format!("{name}:443"),
                &format!("GET /v1/models HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"),
            )
            .await;
        assert_eq!(resp.status, 403, "{name}: {}", resp.head);
        assert_eq!(resp.error_code(), "no_route", "{name}");
    }
    // Names that cannot be a host: refused at CONNECT as malformed.
    for target in [
        "api%2eopenai.com:443",
        "api.openai.com..:443",
        ".api.openai.com:443",
        "api.openai.com%00.evil.test:443",
        "api_openai.com@evil.test:443",
    ] {
        let err = proxy
            .connect(target, Some((AGENT, TOKEN)))
            .await
            .expect_err(target);
        assert!(err.starts_with("HTTP/1.1 400"), "{target}: {err}");
    }
    // The real host in other spellings is the same host.
    for (target, sni) in [
        ("API.OpenAI.com:443", "api.openai.com"),
        ("api.openai.com.:443", "api.openai.com"),
    ] {
        let mut tls = proxy.tunnel_tls(target, sni, &[b"http/1.1"]).await;
        let host = target.trim_end_matches(":443");
        tls.write_all(
            format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let resp = read_response(&mut tls).await;
        assert_eq!(resp.status, 200, "{target}: {}", resp.head);
    }
    // Inside an allowed tunnel, a Host that only looks like it is fronting.
    let fronting: &[&[u8]] = &[
        "Host: \u{430}pi.openai.com".as_bytes(),
        b"Host: api.openai.com.evil.test",
        b"Host: api%2eopenai.com",
        "Host: api.openai\u{3002}com".as_bytes(),
        b"Host: api.openai.com:443@evil.test",
    ];
    for host in fronting {
        let mut tls = proxy
            .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
            .await;
        let mut raw = b"GET /v1/models HTTP/1.1\r\n".to_vec();
        raw.extend_from_slice(host);
        raw.extend_from_slice(b"\r\n\r\n");
        tls.write_all(&raw).await.unwrap();
        let resp = read_response(&mut tls).await;
        let shown = String::from_utf8_lossy(host);
        assert_eq!(resp.status, 421, "{shown}: {}", resp.head);
        assert_eq!(resp.error_code(), "host_mismatch", "{shown}");
        assert!(resp.closed, "{shown}");
    }
    let seen = origin.seen();
    assert_eq!(
        seen.len(),
        2,
        "only the two real-host requests went out: {seen:?}"
    );
    let mismatches = ledger_records(&proxy.ledger_dir)
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["reason"] == "host_mismatch")
        .count();
    assert_eq!(
        mismatches,
        fronting.len(),
        "{}",
        ledger_dump(&proxy.ledger_dir)
    );
    proxy.shutdown().await;
}

// DNS rebinding ---------------------------------------------------------------

/// A DNS server for one name: the first A query gets `first`, every later
/// one `then`; AAAA queries get an empty answer.
struct RebindingDns {
    addr: SocketAddr,
    a_queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RebindingDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RebindingDns {
    async fn start(bind: SocketAddr, name: &str, first: Ipv4Addr, then: Ipv4Addr) -> RebindingDns {
        let sock = UdpSocket::bind(bind).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let a_queries = Arc::new(AtomicUsize::new(0));
        let count = a_queries.clone();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(reply) = answer(&buf[..n], &name, &count, first, then) {
                    let _ = sock.send_to(&reply, peer).await;
                }
            }
        });
        RebindingDns {
            addr,
            a_queries,
            task,
        }
    }
}

fn answer(
    q: &[u8],
    name: &str,
    count: &AtomicUsize,
    first: Ipv4Addr,
    then: Ipv4Addr,
) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question: labels, then QTYPE and QCLASS.
    let mut i = 12;
    let mut labels = Vec::new();
    while i < q.len() && q[i] != 0 {
        let len = usize::from(q[i]);
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += 1 + len;
    }
    let qend = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let ours = labels.join(".") == name;
    let mut r = Vec::new();
    r.extend_from_slice(&q[..2]); // id
    r.extend_from_slice(&[0x81, if ours { 0x80 } else { 0x83 }]); // QR RD RA; NXDOMAIN if not ours
    r.extend_from_slice(&[0, 1]); // QDCOUNT
    let a = ours && qtype == 1;
    r.extend_from_slice(&[0, u8::from(a)]); // ANCOUNT
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..qend)?);
    if a {
        let ip = if count.fetch_add(1, Ordering::SeqCst) == 0 {
            first
        } else {
            then
        };
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_to_loopback_is_refused_and_the_dial_uses_only_the_checked_answer() {
    netns::require_root();
    let pki = OriginPki::for_names(&["rebind.test"]);
    // The victim on 127.0.0.1 and the allowed origin on 127.0.0.2, same port:
    // an allowed answer must never be dialled as the other.
    let (victim, allowed) = loop {
        let victim = Origin::start_tls_on(&pki, "127.0.0.1:0".parse().unwrap()).await;
        let port = victim.addr.port();
        if std::net::TcpListener::bind(("127.0.0.2", port)).is_ok() {
            let allowed =
                Origin::start_tls_on(&pki, SocketAddr::from(([127, 0, 0, 2], port))).await;
            break (victim, allowed);
        }
    };
    let port = victim.addr.port();
    // A real DNS server on loopback port 53 (the system resolver has no other port).
    let dns = RebindingDns::start(
        "127.0.53.53:53".parse().unwrap(),
        "rebind.test",
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::LOCALHOST,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[routes]]
id = "rebind"
action = "allow"
tenants = ["acme"]
hosts = ["rebind.test"]
ports = [{port}]
# Stands in for a public address: nothing here may leave the machine.
allow_private = ["127.0.0.2/32"]
"#
    );
    let cfg = proxy_config(victim.addr, &pki, &dir.path().join("ca"), &routes);
    let cfg_path = dir.path().join("portcullis.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {}\noptions timeout:2 attempts:2\n",
            dns.addr.ip()
        ),
    )
    .unwrap();
    // The proxy runs in its own mount namespace whose /etc/resolv.conf names
    // the test's DNS server; everything else is the host's.
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/resolv.conf && exec "$2" run --config "$3""#)
        .arg("sh")
        .arg(&resolv)
        .arg(portcullis_bin())
        .arg(&cfg_path)
        .current_dir(dir.path())
        .env("PORTCULLIS_LOG", "warn");
    let child = ProxyProcess::spawn(cmd);
    let ca_roots = roots_from_pem(&dir.path().join("ca/ca.pem"));
    let target = format!("rebind.test:{port}");
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let send = |path: &'static str| {
        let (target, ca_roots, raw) = (target.clone(), ca_roots.clone(), request(path));
        let addr = child.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!(
                    "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {}\r\n\r\n",
                    basic(AGENT, TOKEN)
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let head = read_head(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let mut tls = tls_client(s, &ca_roots, "rebind.test", &[b"http/1.1"])
                .await
                .unwrap();
            tls.write_all(raw.as_bytes()).await.unwrap();
            read_response(&mut tls).await
        }
    };
    // First lookup: the allowed address. Had the dial looked the name up again
    // it would have got 127.0.0.1 and reached the victim.
    let first = send("/first").await;
    assert_eq!(first.status, 200, "{}", first.head);
    assert_eq!(allowed.seen().len(), 1);
    assert_eq!(allowed.seen()[0].path, "/first");
    // The name now points at loopback: refused before anything is dialled.
    let second = send("/second").await;
    assert_eq!(second.status, 403, "{}", second.head);
    assert_eq!(second.error_code(), "ssrf_blocked");
    let message = second.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(
        victim.seen().is_empty(),
        "the rebound name reached loopback: {:?}",
        victim.seen()
    );
    assert_eq!(allowed.seen().len(), 1);
    assert!(
        dns.a_queries.load(Ordering::SeqCst) >= 2,
        "the proxy did not use the test DNS server"
    );
    let ledger = dir.path().join(".portcullis/ledger");
    let event = portcullis_tests::extra::event_id_of(&second.head).unwrap();
    let rec = wait_for_record(&ledger, Duration::from_secs(5), |r| {
        r["kind"] == "decision" && r["event_id"] == event.as_str()
    })
    .await
    .unwrap_or_else(|| panic!("no record\n{}", ledger_dump(&ledger)));
    assert_eq!(rec["reason"], "ssrf_blocked");
    assert_eq!(rec["dest_host"], "rebind.test");
    assert!(child.terminate().success());
}
