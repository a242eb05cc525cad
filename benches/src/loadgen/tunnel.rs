//! The bare CONNECT tunnel: read the CONNECT, dial, answer 200, splice. No
//! policy, no TLS, no record: the floor under any proxy that tunnels.
//!
//! It runs as its own process (`portcullis-loadgen --serve-tunnel ORIGIN`), pinned
//! like the other proxies, so its CPU and memory are read the same way. It dials
//! `ORIGIN` whatever the CONNECT names, as a resolver that knows one address would.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CONNECT head longer than this is refused.
const MAX_HEAD: usize = 8 * 1024;

pub async fn serve(upstream: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("# listening: {}", listener.local_addr()?);
    println!("# ready");
    loop {
        let (client, _) = listener.accept().await.context("accept")?;
        tokio::spawn(async move {
            let _ = splice(client, upstream).await;
        });
    }
}

async fn splice(mut client: TcpStream, upstream: SocketAddr) -> Result<()> {
    client.set_nodelay(true)?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD {
            client
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    if !head.starts_with(b"CONNECT ") {
        client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await?;
        return Ok(());
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    server.set_nodelay(true)?;
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    // Bytes the client sent after the head (its ClientHello, if it did not wait).
    server.write_all(&head[end..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
