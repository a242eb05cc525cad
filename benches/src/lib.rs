//! Portcullis benchmarks. They print figures; no test asserts a timing.
//!
//! - `portcullis-loadgen` ([`loadgen`]): the proxy path end to end, direct, through
//!   Portcullis with both ledger sync modes and, with `--peers`, through a bare
//!   CONNECT tunnel, Squid ssl-bump and mitmproxy, in one run.
//! - `cargo bench -p portcullis-benches --bench ledger_append`: ledger appends per second
//!   and p99 append wait with `sync = always` and `batch`, at 1, 16 and 256 concurrent
//!   writers, and the group-commit ratio (always@256 / always@1).
//! - `cargo bench -p portcullis-benches --bench decide`: the decision function on 10,000
//!   routes over 2,000 hosts (host index vs. a linear scan in the same run), and the
//!   detectors on a 100 KiB chat body.
//!
//! The machine is noisy (2 shared cores), so every bench reports ratios against a
//! baseline measured in the same run.
#![forbid(unsafe_code)]

pub mod loadgen;
