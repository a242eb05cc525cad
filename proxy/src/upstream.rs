//! The upstream side: resolve, SSRF-check, dial, verify TLS, pool.
//!
//! Every address a name resolves to is checked against the SSRF deny table
//! (SPEC §3 step 6) and the connection goes to exactly that checked address:
//! there is no second lookup an attacker could rebind. Addresses pinned by the
//! operator with `resolve` are trusted as written: that is the explicit opt-in
//! hermetic tests and split-horizon DNS use. Upstream certificates are
//! verified against the real host name with webpki roots plus `extra_ca`.
//! Pools are keyed by (tenant, checked destination), so a connection is never
//! shared across tenants and never goes to an address that was not checked.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_rules::{classify_ip, Host, ResolveEntry, Route, SsrfClass};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::http::body::ProxyBody;

/// Why we could not reach the origin. Stays typed until `rescue` maps it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("destination {addr} is {} and not allowed (SSRF guard)", class.as_str())]
    Ssrf { addr: IpAddr, class: SsrfClass },
    #[error("destination {addr} is this proxy itself")]
    SelfLoop { addr: SocketAddr },
    #[error("could not resolve {host}: {detail}")]
    Resolve { host: String, detail: String },
    #[error("connect to {host} failed: {source}")]
    Connect { host: String, source: io::Error },
    #[error("connect to {host} timed out")]
    ConnectTimeout { host: String },
    #[error("TLS to {host} failed: {detail}")]
    Tls { host: String, detail: String },
    #[error("TLS handshake with {host} timed out")]
    TlsTimeout { host: String },
    #[error("bad upstream target: {0}")]
    BadTarget(String),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamSetupError {
    #[error("cannot read upstream CA file {path}: {detail}")]
    ExtraCa { path: String, detail: String },
    #[error("TLS client configuration: {0}")]
    Tls(String),
}

/// What every connector shares: TLS configs, pinned addresses, timeouts.
struct Shared {
    tls_any: Arc<ClientConfig>,
    tls_h1: Arc<ClientConfig>,
    resolve: HashMap<(Host, u16), SocketAddr>,
    connect_timeout: Duration,
    tls_timeout: Duration,
    /// The proxy's own listening addresses: never a valid destination.
    own: Vec<SocketAddr>,
}

pub struct UpstreamOptions<'a> {
    pub extra_ca: &'a [std::path::PathBuf],
    pub resolve: &'a [ResolveEntry],
    pub connect_timeout: Duration,
    pub tls_timeout: Duration,
    pub response_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub own_addrs: Vec<SocketAddr>,
}

/// A destination whose every address passed the SSRF table. It is the only
/// thing the dial accepts, so nothing is connected that was not checked, and
/// there is no second lookup an attacker could rebind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Checked {
    pub host: Host,
    pub port: u16,
    addrs: Arc<[SocketAddr]>,
}

/// Upstream clients, one pool per (tenant, checked destination, protocol set).
pub struct Upstream {
    shared: Arc<Shared>,
    pub response_header_timeout: Duration,
    idle_timeout: Duration,
    clients: Mutex<HashMap<PoolKey, Client<Connector, ProxyBody>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    tenant: String,
    dest: Checked,
    h1_only: bool,
}

/// Most pools kept; past it the map starts over (idle connections close with
/// their pools, requests in flight keep theirs).
const MAX_POOLS: usize = 4096;

pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamSetupError> {
    let err = |detail: String| UpstreamSetupError::ExtraCa {
        path: path.display().to_string(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificates in file".into()));
    }
    Ok(certs)
}

impl Upstream {
    pub fn new(opts: UpstreamOptions<'_>) -> Result<Upstream, UpstreamSetupError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for path in opts.extra_ca {
            for cert in load_pem_certs(path)? {
                roots.add(cert).map_err(|e| UpstreamSetupError::ExtraCa {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ClientConfig>, UpstreamSetupError> {
            let mut cfg = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            cfg.alpn_protocols = alpn;
            Ok(Arc::new(cfg))
        };
        let shared = Shared {
            tls_any: build(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?,
            tls_h1: build(vec![b"http/1.1".to_vec()])?,
            resolve: opts
                .resolve
                .iter()
                .map(|r| ((r.host.clone(), r.port), r.addr))
                .collect(),
            connect_timeout: opts.connect_timeout,
            tls_timeout: opts.tls_timeout,
            own: opts.own_addrs,
        };
        Ok(Upstream {
            shared: Arc::new(shared),
            response_header_timeout: opts.response_header_timeout,
            idle_timeout: opts.idle_timeout,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// SPEC §3 step 6: resolves `host:port` once and checks every address
    /// against the SSRF table (and the proxy's own addresses). Operator-pinned
    /// addresses (`resolve`) are the explicit opt-in and are trusted as written.
    pub async fn check(
        &self,
        host: &Host,
        port: u16,
        route: &Route,
    ) -> Result<Checked, ConnectError> {
        let mut addrs = resolve_checked(&self.shared, host, port, route).await?;
        // One order per answer set, so a resolver that rotates its answers does
        // not defeat connection reuse (the set is part of the pool key).
        addrs.sort_unstable();
        addrs.dedup();
        Ok(Checked {
            host: host.clone(),
            port,
            addrs: addrs.into(),
        })
    }

    /// The pooled client for this tenant and checked destination. `h1_only`
    /// is for WebSocket upgrades, which need HTTP/1.1 end to end. A pool never
    /// serves two tenants, and never dials an address it was not handed.
    /// The addresses `host:port` resolves to, pins first, with no SSRF check:
    /// for holding a redirected connection's name to its original destination,
    /// and for the DNS responder (which checks each answer itself).
    pub async fn lookup(&self, host: &Host, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        if let Some(addr) = self.shared.resolve.get(&(host.clone(), port)) {
            return Ok(vec![*addr]);
        }
        lookup(&self.shared, host, port).await
    }

    pub fn client(
        &self,
        tenant: &str,
        dest: &Checked,
        h1_only: bool,
    ) -> Client<Connector, ProxyBody> {
        let key = PoolKey {
            tenant: tenant.to_owned(),
            dest: dest.clone(),
            h1_only,
        };
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_POOLS && !map.contains_key(&key) {
            map.clear();
        }
        map.entry(key)
            .or_insert_with(|| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(self.idle_timeout)
                    .pool_timer(TokioTimer::new())
                    .pool_max_idle_per_host(64)
                    .build(Connector {
                        shared: self.shared.clone(),
                        dest: dest.clone(),
                        h1_only,
                    })
            })
            .clone()
    }

    /// Connects a raw TCP stream to a checked destination (passthrough routes).
    pub async fn dial(&self, dest: &Checked) -> Result<TcpStream, ConnectError> {
        dial(&self.shared, dest).await
    }
}

/// Resolves `host:port` to addresses that passed the SSRF table.
async fn resolve_checked(
    shared: &Shared,
    host: &Host,
    port: u16,
    route: &Route,
) -> Result<Vec<SocketAddr>, ConnectError> {
    if let Some(addr) = shared.resolve.get(&(host.clone(), port)) {
        // Operator-pinned: the explicit opt-in, trusted as written.
        return check_own(shared, vec![*addr]);
    }
    let addrs = lookup(shared, host, port).await?;
    if addrs.is_empty() {
        return Err(ConnectError::Resolve {
            host: host.to_string(),
            detail: "no addresses".into(),
        });
    }
    // Every address must pass: one bad answer in the set refuses the lot.
    for a in &addrs {
        if let Some(class) = classify_ip(a.ip()) {
            if !route.allows_private(a.ip()) {
                return Err(ConnectError::Ssrf {
                    addr: a.ip(),
                    class,
                });
            }
        }
    }
    check_own(shared, addrs)
}

/// The system resolver's answer for `host` (an IP literal is its own answer).
async fn lookup(shared: &Shared, host: &Host, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
    match host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(shared.connect_timeout, lookup).await {
                Ok(Ok(it)) => Ok(it.collect()),
                Ok(Err(e)) => Err(ConnectError::Resolve {
                    host: name.clone(),
                    detail: e.to_string(),
                }),
                Err(_) => Err(ConnectError::Resolve {
                    host: name.clone(),
                    detail: "timed out".into(),
                }),
            }
        }
    }
}

fn check_own(shared: &Shared, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, ConnectError> {
    for a in &addrs {
        let own = shared
            .own
            .iter()
            .any(|o| o.port() == a.port() && (o.ip() == a.ip() || o.ip().is_unspecified()));
        if own {
            return Err(ConnectError::SelfLoop { addr: *a });
        }
    }
    Ok(addrs)
}

async fn dial(shared: &Shared, dest: &Checked) -> Result<TcpStream, ConnectError> {
    let mut last = None;
    for addr in dest.addrs.iter() {
        match tokio::time::timeout(shared.connect_timeout, TcpStream::connect(*addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => {
                last = Some(ConnectError::Connect {
                    host: dest.host.to_string(),
                    source: e,
                })
            }
            Err(_) => {
                last = Some(ConnectError::ConnectTimeout {
                    host: dest.host.to_string(),
                });
            }
        }
    }
    Err(last.unwrap_or(ConnectError::Resolve {
        host: dest.host.to_string(),
        detail: "no addresses".into(),
    }))
}

/// A `tower::Service<Uri>` for hyper-util's pooled client. It dials only the
/// checked addresses it was built with, and only for the host they belong to.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
    dest: Checked,
    h1_only: bool,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpConn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpConn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<UpConn, ConnectError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ConnectError::BadTarget(format!(
                    "unsupported scheme in {uri}"
                )))
            }
        };
        let raw_host = uri
            .host()
            .ok_or_else(|| ConnectError::BadTarget("missing host".into()))?;
        let host = Host::parse(raw_host).map_err(|e| ConnectError::BadTarget(e.to_string()))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if host != self.dest.host || port != self.dest.port {
            return Err(ConnectError::BadTarget(format!(
                "{host}:{port} is not the checked destination"
            )));
        }
        let tcp = dial(&self.shared, &self.dest).await?;
        if !tls {
            return Ok(UpConn::Plain(TokioIo::new(tcp)));
        }
        let server_name = match &host {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Name(n) => ServerName::try_from(n.clone()).map_err(|e| ConnectError::Tls {
                host: n.clone(),
                detail: e.to_string(),
            })?,
        };
        let cfg = if self.h1_only {
            self.shared.tls_h1.clone()
        } else {
            self.shared.tls_any.clone()
        };
        let handshake = TlsConnector::from(cfg).connect(server_name, tcp);
        match tokio::time::timeout(self.shared.tls_timeout, handshake).await {
            Ok(Ok(s)) => Ok(UpConn::Tls(Box::new(TokioIo::new(s)))),
            Ok(Err(e)) => Err(ConnectError::Tls {
                host: host.to_string(),
                detail: tls_error_detail(&e),
            }),
            Err(_) => Err(ConnectError::TlsTimeout {
                host: host.to_string(),
            }),
        }
    }
}

fn tls_error_detail(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("invalid upstream certificate: {c:?}")
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// Finds our typed connect error inside hyper-util's error chain.
pub fn find_connect_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ConnectError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

/// An upstream connection: TLS or (for `allow_plaintext` routes) plain TCP.
pub enum UpConn {
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
    Plain(TokioIo<TcpStream>),
}

impl Connection for UpConn {
    fn connected(&self) -> Connected {
        match self {
            UpConn::Tls(s) => {
                let h2 = s.inner().get_ref().1.alpn_protocol() == Some(b"h2");
                let c = Connected::new();
                if h2 {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
            UpConn::Plain(_) => Connected::new(),
        }
    }
}

impl hyper::rt::Read for UpConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpConn::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            UpConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpConn::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            UpConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpConn::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            UpConn::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpConn::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            UpConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpConn::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            UpConn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpConn::Tls(s) => s.is_write_vectored(),
            UpConn::Plain(s) => s.is_write_vectored(),
        }
    }
}
