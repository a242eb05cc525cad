//! The `portcullis` binary as a user meets it: `--help`, `check`, `ca`,
//! `agent hash-token`, and `run` on the embedded default with no files.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn help_lists_every_subcommand() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "run",
        "check",
        "ca",
        "agent",
        "--config",
        "--upstream-ca",
        "--resolve",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

#[test]
fn check_reports_every_error_at_once_with_file_line_col_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"version = 1

[[tenants]]
id = "acme"

[[routes]]
id = "r1"
tenants = ["nope"]
hosts = ["api.*.com"]
action = "allow"

[[routes]]
id = "r1"
hosts = ["api.openai.com"]
paths = ["v1/chat"]
action = "allow"
"#,
    )
    .unwrap();
    let out = bin().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = path.display().to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&name)).collect();
    assert!(lines.len() >= 4, "expected every error at once:\n{err}");
    for l in &lines {
        let rest = &l[name.len()..];
        let mut parts = rest.splitn(4, ':');
        assert_eq!(parts.next(), Some(""));
        assert!(
            parts.next().unwrap().parse::<usize>().is_ok(),
            "no line in {l}"
        );
        assert!(
            parts.next().unwrap().parse::<usize>().is_ok(),
            "no column in {l}"
        );
    }
    assert!(
        err.contains(&format!("{name}:8:")),
        "unknown tenant at line 8:\n{err}"
    );
    assert!(
        err.contains(&format!("{name}:9:")),
        "bad host at line 9:\n{err}"
    );
    assert!(
        err.contains(&format!("{name}:13:")),
        "duplicate id at line 13:\n{err}"
    );
    assert!(
        err.contains(&format!("{name}:15:")),
        "bad path at line 15:\n{err}"
    );
}

#[test]
fn every_example_config_in_deploy_passes_check() {
    let mut n = 0;
    for entry in std::fs::read_dir(workspace().join("deploy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        n += 1;
        let out = bin().arg("check").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{} failed check:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(n >= 2, "expected example configs in deploy/");
}

#[test]
fn ca_init_creates_a_private_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = bin()
        .args(["ca", "init", "--dir"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = ca.join("ca.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&key).unwrap();
    let again = bin()
        .args(["ca", "init", "--dir"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&key).unwrap(), before);

    let show = bin()
        .args(["ca", "show", "--dir"])
        .arg(&ca)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("sha256:"), "{text}");
    assert!(text.contains("export SSL_CERT_FILE="), "{text}");
    let export = bin()
        .args(["ca", "export", "--dir"])
        .arg(&ca)
        .output()
        .unwrap();
    let pem = String::from_utf8_lossy(&export.stdout);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(pem, std::fs::read_to_string(ca.join("ca.pem")).unwrap());
}

#[test]
fn hash_token_prints_sha256_of_stdin() {
    let mut child = bin()
        .args(["agent", "hash-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn run_with_no_files_uses_the_embedded_default_and_prints_exports() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("PORTCULLIS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            let done = line == "# ready";
            lines.push(line);
            if done {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let lines = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no '# ready' line");
    let text = lines.join("\n");
    let ca = std::fs::canonicalize(dir.path().join(".portcullis/ca/ca.pem")).unwrap();
    for var in [
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "CARGO_HTTP_CAINFO",
    ] {
        assert!(
            text.contains(&format!("export {var}={}", ca.display())),
            "{var}:\n{text}"
        );
    }
    let addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("# listening: forward="))
        .expect("listening line");
    assert!(
        text.contains(&format!("export HTTPS_PROXY=http://{addr}")),
        "{text}"
    );
    let key = dir.path().join(".portcullis/ca/ca.key");
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The embedded policy denies what is not a model provider: a CONNECT to
    // another host on a non-TLS port is refused outright.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"CONNECT example.com:22 HTTP/1.1\r\nHost: example.com:22\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    BufReader::new(&s).read_line(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    // SIGTERM drains and exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn explain_prints_classification_route_and_verdict_without_sending() {
    let cfg = workspace().join("deploy/portcullis.example.toml");
    let run = |method: &str, url: &str| {
        let out = bin()
            .arg("explain")
            .arg("--config")
            .arg(&cfg)
            .args(["--agent", "research-bot", method, url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ok = run("POST", "https://api.openai.com/v1/chat/completions");
    assert!(ok.contains("provider=openai"), "{ok}");
    assert!(ok.contains("operation=chat"), "{ok}");
    assert!(ok.contains("verdict:        allow"), "{ok}");
    assert!(ok.contains("route:          acme-openai-chat"), "{ok}");
    let denied = run("POST", "https://api.anthropic.com/v1/files");
    assert!(denied.contains("verdict:        deny"), "{denied}");
    assert!(denied.contains("no-file-uploads"), "{denied}");
    let none = run("GET", "https://evil.example.com/");
    assert!(none.contains("no_route"), "{none}");
}

#[test]
fn sigterm_the_moment_it_says_ready_is_a_clean_shutdown_not_a_kill() {
    // A supervisor may stop the proxy right after `# ready`: the signal
    // handlers must already be in place by then.
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = bin()
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env("PORTCULLIS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "no '# ready'");
            if line.trim_end() == "# ready" {
                break;
            }
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
    }
}
