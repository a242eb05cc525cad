//! The manifests agree with themselves: UIDs, ports, probes, credentials, selectors.

use super::*;

pub(super) const PROBES: [&str; 3] = ["startupProbe", "readinessProbe", "livenessProbe"];

/// What in a pod spec would put a credential in it: any header on a probe (`/healthz` and
/// `/readyz` are public, so a probe needs none, and a header is where a token goes), a
/// query string on a probe's path, a `Bearer` anywhere, or one of `tokens` (the set's
/// admin tokens in plaintext) anywhere. A pod spec is readable by anyone who can read the
/// Deployment, and in the sidecar the agent shares the admin API's network namespace.
pub(super) fn credential_problems(pod: &Value, tokens: &[String]) -> Vec<String> {
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

pub(super) fn all_containers(pod: &Value) -> Vec<Value> {
    let mut out = seq(pod.get("initContainers"));
    out.extend(seq(pod.get("containers")));
    out
}

pub(super) fn container<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|c| str_of(c, &["name"]) == Some(name))
}

pub(super) fn env_of(c: &Value, name: &str) -> Option<String> {
    seq(c.get("env"))
        .iter()
        .find(|e| str_of(e, &["name"]) == Some(name))
        .and_then(|e| str_of(e, &["value"]).map(str::to_owned))
}

pub(super) fn port_of(bind: &str) -> u16 {
    bind.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The UID a container runs as: its own securityContext, else the pod's.
pub(super) fn uid_of(pod: &Value, c: &Value) -> Option<i64> {
    int_of(at(c, &["securityContext", "runAsUser"]))
        .or_else(|| int_of(at(pod, &["securityContext", "runAsUser"])))
}

/// The consistency rules every workload of ours follows, for raw and rendered manifests
/// alike. `docs` is one deployable set (a kustomization, or one Helm render). Returns
/// every violation.
pub(super) fn workload_problems(set: &str, docs: &[Value]) -> Vec<String> {
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

pub(super) fn assert_no_problems(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The documents a kustomization directory applies.
pub(super) fn kustomization_docs(dir: &str) -> Vec<Value> {
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

/// `docs` with `change` applied to the proxy container of every Deployment.
pub(super) fn with_proxy(docs: &[Value], change: impl Fn(&mut Value)) -> Vec<Value> {
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
pub(super) fn assert_credentials_guarded(set: &str, docs: &[Value]) {
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
