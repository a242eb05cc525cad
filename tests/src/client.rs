//! Raw clients: TLS through the proxy, and HTTP/1 heads and responses read by hand.

use super::*;

/// A root store holding the certificates of a PEM file (e.g. the proxy CA).
pub fn roots_from_pem(path: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

pub fn basic(agent: &str, token: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{agent}:{token}"))
}

pub async fn tls_client(
    tcp: TcpStream,
    roots: &rustls::RootCertStore,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
}

/// Reads a response head byte by byte (so nothing after it is consumed).
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    /// The server closed the connection after this response.
    pub closed: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked), then checks
/// whether the server closed the connection.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> RawResponse {
    let mut resp = read_response_keep_open(s).await;
    let mut b = [0u8; 1];
    resp.closed = matches!(
        tokio::time::timeout(Duration::from_millis(1500), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    resp
}

/// Reads one HTTP/1.1 response and nothing after it (for pipelining).
pub async fn read_response_keep_open<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> RawResponse {
    let head = read_head(s).await;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut resp = RawResponse {
        status,
        head,
        body: Vec::new(),
        closed: false,
    };
    if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body)).await;
        resp.body = body;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line = read_line(s).await;
            let size =
                usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
            if size == 0 {
                let _ = read_line(s).await;
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            let _ = s.read_exact(&mut chunk).await;
            resp.body.extend_from_slice(&chunk[..size]);
        }
    }
    resp
}

async fn read_line<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(1)) => line.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}
