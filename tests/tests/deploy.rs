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

const PROBES: [&str; 3] = ["startupProbe", "readinessProbe", "livenessProbe"];

/// What in a pod spec would put a credential in it: any header on a probe (`/healthz` and
/// `/readyz` are public, so a probe needs none, and a header is where a token goes), a
/// query string on a probe's path, a `Bearer` anywhere, or one of `tokens` (the set's
/// admin tokens in plaintext) anywhere. A pod spec is readable by anyone who can read the
/// Deployment, and in the sidecar the agent shares the admin API's network namespace.
fn credential_problems(pod: &Value, tokens: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for c in all_containers(pod) {
        let name = str_of(&c, &["name"]).unwrap_or("?");
        for kind in PROBES {
            let Some(probe) = c.get(kind) else { continue };
            for h in seq(at(probe, &["httpGet", "httpHeaders"])) {
                let header = str_of(&h, &["name"]).unwrap_or("?");
                problems.push(format!(
                    "{name}: {kind} sends the header {header}: probes must carry no credential (/readyz is public)"
                ));
            }
            if str_of(probe, &["httpGet", "path"]).is_some_and(|path| path.contains('?')) {
                problems.push(format!(
                    "{name}: {kind} has a query string: probes must carry no credential"
                ));
            }
        }
    }
    let text = serde_yaml::to_string(pod).unwrap();
    if text.to_ascii_lowercase().contains("bearer ") {
        problems.push("the pod spec holds a bearer token".into());
    }
    for token in tokens {
        if text.contains(token.as_str()) {
            problems.push("the pod spec holds the admin token in plaintext".into());
        }
    }
    problems
}

fn all_containers(pod: &Value) -> Vec<Value> {
    let mut out = seq(pod.get("initContainers"));
    out.extend(seq(pod.get("containers")));
    out
}

fn container<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|c| str_of(c, &["name"]) == Some(name))
}

fn env_of(c: &Value, name: &str) -> Option<String> {
    seq(c.get("env"))
        .iter()
        .find(|e| str_of(e, &["name"]) == Some(name))
        .and_then(|e| str_of(e, &["value"]).map(str::to_owned))
}

