//! The tools beside the proxy: the SDK venv's Python, the built binary, ledger files.

use super::*;

/// The venv Python with the pinned `openai` and `anthropic` SDKs, created by
/// the README's test command. A missing interpreter is a test failure, never
/// a skip.
/// Runs a Python script with the pinned SDKs as an agent behind `proxy`:
/// `HTTPS_PROXY` with the test agent's token, and the proxy CA trusted.
/// Returns (stdout, stderr, success).
pub fn run_python(proxy: &TestProxy, script: &str) -> (String, String, bool) {
    let out = std::process::Command::new(sdk_python())
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", proxy.dir.path())
        .env("HTTPS_PROXY", proxy.proxy_url(AGENT, TOKEN))
        .env("SSL_CERT_FILE", &proxy.ca_pem_path)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

pub fn sdk_python() -> PathBuf {
    let p = std::env::var_os("PORTCULLIS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run the README's test command (it creates the SDK venv) or set PORTCULLIS_TEST_PYTHON",
        p.display()
    );
    p
}

/// The `portcullis` binary built beside this test executable (cargo builds it
/// for the proxy crate's own CLI tests in the same `cargo test --workspace`).
pub fn portcullis_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("portcullis");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p portcullis`, or run the README's test command)",
        bin.display()
    );
    bin
}

/// Every JSON record in a ledger directory's segments, in file order.
pub fn ledger_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

/// A `portcullis run` child process, killed on drop.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ProxyProcess {
    /// Starts the binary with `--config FILE` and waits for its `# ready` line.
    pub fn start(config: &Path, cwd: &Path) -> ProxyProcess {
        Self::start_logging(config, cwd, "warn", std::process::Stdio::inherit())
    }

    /// Like `start`, with a log filter and where stderr (the logs) goes.
    pub fn start_logging(
        config: &Path,
        cwd: &Path,
        filter: &str,
        stderr: std::process::Stdio,
    ) -> ProxyProcess {
        Self::start_with_env(config, cwd, filter, stderr, &[])
    }

    /// Like `start_logging`, with extra environment (e.g. `PORTCULLIS_MASTER_KEY`).
    pub fn start_with_env(
        config: &Path,
        cwd: &Path,
        filter: &str,
        stderr: std::process::Stdio,
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        let mut cmd = std::process::Command::new(portcullis_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .current_dir(cwd)
            .envs(env.iter().copied())
            .env("PORTCULLIS_LOG", filter)
            .stderr(stderr);
        Self::spawn(cmd)
    }

    /// Spawns `cmd` (a `portcullis run`, possibly under a wrapper such as
    /// `unshare`) with stdout piped, and waits for its `# ready` line.
    pub fn spawn(mut cmd: std::process::Command) -> ProxyProcess {
        use std::io::BufRead;
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut addr = None;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("# listening: forward=") {
                    addr = a.parse::<SocketAddr>().ok();
                }
                if line == "# ready" {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .expect("proxy did not print its listening address and '# ready'");
        ProxyProcess { child, addr }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
