//! The Kubernetes API schemas and the Helm chart, rendered by Helm's own engine.

use super::*;

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
