// #[cfg(test)]: the Redis scripts against a real `redis-server` (started here
// on a free loopback port), mirroring the memory backend's tests. A missing
// redis-server fails these tests; they never skip.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use portcullis_rules::RedisUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::super::approvals::{Approvals, DecideError, Ended, Held, Verdict};
use super::super::memory::DAY;
use super::super::{Ask, Budgets, Scope};
use super::{RedisApprovals, RedisBudgets, RedisConn};

/// A throwaway `redis-server` on 127.0.0.1, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not be started ({e}); install it: apt-get install redis-server")
            });
        let server = Server {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..200 {
            if server.pings().await {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {port} never answered PING");
    }

    async fn pings(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    fn conn(&self) -> RedisConn {
        let url = RedisUrl::parse(&format!("redis://127.0.0.1:{}/0", self.port)).unwrap();
        RedisConn::open(&url, Duration::from_millis(500)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn noon() -> u64 {
    20_000 * DAY + DAY / 2
}

fn ask(key: &str, scope: Scope, tokens_per_day: Option<u64>, rpm: Option<u32>, tokens: u64) -> Ask {
    Ask {
        key: Ask::key("acme", scope, key),
        scope,
        tokens_per_day,
        requests_per_minute: rpm,
        tokens,
    }
}

#[tokio::test]
async fn the_request_that_would_cross_the_budget_is_refused_up_front() {
    let server = Server::start().await;
    let b = RedisBudgets::with_clock(server.conn(), noon);
    let a = [ask("r", Scope::Route, Some(100), None, 60)];
    let first = b.reserve(&a).await.unwrap().unwrap();
    assert_eq!(first.remaining, vec![(Scope::Route, 40)]);
    let refused = b.reserve(&a).await.unwrap().unwrap_err();
    assert!(refused.tokens);
    assert_eq!(refused.scope, Scope::Route);
    assert_eq!(refused.retry_after, Duration::from_secs(DAY / 2));
}

#[tokio::test]
async fn settling_replaces_the_reservation_with_the_tokens_used() {
    let server = Server::start().await;
    let b = RedisBudgets::with_clock(server.conn(), noon);
    let a = [ask("r", Scope::Route, Some(100), None, 60)];
    let r = b.reserve(&a).await.unwrap().unwrap();
    b.settle(r, 10).await;
    // 10 used, so another 60 fits and a third does not.
    assert!(b.reserve(&a).await.unwrap().is_ok());
    assert!(b.reserve(&a).await.unwrap().is_err());
}

#[tokio::test]
async fn all_scopes_are_charged_or_none() {
    let server = Server::start().await;
    let b = RedisBudgets::with_clock(server.conn(), noon);
    let tight = ask("bot", Scope::Agent, Some(50), None, 40);
    let loose = ask("acme", Scope::Tenant, Some(1_000), None, 40);
    assert!(b
        .reserve(&[loose.clone(), tight.clone()])
        .await
        .unwrap()
        .is_ok());
    let refused = b
        .reserve(&[loose.clone(), tight])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.scope, Scope::Agent);
    // The refused request charged nothing to the tenant: 960 are left.
    let rest = ask("acme", Scope::Tenant, Some(1_000), None, 960);
    assert!(b.reserve(&[rest]).await.unwrap().is_ok());
}

#[tokio::test]
async fn request_rate_is_limited_per_minute_with_a_truthful_retry_after() {
    fn at_20s() -> u64 {
        20_000 * DAY + 20
    }
    fn next_minute() -> u64 {
        20_000 * DAY + 61
    }
    let server = Server::start().await;
    let b = RedisBudgets::with_clock(server.conn(), at_20s);
    let a = [ask("r", Scope::Route, None, Some(2), 0)];
    assert!(b.reserve(&a).await.unwrap().is_ok());
    assert!(b.reserve(&a).await.unwrap().is_ok());
    let refused = b.reserve(&a).await.unwrap().unwrap_err();
    assert!(!refused.tokens);
    assert_eq!(refused.retry_after, Duration::from_secs(40));
    // A new minute is a new window.
    let later = RedisBudgets::with_clock(server.conn(), next_minute);
    assert!(later.reserve(&a).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_settle_after_midnight_leaves_the_new_day_alone() {
    fn tomorrow() -> u64 {
        20_001 * DAY + 10
    }
    let server = Server::start().await;
    let today = RedisBudgets::with_clock(server.conn(), noon);
    let a = [ask("r", Scope::Route, Some(100), None, 60)];
    let r = today.reserve(&a).await.unwrap().unwrap();
    let next = RedisBudgets::with_clock(server.conn(), tomorrow);
    let fresh = next.reserve(&a).await.unwrap().unwrap();
    assert_eq!(fresh.remaining, vec![(Scope::Route, 40)]);
    // Yesterday's reservation settling to 0 must not credit today's window.
    next.settle(r, 0).await;
    assert!(next.reserve(&a).await.unwrap().is_err());
}

#[tokio::test]
async fn window_keys_expire_with_their_window() {
    let server = Server::start().await;
    let conn = server.conn();
    let b = RedisBudgets::with_clock(conn.clone(), noon);
    let a = [ask("r", Scope::Route, Some(100), Some(5), 1)];
    b.reserve(&a).await.unwrap().unwrap();
    let mut c = conn.conn();
    let day = noon() / DAY;
    let minute = noon() / 60;
    let token_ttl: i64 = ::redis::cmd("TTL")
        .arg(format!("portcullis:acme:route:r:tokens:{day}"))
        .query_async(&mut c)
        .await
        .unwrap();
    let rate_ttl: i64 = ::redis::cmd("TTL")
        .arg(format!("portcullis:acme:route:r:rpm:{minute}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(token_ttl > 0 && token_ttl <= 86_400 / 2 + 60, "{token_ttl}");
    assert!(rate_ttl > 0 && rate_ttl <= 120, "{rate_ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_from_two_handles_never_pass_the_budget() {
    let server = Server::start().await;
    // Two connections, as two replicas would have.
    let one = Arc::new(RedisBudgets::with_clock(server.conn(), noon));
    let two = Arc::new(RedisBudgets::with_clock(server.conn(), noon));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let b = if i % 2 == 0 { one.clone() } else { two.clone() };
        tasks.push(tokio::spawn(async move {
            let a = [
                ask("acme", Scope::Tenant, Some(1_000), None, 100),
                ask("r", Scope::Route, None, Some(1_000), 100),
            ];
            b.reserve(&a).await.unwrap().is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let url = RedisUrl::parse(&format!("redis://:s3cret@127.0.0.1:{port}/0")).unwrap();
    let conn = RedisConn::open(&url, Duration::from_millis(300)).unwrap();
    let started = tokio::time::Instant::now();
    let e = conn.ping().await.unwrap_err().to_string();
    assert!(!e.contains("s3cret"), "{e}");
    let b = RedisBudgets::with_clock(conn.clone(), noon);
    let a = [ask("r", Scope::Route, Some(100), None, 1)];
    assert!(b.reserve(&a).await.is_err());
    let approvals = RedisApprovals::new(conn);
    assert!(approvals.list().await.is_err());
    assert!(approvals.granted("acme", "bot", "r").await.is_err());
    assert!(matches!(
        approvals.decide("abc", Verdict::Deny, "admin").await,
        Err(DecideError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn held(id: &str) -> Held {
    Held::new(
        id.into(),
        "acme".into(),
        "bot".into(),
        "r".into(),
        "POST".into(),
        "api.openai.com".into(),
        "/v1/chat/completions".into(),
        Some("gpt-4o".into()),
        10,
        vec!["injection".into()],
    )
}

#[tokio::test]
async fn an_approval_on_one_handle_releases_the_hold_on_another_and_leaves_a_grant() {
    let server = Server::start().await;
    let holder = RedisApprovals::new(server.conn());
    let approver = RedisApprovals::new(server.conn());
    let w = holder
        .hold(held("e1"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(holder.pending(), 1);
    let listed = approver.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "e1");
    assert_eq!(listed[0].tenant, "acme");
    assert_eq!(listed[0].model.as_deref(), Some("gpt-4o"));
    assert!(listed[0].expires_in > 25 && listed[0].expires_in <= 30);
    let grant = Some(Duration::from_secs(600));
    let decided = approver
        .decide("e1", Verdict::Approve { grant }, "admin:abc")
        .await
        .unwrap();
    assert_eq!(decided.route, "r");
    assert_eq!(
        w.wait().await,
        Ended::Decided(Verdict::Approve { grant }, "admin:abc".into())
    );
    assert_eq!(holder.pending(), 0);
    assert!(holder.granted("acme", "bot", "r").await.unwrap());
    assert!(!holder.granted("acme", "bot", "other").await.unwrap());
    assert!(!holder.granted("globex", "bot", "r").await.unwrap());
    assert!(approver.list().await.unwrap().is_empty());
    // Decided once: a second verdict finds nothing.
    assert_eq!(
        approver.decide("e1", Verdict::Deny, "admin").await.err(),
        Some(DecideError::NotFound)
    );
}

#[tokio::test]
async fn a_denial_reaches_the_holder_and_grants_nothing() {
    let server = Server::start().await;
    let holder = RedisApprovals::new(server.conn());
    let approver = RedisApprovals::new(server.conn());
    let w = holder
        .hold(held("e2"), Duration::from_secs(30))
        .await
        .unwrap();
    approver.decide("e2", Verdict::Deny, "admin").await.unwrap();
    assert_eq!(
        w.wait().await,
        Ended::Decided(Verdict::Deny, "admin".into())
    );
    assert!(!holder.granted("acme", "bot", "r").await.unwrap());
}

#[tokio::test]
async fn an_unanswered_hold_times_out_and_leaves_the_list() {
    let server = Server::start().await;
    let a = RedisApprovals::new(server.conn());
    let w = a
        .hold(held("e3"), Duration::from_millis(400))
        .await
        .unwrap();
    assert_eq!(w.wait().await, Ended::TimedOut);
    assert!(a.list().await.unwrap().is_empty());
    assert_eq!(
        a.decide("e3", Verdict::Deny, "admin").await.err(),
        Some(DecideError::NotFound)
    );
    let mut c = server.conn().conn();
    let index: i64 = ::redis::cmd("ZCARD")
        .arg("portcullis:approvals")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(index, 0);
}

#[tokio::test]
async fn an_abandoned_hold_leaves_the_list() {
    let server = Server::start().await;
    let a = RedisApprovals::new(server.conn());
    let w = a.hold(held("e4"), Duration::from_secs(30)).await.unwrap();
    drop(w);
    assert_eq!(a.pending(), 0);
    // The cleanup runs on a spawned task.
    for _ in 0..100 {
        if a.list().await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("an abandoned hold is still listed");
}

#[tokio::test]
async fn a_verdict_given_just_before_the_timeout_is_honoured() {
    let server = Server::start().await;
    let holder = RedisApprovals::new(server.conn());
    let approver = RedisApprovals::new(server.conn());
    // Shorter than one poll: the verdict is only found by the timeout's cleanup.
    let w = holder
        .hold(held("e5"), Duration::from_millis(100))
        .await
        .unwrap();
    approver.decide("e5", Verdict::Deny, "admin").await.unwrap();
    assert_eq!(
        w.wait().await,
        Ended::Decided(Verdict::Deny, "admin".into())
    );
}

#[tokio::test]
async fn ids_outside_the_id_alphabet_are_not_found() {
    let server = Server::start().await;
    let a = RedisApprovals::new(server.conn());
    for id in ["", "*", "a:b", "x y", &"a".repeat(65)] {
        assert_eq!(
            a.decide(id, Verdict::Deny, "admin").await.err(),
            Some(DecideError::NotFound),
            "{id:?}"
        );
    }
}
