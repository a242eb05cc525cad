//! The framing guard on hand-written streams: pipelined and chunked requests pass, smuggling
//! heads become synthetic error requests, and a head split across reads is reassembled.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn run(input: &[u8]) -> io::Result<(Vec<u8>, bool)> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client.write_all(input).await?;
    client.shutdown().await?;
    let mut g = FramingGuard::new(server, "N".into(), 8192);
    let mut out = Vec::new();
    // After a rejected head the guard stays pending (hyper closes the
    // connection once the error response is written), so read until idle.
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(300), g.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok((out, false)),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return Ok((out, true)),
        }
    }
}

fn synthetic(code: &str) -> String {
    format!("{FRAMING_HEADER}: N {code}\r\n")
}

#[tokio::test]
async fn valid_pipelined_requests_pass_through_unchanged() -> io::Result<()> {
    let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
    let (out, failed) = run(input).await?;
    assert!(!failed);
    assert_eq!(out, input.to_vec());
    Ok(())
}

#[tokio::test]
async fn chunked_body_without_trailers_is_followed_by_next_head() -> io::Result<()> {
    let input = b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n\n";
    let (out, failed) = run(input).await?;
    assert!(!failed);
    assert_eq!(out, input.to_vec());
    Ok(())
}

#[tokio::test]
async fn each_smuggling_head_is_replaced_by_a_synthetic_error_request() -> io::Result<()> {
    let table: &[(&[u8], &str)] = &[
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "cl_and_te"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "cl_and_te"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "duplicate_content_length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\n", "bad_content_length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported_transfer_encoding"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "unsupported_transfer_encoding"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", "unsupported_transfer_encoding"),
        (b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "unsupported_transfer_encoding"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", "obs_fold"),
        (b"GET / HTTP/1.1\nHost: x\n\n", "bare_lf"),
        (b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", "bare_cr"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", "nul_byte"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "multiple_host"),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", "malformed_head"),
    ];
    for (input, code) in table {
        let (out, failed) = run(input).await?;
        let text = String::from_utf8_lossy(&out);
        assert!(!failed, "{code}");
        assert!(
            text.starts_with("GET /portcullis-framing-error"),
            "{code}: {text}"
        );
        assert!(text.contains(&synthetic(code)), "{code}: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_second_head_keeps_first_request_intact() -> io::Result<()> {
    let first = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut input = first.to_vec();
    input.extend_from_slice(
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nX",
    );
    let (out, _) = run(&input).await?;
    assert!(out.starts_with(first));
    assert!(String::from_utf8_lossy(&out[first.len()..]).contains("duplicate_content_length"));
    Ok(())
}

#[tokio::test]
async fn oversized_head_is_refused_with_head_too_large() -> io::Result<()> {
    let mut input = b"GET / HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 9000));
    input.extend_from_slice(b"\r\n\r\n");
    let (out, _) = run(&input).await?;
    assert!(String::from_utf8_lossy(&out).contains("head_too_large"));
    Ok(())
}

#[tokio::test]
async fn bad_chunk_size_fails_the_stream() -> io::Result<()> {
    let input = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let (_, failed) = run(input).await?;
    assert!(failed);
    let input =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n";
    let (_, failed) = run(input).await?;
    assert!(failed);
    let input =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n";
    let (_, failed) = run(input).await?;
    assert!(failed);
    Ok(())
}

#[tokio::test]
async fn connect_head_switches_to_passthrough() -> io::Result<()> {
    let input = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01\n\n\0";
    let (out, failed) = run(input).await?;
    assert!(!failed);
    assert_eq!(out, input.to_vec());
    Ok(())
}

#[tokio::test]
async fn head_split_across_many_reads_is_reassembled() -> io::Result<()> {
    let (mut client, server) = tokio::io::duplex(8);
    let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_vec();
    let writer = tokio::spawn(async move {
        for b in input.chunks(3) {
            client.write_all(b).await?;
        }
        client.shutdown().await
    });
    let mut g = FramingGuard::new(server, "N".into(), 8192);
    let mut out = Vec::new();
    g.read_to_end(&mut out).await?;
    writer.await??;
    assert_eq!(
        out,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_vec()
    );
    Ok(())
}
