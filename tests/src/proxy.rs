//! The proxy under test: its config, in process or as a child process.

use super::*;

/// A proxy config for tests: one forward listener on 127.0.0.1:0 with basic
/// auth, two tenants, resolve pins for the provider names to `origin`, and
/// the origin CA trusted. `routes` is appended verbatim.
pub fn proxy_config(origin: SocketAddr, pki: &OriginPki, ca_dir: &Path, routes: &str) -> String {
    format!(
        r#"version = 1

[[listeners]]
name = "forward"
bind = "127.0.0.1:0"
auth = "basic"

[admin]
bind = "127.0.0.1:0"
token_sha256 = "{admin_token}"

[ca]
dir = "{ca}"

[upstream]
extra_ca = ["{origin_ca}"]
resolve = ["api.openai.com:443:{origin}", "api.anthropic.com:443:{origin}", "origin.test:443:{origin}"]
connect_timeout = "5s"
tls_timeout = "5s"
response_header_timeout = "10s"

[limits]
client_header_timeout = "2s"
shutdown_grace = "5s"

[[tenants]]
id = "acme"

[[tenants]]
id = "globex"

[[agents]]
id = "{AGENT}"
tenant = "acme"
token_sha256 = "{h1}"

[[agents]]
id = "{OTHER_AGENT}"
tenant = "globex"
token_sha256 = "{h2}"

{routes}
"#,
        ca = ca_dir.display(),
        origin_ca = pki.ca_pem_path.display(),
        h1 = sha256_hex(TOKEN),
        h2 = sha256_hex(OTHER_TOKEN),
        admin_token = sha256_hex(ADMIN_TOKEN),
    )
}

/// The routes most tests use.
pub const DEFAULT_ROUTES: &str = r#"
[[routes]]
id = "acme-openai"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
methods = ["POST", "GET"]
paths = ["/v1/chat/completions", "/sse-paced", "/echo", "/forge", "/ws-denied"]

[[routes]]
id = "acme-anthropic"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
paths = ["/v1/messages", "/v1/*"]

[[routes]]
id = "acme-origin-ws"
action = "allow"
tenants = ["acme"]
hosts = ["origin.test"]
websocket = true

[[routes]]
id = "globex-anthropic"
action = "allow"
tenants = ["globex"]
hosts = ["api.anthropic.com"]
"#;

/// A running in-process proxy plus the files it uses.
pub struct TestProxy {
    pub proxy: Option<RunningProxy>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub ledger_dir: PathBuf,
    pub ca_pem_path: PathBuf,
    pub ca_roots: rustls::RootCertStore,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    pub async fn start(config_text: &str, dir: tempfile::TempDir) -> TestProxy {
        TestProxy::start_with_master_key(config_text, dir, None).await
    }

    /// [`TestProxy::start`] with the vault's master key (what `PORTCULLIS_MASTER_KEY` gives the binary).
    pub async fn start_with_master_key(
        config_text: &str,
        dir: tempfile::TempDir,
        master_key: Option<&str>,
    ) -> TestProxy {
        // PORTCULLIS_LOG=debug shows the proxy's logs in failing tests.
        if let Ok(filter) = std::env::var("PORTCULLIS_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let config = match portcullis_rules::parse_config("test.toml", config_text) {
            Ok(c) => c,
            Err(e) => panic!("test config invalid:\n{e}\n---\n{config_text}"),
        };
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config_text).unwrap();
        let proxy = portcullis::start(portcullis::Settings {
            config,
            base_dir: dir.path().to_path_buf(),
            config_path: Some(config_path),
            master_key: master_key.map(|k| zeroize::Zeroizing::new(k.to_owned())),
        })
        .await
        .unwrap();
        let addr = proxy.listeners[0].1;
        let admin_addr = proxy.admin_addr;
        let ledger_dir = proxy.ledger_dir.clone();
        let ca_pem_path = proxy.ca_cert_path.clone();
        let ca_roots = roots_from_pem(&ca_pem_path);
        TestProxy {
            proxy: Some(proxy),
            addr,
            admin_addr,
            ledger_dir,
            ca_pem_path,
            ca_roots,
            dir,
        }
    }

    /// Standard setup: a TLS origin and a proxy with `routes`.
    pub async fn with_origin(routes: &str) -> (TestProxy, Origin, OriginPki) {
        let pki = OriginPki::new();
        let origin = Origin::start_tls(&pki).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), routes);
        let proxy = TestProxy::start(&cfg, dir).await;
        (proxy, origin, pki)
    }

    /// One request to the admin API, with `Authorization: Bearer token` if given.
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> RawResponse {
        let mut s = TcpStream::connect(self.admin_addr).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_response(&mut s).await
    }

    /// A POST to the admin API with a JSON body and the test admin token.
    pub async fn admin_post(&self, path: &str, body: &str) -> RawResponse {
        let mut s = TcpStream::connect(self.admin_addr).await.unwrap();
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_response(&mut s).await
    }

    pub fn proxy_url(&self, agent: &str, token: &str) -> String {
        format!("http://{agent}:{token}@{}", self.addr)
    }

    /// Stops the proxy gracefully and hands back its directory (CA, ledger),
    /// which lives until the caller drops it.
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
        self.dir
    }

    /// CONNECT through the proxy; returns the stream after `200` or the raw
    /// refusal response text.
    pub async fn connect(
        &self,
        target: &str,
        auth: Option<(&str, &str)>,
    ) -> Result<TcpStream, String> {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((a, t)) = auth {
            req.push_str(&format!("Proxy-Authorization: Basic {}\r\n", basic(a, t)));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        if head.starts_with("HTTP/1.1 200") {
            Ok(s)
        } else {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
            Err(format!("{head}{}", String::from_utf8_lossy(&rest)))
        }
    }

    /// CONNECT + TLS (trusting the proxy CA) with the given SNI and ALPN.
    pub async fn tunnel_tls(
        &self,
        target: &str,
        sni: &str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = self.connect(target, Some((AGENT, TOKEN))).await.unwrap();
        tls_client(tcp, &self.ca_roots, sni, alpn).await.unwrap()
    }

    /// One HTTP/1.1 request through a fresh tunnel; returns the raw response.
    pub async fn h1_request(&self, target: &str, raw: &str) -> RawResponse {
        let host = target.rsplit_once(':').map(|(h, _)| h).unwrap_or(target);
        let mut tls = self.tunnel_tls(target, host, &[b"http/1.1"]).await;
        tls.write_all(raw.as_bytes()).await.unwrap();
        read_response(&mut tls).await
    }
}
