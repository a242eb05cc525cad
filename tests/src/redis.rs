//! A real `redis-server` for the shared-state tests: on a free loopback port,
//! without persistence, in its own temporary directory, killed on drop. It
//! can be killed and restarted on the same port, to show that the proxy fails
//! closed while it is gone and recovers when it is back. A missing
//! `redis-server` fails the test loudly; it never skips.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub async fn start() -> RedisServer {
        Self::start_with_password(None).await
    }

    /// Like [`RedisServer::start`], with `requirepass`.
    pub async fn start_with_password(password: Option<&str>) -> RedisServer {
        // Bind, read the port, release: redis-server needs a real port number.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut server = RedisServer {
            child: None,
            port,
            password: password.map(str::to_owned),
            dir: tempfile::tempdir().unwrap(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("redis-server could not be started ({e}); the test command installs it (apt-get install redis-server)")
        });
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.answers().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} never answered PING",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The URL a `[state]` table names (with the password, if any).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The `[state]` table for this server.
    pub fn state_table(&self) -> String {
        format!(
            "[state]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"300ms\"\n",
            self.url()
        )
    }

    /// Kills the server (SIGKILL): what a crash or a partition looks like.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Whether the server answers `PING` (`AUTH` first if it has a password).
    pub async fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if let Some(p) = &self.password {
            let auth = format!("AUTH {p}\r\n");
            let mut ok = [0u8; 5];
            if s.write_all(auth.as_bytes()).await.is_err()
                || s.read_exact(&mut ok).await.is_err()
                || &ok != b"+OK\r\n"
            {
                return false;
            }
        }
        let mut pong = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut pong).await.is_ok()
            && &pong == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
