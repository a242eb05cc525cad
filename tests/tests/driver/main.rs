//! Driver tests for the fail-open fixes in `proxy/`: each test states one
//! behaviour the proxy must have (SPEC §3, §4.3, §7). Connections are closed
//! where the byte stream could be ambiguous, identity and routes are
//! re-checked after a reload, paths and bodies are parsed strictly, and every
//! ending of a forwarded request writes its outcome record.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::extra::*;
use portcullis_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every wait that is not a deliberate delay.
const T: Duration = Duration::from_secs(10);

const ECHO: &str = "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";

const WS_HEADERS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// A smuggling-shaped request (Content-Length and Transfer-Encoding together).
const SMUGGLED: &str = "POST /echo HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

fn show(a: &AfterResponse) -> String {
    match a {
        AfterResponse::Data(d) => format!("more bytes: {:?}", String::from_utf8_lossy(d)),
        other => format!("{other:?}"),
    }
}

/// One request with a raw (possibly binary) body through a fresh h1 tunnel.
async fn h1_bytes(proxy: &TestProxy, host: &str, head: &str, body: &[u8]) -> RawResponse {
    let mut tls = proxy
        .tunnel_tls(&format!("{host}:443"), host, &[b"http/1.1"])
        .await;
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    tls.write_all(&req).await.unwrap();
    read_response(&mut tls).await
}

/// `POST /v1/chat/completions` with a JSON body and extra header lines.
async fn post_chat(proxy: &TestProxy, host: &str, extra: &str, body: &[u8]) -> RawResponse {
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    h1_bytes(proxy, host, &head, body).await
}

/// Matches the decision record of a request by its path template.
fn decision_at(template: &'static str) -> impl Fn(&Value) -> bool {
    move |r: &Value| r["kind"] == "decision" && r["path_template"] == template
}

// 1. CONNECT auth failure closes the connection ------------------------------

mod body;
mod outcome;
mod tunnel;
