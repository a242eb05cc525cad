//! End-to-end test support for Portcullis: real TLS origins on loopback that
//! pose as model providers, an in-process proxy, and raw clients.
//!
//! Everything binds `127.0.0.1:0`. The proxy reaches the origins only through
//! explicit opt-ins: `[upstream] resolve` pins (e.g. `api.openai.com:443` to
//! the origin's port) plus the origin's private CA in `extra_ca`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)] // test support: a failed setup should fail loudly

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use portcullis::RunningProxy;
mod client;
pub mod extra;
pub mod h2raw;
pub mod netns;
mod origin;
mod process;
mod proxy;
pub mod redis;

pub use client::*;
pub use origin::*;
pub use process::*;
pub use proxy::*;

/// Default agent credentials used by [`proxy_config`].
pub const AGENT: &str = "research-bot";
pub const TOKEN: &str = "s3cret-agent-token";
/// An agent of another tenant.
pub const OTHER_AGENT: &str = "other-bot";
pub const OTHER_TOKEN: &str = "other-agent-token";

/// The admin API's bearer token in test configs.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// A provider-key-shaped secret the `/leak` endpoint streams back.
pub const LEAKED_KEY: &str = "sk-proj-Zq7RmV2xLk9PbT4cWn8YhJ3sDf6GuA1eQo5Ir0Xt";

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}
