//! What can be checked of `deploy/` without a cluster:
//!
//! - every YAML file parses, every config (`*.toml`, and each `portcullis.toml` embedded in
//!   a ConfigMap, raw or rendered by the Helm chart) passes `portcullis check`;
//! - the manifests agree with themselves: the sidecar runs as the UID the iptables rules
//!   exempt, listens where they redirect, probes `/readyz` on the admin port its config
//!   binds; no probe (nor anything else in a pod spec) carries a credential, since
//!   `/readyz` is public; the ServiceMonitor's Secret holds the token whose hash the
//!   config has; only the iptables init container has capabilities; Services, the PDB,
//!   the HPA and the ServiceMonitor select what exists;
//! - the manifests pass the Kubernetes API schemas (strict: unknown fields are errors);
//! - the Helm chart renders in both modes with Helm's own engine (the Helm Go SDK, from the
//!   `helm-python-sdk` wheel the test venv installs) and passes `helm lint`;
//! - `iptables.sh` does what it says, for real, in network namespaces;
//! - `prepare.sh` copies key files with the modes the proxy demands;
//! - the systemd unit passes `systemd-analyze verify` and its security review.
//!
//! What it does not prove: that a cluster admits and runs the pods (image pulls, the CNI,
//! kubelet behaviour such as native sidecar ordering), that the Prometheus Operator accepts
//! the ServiceMonitor (its CRD schema is not bundled), or that the images build.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use portcullis_tests::{portcullis_bin, sdk_python, sha256_hex};
use serde_yaml::Value;

mod host;
mod manifests;
mod schemas;

use manifests::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Files under `dir` (recursively) whose name ends with one of `exts`, sorted.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if exts
                .iter()
                .any(|e| path.to_string_lossy().ends_with(&format!(".{e}")))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every non-empty document of a (multi-document) YAML text.
fn parse_docs(name: &str, text: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

/// The raw (not templated) manifests: everything under deploy/ but the Helm templates.
fn raw_yaml_files() -> Vec<PathBuf> {
    let templates = deploy().join("helm/portcullis/templates");
    files(&deploy(), &["yaml", "yml"])
        .into_iter()
        .filter(|p| !p.starts_with(&templates))
        .collect()
}

/// The Kubernetes manifests among them (the chart's Chart.yaml and values.yaml are not).
fn manifest_files() -> Vec<PathBuf> {
    let kubernetes = deploy().join("kubernetes");
    raw_yaml_files()
        .into_iter()
        .filter(|p| p.starts_with(&kubernetes))
        .collect()
}

fn raw_docs(rel_path: &str) -> Vec<Value> {
    parse_docs(rel_path, &read(rel_path))
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn seq(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_sequence).cloned().unwrap_or_default()
}

fn int_of(v: Option<&Value>) -> Option<i64> {
    v.and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
}

/// `portcullis check` on a config text; Err(stderr) when it fails.
fn check_config(name: &str, text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    check_file(&file)
}

fn check_file(file: &Path) -> Result<(), String> {
    let out = Command::new(portcullis_bin())
        .arg("check")
        .arg(file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// (ConfigMap name, portcullis.toml) for each ConfigMap that embeds a config.
fn embedded_configs(docs: &[Value]) -> Vec<(String, String)> {
    docs.iter()
        .filter(|d| str_of(d, &["kind"]) == Some("ConfigMap"))
        .filter_map(|d| {
            let name = str_of(d, &["metadata", "name"])?.to_owned();
            let toml = str_of(d, &["data", "portcullis.toml"])?.to_owned();
            Some((name, toml))
        })
        .collect()
}

/// The plaintext of every key of the set's Secrets (`stringData`, and `data` decoded), by
/// (Secret name, key).
fn secret_values(docs: &[Value]) -> HashMap<(String, String), String> {
    use base64::Engine;
    let mut out = HashMap::new();
    for d in docs
        .iter()
        .filter(|d| str_of(d, &["kind"]) == Some("Secret"))
    {
        let name = str_of(d, &["metadata", "name"]).unwrap_or("?").to_owned();
        let entries = |k: &str| -> Vec<(String, String)> {
            d.get(k)
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (key, value) in entries("stringData") {
            out.insert((name.clone(), key), value);
        }
        for (key, value) in entries("data") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_bytes())
                .unwrap_or_else(|e| panic!("Secret {name} key {key}: {e}"));
            out.insert((name.clone(), key), String::from_utf8(bytes).unwrap());
        }
    }
    out
}

#[test]
fn every_yaml_file_under_deploy_outside_the_helm_templates_parses() {
    let files = raw_yaml_files();
    assert!(files.len() >= 12, "expected the manifests, found {files:?}");
    let manifests = manifest_files();
    for file in &files {
        let docs = parse_docs(&rel(file), &std::fs::read_to_string(file).unwrap());
        assert!(!docs.is_empty(), "{}: no document", rel(file));
        if manifests.contains(file) {
            for doc in docs {
                assert!(
                    str_of(&doc, &["apiVersion"]).is_some() && str_of(&doc, &["kind"]).is_some(),
                    "{}: a document without apiVersion and kind",
                    rel(file)
                );
            }
        }
    }
    let chart = raw_docs("deploy/helm/portcullis/Chart.yaml");
    assert_eq!(str_of(&chart[0], &["apiVersion"]), Some("v2"));
    assert_eq!(str_of(&chart[0], &["name"]), Some("portcullis"));
    let values = raw_docs("deploy/helm/portcullis/values.yaml");
    assert_eq!(str_of(&values[0], &["mode"]), Some("central"));
}

#[test]
fn every_config_under_deploy_passes_portcullis_check() {
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for file in files(&deploy(), &["toml"]) {
        checked.push(rel(&file));
        if let Err(e) = check_file(&file) {
            failures.push(format!("{}:\n{e}", rel(&file)));
        }
    }
    for file in raw_yaml_files() {
        for (name, text) in embedded_configs(&parse_docs(
            &rel(&file),
            &std::fs::read_to_string(&file).unwrap(),
        )) {
            let what = format!("{} (ConfigMap {name})", rel(&file));
            checked.push(what.clone());
            if let Err(e) = check_config(&name, &text) {
                failures.push(format!("{what}:\n{e}"));
            }
        }
    }
    assert!(
        checked.len() >= 6,
        "expected the example configs, checked {checked:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