fn port_of(bind: &str) -> u16 {
    bind.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The UID a container runs as: its own securityContext, else the pod's.
fn uid_of(pod: &Value, c: &Value) -> Option<i64> {
    int_of(at(c, &["securityContext", "runAsUser"]))
        .or_else(|| int_of(at(pod, &["securityContext", "runAsUser"])))
}

/// The consistency rules every workload of ours follows, for raw and rendered manifests
/// alike. `docs` is one deployable set (a kustomization, or one Helm render). Returns
/// every violation.
fn workload_problems(set: &str, docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut p = |m: String| problems.push(format!("{set}: {m}"));
    let configs: HashMap<String, toml::Table> = embedded_configs(docs)
        .into_iter()
        .map(|(name, text)| {
            let table = toml::from_str::<toml::Table>(&text)
                .unwrap_or_else(|e| panic!("{set}: ConfigMap {name}: {e}"));
            (name, table)
        })
        .collect();
    let deployments: Vec<&Value> = docs
        .iter()
        .filter(|d| str_of(d, &["kind"]) == Some("Deployment"))
        .collect();
    let admin_hashes: Vec<String> = configs
        .values()
        .filter_map(|c| {
            c.get("admin")?
                .get("token_sha256")?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let secrets = secret_values(docs);
    // The set's admin tokens in plaintext: whatever Secret value hashes to an admin hash.
    let admin_tokens: Vec<String> = secrets
        .values()
        .filter(|v| admin_hashes.contains(&sha256_hex(v)))
        .cloned()
        .collect();
    if deployments.is_empty() {
        p("no Deployment".into());
    }
    for dep in &deployments {
        let dep_name = str_of(dep, &["metadata", "name"]).unwrap_or("?");
        let pod = at(dep, &["spec", "template", "spec"]).unwrap();
        let containers = all_containers(pod);
        let mut p = |m: String| p(format!("Deployment {dep_name}: {m}"));

        if str_of(pod, &["securityContext", "seccompProfile", "type"]) != Some("RuntimeDefault") {
            p("pod seccompProfile is not RuntimeDefault".into());
        }
        if at(pod, &["automountServiceAccountToken"]).and_then(Value::as_bool) != Some(false) {
            p("automountServiceAccountToken is not false".into());
        }
        let pod_non_root =
            at(pod, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool) == Some(true);

        // Hardening: every container, the iptables init container being the one exception
        // that runs as root and adds exactly NET_ADMIN and NET_RAW.
        for c in &containers {
            let name = str_of(c, &["name"]).unwrap_or("?");
            let sc = c.get("securityContext");
            let flag = |k: &str| sc.and_then(|s| s.get(k)).and_then(Value::as_bool);
            let added: Vec<String> = seq(sc.and_then(|s| at(s, &["capabilities", "add"])))
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let dropped: Vec<String> = seq(sc.and_then(|s| at(s, &["capabilities", "drop"])))
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            if dropped != ["ALL"] {
                p(format!(
                    "{name}: capabilities.drop is {dropped:?}, not [ALL]"
                ));
            }
            if flag("allowPrivilegeEscalation") != Some(false) {
                p(format!("{name}: allowPrivilegeEscalation is not false"));
            }
            if flag("readOnlyRootFilesystem") != Some(true) {
                p(format!("{name}: readOnlyRootFilesystem is not true"));
            }
            if name == "portcullis-iptables" {
                if added != ["NET_ADMIN", "NET_RAW"] {
                    p(format!("{name}: adds {added:?}, not [NET_ADMIN, NET_RAW]"));
                }
                if uid_of(pod, c) != Some(0) {
                    p(format!("{name}: iptables needs root (runAsUser: 0)"));
                }
            } else {
                if !added.is_empty() {
                    p(format!("{name}: adds capabilities {added:?}"));
                }
                let non_root = flag("runAsNonRoot").unwrap_or(pod_non_root);
                if !non_root || uid_of(pod, c).is_none_or(|u| u == 0) {
                    p(format!("{name}: not forced to run as a non-root UID"));
                }
            }
            if c.get("resources").and_then(|r| r.get("requests")).is_none() {
                p(format!("{name}: no resource requests"));
            }
        }

        // The proxy container and its config (from the ConfigMap mounted at /etc/portcullis).
        let Some(proxy) = container(&containers, "portcullis") else {
            p("no container named portcullis".into());
            continue;
        };
        let config_volume = seq(proxy.get("volumeMounts"))
            .iter()
            .find(|m| str_of(m, &["mountPath"]) == Some("/etc/portcullis"))
            .and_then(|m| str_of(m, &["name"]).map(str::to_owned))
            .or_else(|| {
                // Central pods read the rendered copy; the template is mounted in the init step.
                container(&containers, "portcullis-prepare").and_then(|c| {
                    seq(c.get("volumeMounts"))
                        .iter()
                        .find(|m| str_of(m, &["mountPath"]) == Some("/etc/portcullis"))
                        .and_then(|m| str_of(m, &["name"]).map(str::to_owned))
                })
            });
        let config_map = config_volume.and_then(|vol| {
            seq(pod.get("volumes"))
                .iter()
                .find(|v| str_of(v, &["name"]) == Some(vol.as_str()))
                .and_then(|v| str_of(v, &["configMap", "name"]).map(str::to_owned))
        });
        let Some(config) = config_map.as_ref().and_then(|n| configs.get(n)) else {
            p(format!(
                "the config mounted at /etc/portcullis ({config_map:?}) is not a ConfigMap of this set"
            ));
            continue;
        };
        let admin = config.get("admin").and_then(|a| a.as_table());
        let admin_bind = admin
            .and_then(|a| a.get("bind"))
            .and_then(|b| b.as_str())
            .unwrap_or("127.0.0.1:9901");
        if admin_bind.starts_with("127.") {
            p(format!(
                "[admin] bind {admin_bind} is loopback: the kubelet's probes cannot reach it"
            ));
        }
        let named_port = |name: &str| {
            seq(proxy.get("ports"))
                .iter()
                .find(|pt| str_of(pt, &["name"]) == Some(name))
                .and_then(|pt| int_of(pt.get("containerPort")))
        };
        let admin_port = i64::from(port_of(admin_bind));

        // Readiness (and startup, where there is one) is /readyz on the admin port.
        for kind in ["readinessProbe", "startupProbe"] {
            let Some(probe) = proxy.get(kind) else {
                if kind == "readinessProbe" {
                    p("the proxy has no readinessProbe".into());
                }
                continue;
            };
            if str_of(probe, &["httpGet", "path"]) != Some("/readyz") {
                p(format!("the proxy's {kind} does not GET /readyz"));
            }
            let probe_port = at(probe, &["httpGet", "port"])
                .and_then(|v| v.as_str().map_or_else(|| int_of(Some(v)), &named_port));
            if probe_port != Some(admin_port) {
                p(format!(
                    "{kind} port is {probe_port:?}, the config's admin port is {admin_port}"
                ));
            }
        }
        // /readyz is public: no probe, and nothing else in the pod, holds the admin token.
        for problem in credential_problems(pod, &admin_tokens) {
            p(problem);
        }
        if proxy
            .get("livenessProbe")
            .and_then(|l| str_of(l, &["httpGet", "path"]))
            != Some("/healthz")
        {
            p("the proxy's livenessProbe does not GET /healthz".into());
        }

        let proxy_uid = uid_of(pod, proxy);
        let listeners = config
            .get("listeners")
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        let transparent: Vec<String> = listeners
            .iter()
            .filter(|l| l.get("mode").and_then(|m| m.as_str()) == Some("transparent"))
            .filter_map(|l| l.get("bind").and_then(|b| b.as_str()).map(str::to_owned))
            .collect();

        if let Some(init) = container(&containers, "portcullis-iptables") {
            // Sidecar mode: the exempt UID, the redirect ports and the listeners agree.
            let exempt = env_of(init, "PROXY_UID").and_then(|u| u.parse::<i64>().ok());
            if exempt.is_none() || exempt != proxy_uid {
                p(format!(
                    "the proxy runs as UID {proxy_uid:?} but iptables.sh exempts PROXY_UID {exempt:?}"
                ));
            }
            for c in &containers {
                let name = str_of(c, &["name"]).unwrap_or("?");
                if name != "portcullis"
                    && !name.starts_with("portcullis-")
                    && uid_of(pod, c) == exempt
                {
                    p(format!(
                        "{name} runs as the exempt UID {exempt:?}: it would bypass the redirect"
                    ));
                }
            }
            let tcp = env_of(init, "PORTCULLIS_TCP_PORT").and_then(|v| v.parse::<u16>().ok());
            let dns = env_of(init, "PORTCULLIS_DNS_PORT").and_then(|v| v.parse::<u16>().ok());
            for want in ["127.0.0.1", "[::1]"] {
                let bind = tcp.map(|t| format!("{want}:{t}"));
                if !bind.as_ref().is_some_and(|b| transparent.contains(b)) {
                    p(format!(
                        "iptables redirects TCP to {bind:?} but the transparent listeners bind {transparent:?}"
                    ));
                }
            }
            let dns_bind = config
                .get("dns")
                .and_then(|d| d.get("bind"))
                .and_then(|b| b.as_str());
            if dns.is_none() || dns_bind.map(port_of) != dns {
                p(format!(
                    "iptables redirects DNS to port {dns:?} but [dns] binds {dns_bind:?}"
                ));
            }
            if init.get("restartPolicy").is_some() {
                p("the iptables init container must run once, not as a sidecar".into());
            }
            if str_of(proxy, &["restartPolicy"]) != Some("Always") {
                p("the proxy is not a native sidecar (restartPolicy: Always): the agent may start before it".into());
            }
            if proxy.get("startupProbe").is_none() {
                p("the sidecar has no startupProbe to hold the agent until it is ready".into());
            }
        } else {
            // Central mode: a replica id per pod, the listeners' ports on the container.
            if !transparent.is_empty() {
                p("transparent listeners without an iptables init container".into());
            }
            let prepare = container(&containers, "portcullis-prepare");
            let from_pod_name = prepare
                .map(|c| seq(c.get("env")))
                .unwrap_or_default()
                .iter()
                .any(|e| {
                    str_of(e, &["name"]) == Some("REPLICA_ID")
                        && str_of(e, &["valueFrom", "fieldRef", "fieldPath"])
                            == Some("metadata.name")
                });
            if !from_pod_name {
                p("portcullis-prepare does not get REPLICA_ID from the pod name".into());
            }
            let config_text = embedded_configs(docs)
                .into_iter()
                .find(|(n, _)| Some(n) == config_map.as_ref())
                .map(|(_, t)| t)
                .unwrap_or_default();
            if !config_text.lines().any(|l| l.starts_with("replica_id = ")) {
                p("the config has no `replica_id = ` line for prepare.sh to fill in".into());
            }
            let rendered = prepare.and_then(|c| env_of(c, "CONFIG_OUT"));
            let args: Vec<String> = seq(proxy.get("args"))
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            if rendered.is_none() || !args.contains(rendered.as_ref().unwrap()) {
                p(format!(
                    "the proxy runs with {args:?}, not the per-pod config {rendered:?}"
                ));
            }
            for l in &listeners {
                let bind = l.get("bind").and_then(|b| b.as_str()).unwrap_or("");
                let port = i64::from(port_of(bind));
                let listed = seq(proxy.get("ports"))
                    .iter()
                    .any(|pt| int_of(pt.get("containerPort")) == Some(port));
                if !listed {
                    p(format!("listener {bind} has no containerPort"));
                }
                if bind.starts_with("127.") {
                    p(format!(
                        "listener {bind} is loopback: no Service can reach it"
                    ));
                }
            }
        }
        if named_port("admin") != Some(admin_port) {
            p(format!(
                "containerPort `admin` is {:?}, the config's admin port is {admin_port}",
                named_port("admin")
            ));
        }
    }

    // Selectors select something that exists.
    let pod_labels: Vec<(String, BTreeMap<String, String>, Vec<Value>)> = deployments
        .iter()
        .map(|d| {
            let labels = at(d, &["spec", "template", "metadata", "labels"])
                .and_then(|l| serde_yaml::from_value(l.clone()).ok())
                .unwrap_or_default();
            let pod = at(d, &["spec", "template", "spec"]).unwrap();
            let ports = all_containers(pod)
                .iter()
                .flat_map(|c| seq(c.get("ports")))
                .collect();
            (
                str_of(d, &["metadata", "name"]).unwrap_or("").to_owned(),
                labels,
                ports,
            )
        })
        .collect();
    let selects = |sel: Option<&Value>| -> Option<&(String, BTreeMap<String, String>, Vec<Value>)> {
        let sel: BTreeMap<String, String> = serde_yaml::from_value(sel?.clone()).ok()?;
        if sel.is_empty() {
            return None;
        }
        pod_labels
            .iter()
            .find(|(_, labels, _)| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let services: Vec<&Value> = docs
        .iter()
        .filter(|d| str_of(d, &["kind"]) == Some("Service"))
        .collect();
    for doc in docs {
        let kind = str_of(doc, &["kind"]).unwrap_or("");
        let name = str_of(doc, &["metadata", "name"]).unwrap_or("?");
        match kind {
            "Service" => match selects(at(doc, &["spec", "selector"])) {
                None => p(format!("Service {name} selects no pod of this set")),
                Some((_, _, ports)) => {
                    for sp in seq(at(doc, &["spec", "ports"])) {
                        let target = sp.get("targetPort").and_then(Value::as_str);
                        let found = ports.iter().any(|cp| str_of(cp, &["name"]) == target);
                        if !found {
                            p(format!(
                                "Service {name} targets port {target:?}, which no container names"
                            ));
                        }
                    }
                }
            },
            "PodDisruptionBudget"
                if selects(at(doc, &["spec", "selector", "matchLabels"])).is_none() =>
            {
                p(format!(
                    "PodDisruptionBudget {name} selects no pod of this set"
                ));
            }
            "HorizontalPodAutoscaler" => {
                let target = str_of(doc, &["spec", "scaleTargetRef", "name"]);
                if !pod_labels
                    .iter()
                    .any(|(n, _, _)| Some(n.as_str()) == target)
                {
                    p(format!(
                        "HPA {name} scales {target:?}, not a Deployment of this set"
                    ));
                }
            }
            "ServiceMonitor" => {
                let sel: BTreeMap<String, String> = at(doc, &["spec", "selector", "matchLabels"])
                    .and_then(|s| serde_yaml::from_value(s.clone()).ok())
                    .unwrap_or_default();
                let svc = services.iter().find(|s| {
                    let labels: BTreeMap<String, String> = at(s, &["metadata", "labels"])
                        .and_then(|l| serde_yaml::from_value(l.clone()).ok())
                        .unwrap_or_default();
                    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                });
                for ep in seq(at(doc, &["spec", "endpoints"])) {
                    // /metrics needs the admin token (unless metrics_public): the Secret it
                    // comes from must be of this set and hold the token the config hashes.
                    if let Some(cred) = at(&ep, &["authorization", "credentials"]) {
                        let secret = str_of(cred, &["name"]).unwrap_or("?").to_owned();
                        let key = str_of(cred, &["key"]).unwrap_or("?").to_owned();
                        match secrets.get(&(secret.clone(), key.clone())) {
                            None => p(format!(
                                "ServiceMonitor {name} reads Secret {secret} key {key}, which this set lacks"
                            )),
                            Some(token) if !admin_hashes.contains(&sha256_hex(token)) => {
                                p(format!(
                                    "ServiceMonitor {name}: Secret {secret} key {key} does not hash to [admin] token_sha256 {admin_hashes:?}: /metrics would answer 401"
                                ));
                            }
                            Some(_) => {}
                        }
                    }
                    let port = str_of(&ep, &["port"]);
                    let has_port = svc.is_some_and(|s| {
                        seq(at(s, &["spec", "ports"]))
                            .iter()
                            .any(|sp| str_of(sp, &["name"]) == port)
                    });
                    if !has_port {
                        p(format!(
                            "ServiceMonitor {name} scrapes port {port:?} of no Service of this set"
                        ));
                    }
                    if str_of(&ep, &["path"]) != Some("/metrics") {
                        p(format!("ServiceMonitor {name} does not scrape /metrics"));
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

fn assert_no_problems(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The documents a kustomization directory applies.
fn kustomization_docs(dir: &str) -> Vec<Value> {
    let k = raw_docs(&format!("{dir}/kustomization.yaml"));
    let resources = seq(k[0].get("resources"));
    assert!(
        !resources.is_empty(),
        "{dir}/kustomization.yaml lists no resources"
    );
    resources
        .iter()
        .flat_map(|r| raw_docs(&format!("{dir}/{}", r.as_str().unwrap())))
        .collect()
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

/// `docs` with `change` applied to the proxy container of every Deployment.
fn with_proxy(docs: &[Value], change: impl Fn(&mut Value)) -> Vec<Value> {
    let mut docs = docs.to_vec();
    for d in &mut docs {
        if str_of(d, &["kind"]) != Some("Deployment") {
            continue;
        }
        let pod = &mut d["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            if let Some(cs) = pod.get_mut(list).and_then(Value::as_sequence_mut) {
                for c in cs {
                    if str_of(c, &["name"]) == Some("portcullis") {
                        change(c);
                    }
                }
            }
        }
    }
    docs
}

/// The credential guard is live for this set: putting a token back into a probe (or the
/// admin token anywhere into the pod spec) is reported, not passed.
fn assert_credentials_guarded(set: &str, docs: &[Value]) {
    let caught = |what: &str, changed: Vec<Value>, want: &[&str]| {
        let problems = workload_problems(set, &changed).join("\n");
        for w in want {
            assert!(
                problems.contains(w),
                "{set}: {what} was not reported as {w:?}; problems:\n{problems}"
            );
        }
    };
    let header: Value =
        serde_yaml::from_str("[{name: Authorization, value: Bearer sneaked-back-in}]").unwrap();
    for kind in ["readinessProbe", "livenessProbe"] {
        caught(
            &format!("an Authorization header on the {kind}"),
            with_proxy(docs, |c| c[kind]["httpGet"]["httpHeaders"] = header.clone()),
            &[
                &format!("{kind} sends the header Authorization"),
                "holds a bearer token",
            ],
        );
    }
    caught(
        "a token in the readinessProbe's query string",
        with_proxy(docs, |c| {
            c["readinessProbe"]["httpGet"]["path"] = "/readyz?token=sneaked-back-in".into();
        }),
        &["readinessProbe has a query string"],
    );
    // Where the set holds the admin token (a Secret), it may not appear in the pod spec at
    // all, under any header name or none.
    let configs: Vec<String> = embedded_configs(docs)
        .into_iter()
        .filter_map(|(_, text)| {
            let t = toml::from_str::<toml::Table>(&text).ok()?;
            Some(t.get("admin")?.get("token_sha256")?.as_str()?.to_owned())
        })
        .collect();
    if let Some(token) = secret_values(docs)
        .into_values()
        .find(|v| configs.contains(&sha256_hex(v)))
    {
        let header: Value =
            serde_yaml::from_str(&format!("[{{name: X-Admin-Token, value: \"{token}\"}}]"))
                .unwrap();
        caught(
            "the admin token in a custom header on the readinessProbe",
            with_proxy(docs, |c| {
                c["readinessProbe"]["httpGet"]["httpHeaders"] = header.clone()
            }),
            &[
                "readinessProbe sends the header X-Admin-Token",
                "holds the admin token in plaintext",
            ],
        );
    }
}

#[test]
fn sidecar_manifests_agree_on_uid_ports_probes_and_privileges() {
    let set = "deploy/kubernetes/sidecar";
    let docs = kustomization_docs(set);
    assert_no_problems(workload_problems(set, &docs));
    assert_credentials_guarded(set, &docs);
}

#[test]
fn central_manifests_agree_on_ports_probes_selectors_and_replica_ids() {
    let set = "deploy/kubernetes/central";
    // With the Secrets' example (not applied by the kustomization): the ServiceMonitor's
    // token comes from it, and it must hash to the config's [admin] token_sha256.
    let mut docs = kustomization_docs(set);
    docs.extend(raw_docs(&format!("{set}/secrets.example.yaml")));
    assert_no_problems(workload_problems(set, &docs));
    assert_credentials_guarded(set, &docs);
}

#[test]
fn the_image_runs_as_the_uid_the_sidecar_rules_exempt() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(
        stages
            .last()
            .is_some_and(|s| s.starts_with("FROM gcr.io/distroless/cc-debian12:nonroot")),
        "the runtime (last) stage is not distroless: {stages:?}"
    );
    assert!(dockerfile.contains("cargo build --release --locked -p portcullis"));
    assert!(dockerfile.lines().any(|l| l == "USER 1337:1337"));
    assert!(
        read("deploy/kubernetes/sidecar/iptables.sh").contains("PROXY_UID=\"${PROXY_UID:-1337}\"")
    );
    assert!(read("deploy/helm/portcullis/values.yaml").contains("\nproxyUid: 1337\n"));
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "/target"),
        "the build context would ship target/"
    );
}

#[test]
fn configmap_scripts_are_the_files_beside_them() {
    let iptables = read("deploy/kubernetes/sidecar/iptables.sh");
    let prepare = read("deploy/kubernetes/prepare.sh");
    let embedded = |file: &str, key: &str| -> String {
        let docs = raw_docs(file);
        docs.iter()
            .find_map(|d| str_of(d, &["data", key]).map(str::to_owned))
            .unwrap_or_else(|| panic!("{file} has no {key}"))
    };
    assert_eq!(
        embedded("deploy/kubernetes/sidecar/configmap.yaml", "iptables.sh"),
        iptables
    );
    assert_eq!(
        embedded("deploy/kubernetes/sidecar/configmap.yaml", "prepare.sh"),
        prepare
    );
    assert_eq!(
        embedded("deploy/kubernetes/central/configmap.yaml", "prepare.sh"),
        prepare
    );
    assert_eq!(read("deploy/helm/portcullis/files/iptables.sh"), iptables);
    assert_eq!(read("deploy/helm/portcullis/files/prepare.sh"), prepare);
}

/// Runs a Python script with the test venv's interpreter; returns stdout, fails on error.
fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new(sdk_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Validates each document of the given files (or of stdin JSON) against the Kubernetes
/// 1.30 API schemas bundled in `kubernetes-validate`, strictly. Kinds it has no schema for
/// are listed in "unchecked", never passed silently.
const VALIDATE_PY: &str = r#"
import json, sys, yaml
import kubernetes_validate as kv
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
report = {"ok": [], "errors": [], "unchecked": []}
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            what = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kv.validate(doc, "1.30.0", strict=True)
                report["ok"].append(what)
            except SchemaNotFoundError:
                report["unchecked"].append(what)
            except ValidationError as e:
                report["errors"].append(f"{what}: {e.message} at {list(e.absolute_path)}")
print(json.dumps(report))
"#;

fn schema_report(paths: &[&Path]) -> serde_json::Value {
    serde_json::from_str(&python(VALIDATE_PY, paths)).unwrap()
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn raw_manifests_pass_the_kubernetes_api_schemas() {
    let files = manifest_files();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let report = schema_report(&paths);
    let errors = names(&report["errors"]);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(names(&report["ok"]).len() >= 15, "{report}");
    // Only what Kubernetes itself does not define may go unchecked.
    for what in names(&report["unchecked"]) {
        assert!(
            what.contains("Kustomization/") || what.contains("ServiceMonitor/"),
            "no schema for {what}"
        );
    }
}

/// Renders the chart with Helm's engine in both modes, lints it, and writes each render's
/// manifests (one file per mode) into the directory given as the second argument.
const HELM_PY: &str = r#"
import json, os, sys
import helm_python as helm
chart, out = sys.argv[1], sys.argv[2]
modes = {
    "central": {"central": {"serviceMonitor": {"enabled": True}}},
    "central-persistent": {"ledger": {"existingClaim": "portcullis-ledger"},
                           "central": {"autoscaling": {"enabled": False}, "gateway": {"port": 0}}},
    "sidecar": {"mode": "sidecar"},
}
result = {"lint": helm.lint(chart), "renders": {}, "refused": {}}
with helm.Chart.load(chart) as c:
    for mode, values in modes.items():
        rendered = c.render(values, name="demo", namespace="portcullis", is_install=True)
        path = os.path.join(out, mode + ".yaml")
        with open(path, "w") as f:
            for name, text in sorted(rendered.items()):
                if name.endswith(".yaml") and text.strip():
                    f.write(f"---\n# Source: {name}\n{text}\n")
        result["renders"][mode] = path
    for case, values in {
        "bad-mode": {"mode": "node"},
        "agent-as-proxy-uid": {"mode": "sidecar", "sidecar": {"agent": {"runAsUser": 1337}}},
        "replicas-without-redis": {"central": {"redisUrl": ""}},
    }.items():
        try:
            c.render(values, name="demo", namespace="portcullis")
            result["refused"][case] = None
        except Exception as e:
            result["refused"][case] = str(e)
print(json.dumps(result))
"#;

#[test]
fn helm_chart_renders_both_modes_consistently_and_passes_lint_and_schemas() {
    let out = tempfile::tempdir().unwrap();
    let chart = deploy().join("helm/portcullis");
    let result: serde_json::Value =
        serde_json::from_str(&python(HELM_PY, &[&chart, out.path()])).unwrap();

    // helm lint: no errors, no warnings (severity 2 and up; 1 is informational).
    let lint = &result["lint"];
    assert_eq!(lint["errors"], serde_json::json!([]), "{lint}");
    for m in lint["messages"].as_array().unwrap() {
        assert!(m["severity"].as_i64().unwrap() < 2, "helm lint: {m}");
    }

    // Values that would deploy something broken are refused at render time.
    for (case, why) in result["refused"].as_object().unwrap() {
        assert!(why.is_string(), "the chart rendered the broken case {case}");
    }

    let mut problems = Vec::new();
    let mut check_failures = Vec::new();
    let renders = result["renders"].as_object().unwrap();
    assert_eq!(renders.len(), 3);
    for (mode, path) in renders {
        let path = PathBuf::from(path.as_str().unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = parse_docs(mode, &text);
        let kinds: Vec<&str> = docs.iter().filter_map(|d| str_of(d, &["kind"])).collect();
        let want: &[&str] = match mode.as_str() {
            "central" => &[
                "ConfigMap",
                "Deployment",
                "Service",
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "ServiceMonitor",
                "Secret",
                "ServiceAccount",
            ],
            "central-persistent" => &["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"],
            _ => &["ConfigMap", "Deployment", "Secret", "ServiceAccount"],
        };
        for kind in want {
            assert!(kinds.contains(kind), "{mode}: no {kind} in {kinds:?}");
        }
        problems.extend(workload_problems(&format!("helm {mode}"), &docs));
        assert_credentials_guarded(&format!("helm {mode}"), &docs);
        for (name, toml) in embedded_configs(&docs) {
            if let Err(e) = check_config(&name, &toml) {
                check_failures.push(format!("helm {mode} ConfigMap {name}:\n{e}"));
            }
        }
        let report = schema_report(&[&path]);
        let errors = names(&report["errors"]);
        assert!(errors.is_empty(), "helm {mode}:\n{}", errors.join("\n"));
        for what in names(&report["unchecked"]) {
            assert!(what.contains("ServiceMonitor/"), "no schema for {what}");
        }
    }
    assert_no_problems(problems);
    assert!(check_failures.is_empty(), "{}", check_failures.join("\n"));
}

#[test]
fn prepare_script_copies_key_files_private_and_fills_in_the_replica_id() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let secrets = root.join("secrets");
    for (file, body) in [
        ("ca/ca.pem", "cert\n"),
        ("ca/ca.key", "key\n"),
        ("ca/ledger-signing.key", "seed\n"),
        ("vault/vault.json", "{}\n"),
    ] {
        let path = secrets.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        // What a Secret volume with fsGroup gives: group-readable.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    }
    let config_in = root.join("portcullis.toml");
    std::fs::write(
        &config_in,
        "version = 1\n\n[ledger]\ndir = \"/var/lib/portcullis/ledger\"\nreplica_id = \"central\"\n",
    )
    .unwrap();
    let bin_dir = portcullis_bin().parent().unwrap().to_path_buf();
    let run = |replica: &str| {
        Command::new("sh")
            .arg(repo().join("deploy/kubernetes/prepare.sh"))
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("SECRETS_DIR", &secrets)
            .env("STATE_DIR", root.join("state"))
            .env("CONFIG_IN", &config_in)
            .env("CONFIG_OUT", root.join("run/portcullis.toml"))
            .env("REPLICA_ID", replica)
            .output()
            .unwrap()
    };
    let out = run("portcullis-7d9f8b6c5-x2x9z");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |rel: &str| {
        std::fs::metadata(root.join("state").join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca/ca.key"), 0o600);
    assert_eq!(mode("ca/ledger-signing.key"), 0o600);
    assert_eq!(mode("vault.json"), 0o600);
    assert_eq!(mode("ca/ca.pem"), 0o644);
    assert_eq!(mode("ledger"), 0o700);
    let rendered = std::fs::read_to_string(root.join("run/portcullis.toml")).unwrap();
    assert!(
        rendered.contains("\nreplica_id = \"portcullis-7d9f8b6c5-x2x9z\"\n"),
        "{rendered}"
    );
    assert!(!rendered.contains("\"central\""), "{rendered}");

    // A replica id that would break the TOML (or the sed) is refused.
    let bad = run("x\"; rm -rf /");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("REPLICA_ID"));
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_and_its_security_review() {
    // The unit with ExecStart pointing at the binary under test, so verify can resolve it.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("portcullis.service");
    let text = read("deploy/systemd/portcullis.service");
    assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(text.contains("CapabilityBoundingSet=\n"));
    std::fs::write(
        &unit,
        text.replace(
            "/usr/local/bin/portcullis",
            &portcullis_bin().display().to_string(),
        ),
    )
    .unwrap();
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(&unit)
            .output()
            .expect("systemd-analyze is missing: install systemd (tests/run.sh does)")
    };
    let verify = analyze(&["verify"]);
    let noise = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && noise.trim().is_empty(),
        "{noise}"
    );
    // Exposure 0-10 in tenths: 15 is "1.5 OK". The unit scores 1.1.
    let security = analyze(&["security", "--offline=yes", "--threshold=15"]);
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

/// Network namespaces removed (and their processes killed) on drop.
struct Namespaces {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (tests/run.sh installs iproute2 and iptables)",
                cmd[0]
            )
        });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tiny TCP/UDP servers that answer with a banner, and a client that prints what it got.
const NET_PY: &str = r#"
import socket, sys, threading, time
def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET
def serve(proto, host, port, banner):
    s = socket.socket(family(host), socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ":" in host:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, int(port)))
    def tcp():
        s.listen(16)
        while True:
            c, _ = s.accept(); c.sendall(banner.encode()); c.close()
    def udp():
        while True:
            _, peer = s.recvfrom(512); s.sendto(banner.encode(), peer)
    threading.Thread(target=tcp if proto == "tcp" else udp, daemon=True).start()
if sys.argv[1] == "serve":
    for spec in sys.argv[2:]:
        serve(*spec.split(","))
    print("ready", flush=True)
    time.sleep(120)
else:
    proto, host, port = sys.argv[2:5]
    s = socket.socket(family(host), socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.connect((host, int(port)))
        if proto == "udp":
            s.send(b"?")
        print(s.recv(64).decode() or "empty")
    except OSError as e:
        print("refused" if isinstance(e, (ConnectionRefusedError, PermissionError)) else "timeout")
"#;

#[test]
fn iptables_script_sends_agent_traffic_to_the_proxy_and_exempts_only_the_proxy_uid() {
    // Two namespaces on a veth pair, documentation addresses only: "pod" runs the rules,
    // "world" stands for the internet. Nothing leaves this machine.
    let id = std::process::id();
    let (pod, world) = (format!("pcdeploy-pod-{id}"), format!("pcdeploy-world-{id}"));
    let (veth_pod, veth_world) = (format!("pcp{id}"), format!("pcw{id}"));
    let mut ns = Namespaces {
        names: vec![],
        children: vec![],
    };
    for n in [&pod, &world] {
        sh(&["ip", "netns", "add", n]);
        ns.names.push(n.clone());
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip",
        "link",
        "add",
        &veth_pod,
        "type",
        "veth",
        "peer",
        "name",
        &veth_world,
    ]);
    sh(&["ip", "link", "set", &veth_pod, "netns", &pod]);
    sh(&["ip", "link", "set", &veth_world, "netns", &world]);
    for (n, dev, v4, v6) in [
        (&pod, &veth_pod, "192.0.2.2/24", "2001:db8::2/64"),
        (&world, &veth_world, "192.0.2.1/24", "2001:db8::1/64"),
    ] {
        sh(&["ip", "-n", n, "addr", "add", v4, "dev", dev]);
        sh(&["ip", "-n", n, "addr", "add", v6, "dev", dev, "nodad"]);
        sh(&["ip", "-n", n, "link", "set", dev, "up"]);
    }

    // The helper must be readable by the unprivileged UIDs the clients run as.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("net.py");
    std::fs::write(&script, NET_PY).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let python = "/usr/bin/python3";
    assert!(Path::new(python).exists(), "{python} is missing");

    let serve = |netns: &str, specs: &[&str]| -> Child {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, python])
            .arg(&script)
            .arg("serve")
            .args(specs)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "servers in {netns} did not start");
        child
    };
    ns.children.push(serve(
        &world,
        &[
            "tcp,0.0.0.0,443,world",
            "tcp,::,443,world6",
            "udp,0.0.0.0,53,world-dns",
            "udp,0.0.0.0,9999,world-udp",
        ],
    ));
    // Stand-ins for the proxy's transparent listeners, its DNS responder, and an in-pod
    // helper on loopback.
    ns.children.push(serve(
        &pod,
        &[
            "tcp,127.0.0.1,15001,proxy",
            "tcp,::1,15001,proxy6",
            "udp,127.0.0.1,15053,responder",
            "tcp,127.0.0.1,8000,local",
        ],
    ));

    let rules = |pass: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &pod, "sh"])
            .arg(repo().join("deploy/kubernetes/sidecar/iptables.sh"))
            .env("PROXY_UID", "1337")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "iptables.sh ({pass}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let save = |bin: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", &pod, bin])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        (save("iptables-save"), save("ip6tables-save"))
    };
    let first = rules("first run");
    assert!(!first.0.is_empty() && !first.1.is_empty(), "{first:?}");
    // A restarted init container in the same namespace replaces the rules, never stacks them.
    assert_eq!(rules("second run"), first);

    let client = |uid: u32, proto: &str, host: &str, port: u16| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &pod, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", python])
            .arg(&script)
            .args(["client", proto, host, &port.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let agent = 1000;
    let proxy = 1337;
    let cases: &[(u32, &str, &str, u16, &str)] = &[
        // The agent: all TCP, any port, either family, lands on the transparent listener.
        (agent, "tcp", "192.0.2.1", 443, "proxy"),
        (agent, "tcp", "192.0.2.1", 22, "proxy"),
        (agent, "tcp", "2001:db8::1", 443, "proxy6"),
        // Its DNS queries, to whatever nameserver, reach the responder.
        (agent, "udp", "192.0.2.1", 53, "responder"),
        // Other UDP (QUIC, home-made tunnels) is refused, in both families.
        (agent, "udp", "192.0.2.1", 9999, "refused"),
        (agent, "udp", "2001:db8::1", 9999, "refused"),
        // Loopback stays in the pod.
        (agent, "tcp", "127.0.0.1", 8000, "local"),
        // The proxy's UID goes out as it is: upstream connections and its own lookups.
        (proxy, "tcp", "192.0.2.1", 443, "world"),
        (proxy, "tcp", "2001:db8::1", 443, "world6"),
        (proxy, "udp", "192.0.2.1", 53, "world-dns"),
        (proxy, "udp", "192.0.2.1", 9999, "world-udp"),
    ];
    let mut wrong = Vec::new();
    for &(uid, proto, host, port, want) in cases {
        let got = client(uid, proto, host, port);
        if got != want {
            wrong.push(format!(
                "uid {uid} {proto} {host}:{port}: got {got:?}, want {want:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
