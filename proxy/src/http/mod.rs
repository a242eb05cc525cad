//! Protocol hygiene, with no policy in it: strict HTTP/1 framing, canonical
//! paths, header scrubbing, body wrappers and the raw byte relay.

pub mod body;
pub mod framing;
pub mod headers;
pub mod path;
pub mod relay;
pub mod usage;

/// Serves a hyper connection until it ends. When `$drain` fires, it stops
/// taking new requests and lets those in flight finish; when `$close` fires,
/// it is dropped, and with it every request still running (whose outcome
/// guards then write their records).
macro_rules! serve_with_drain {
    ($conn:expr, $drain:expr, $close:expr) => {
        serve_with_drain!($conn, $drain, $close, idle: std::future::pending::<()>())
    };
    // `idle` resolving (see `ConnSlot::idle`) shuts the connection down the
    // same gentle way as a drain: HTTP/1 closes between requests, HTTP/2 sends
    // GOAWAY and lets open streams finish.
    ($conn:expr, $drain:expr, $close:expr, idle: $idle:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = async { tokio::select! { _ = $drain => (), _ = $idle => () } } => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = $close => Ok(()),
                }
            }
        }
    }};
}
