//! The Helm chart (`appliance/helm/relay`), checked offline as a cluster would see it:
//! `helm lint` and `helm template` for each values file it ships, the rendered manifests
//! against the Kubernetes schemas in strict mode (`kubernetes-validate`), the house rules of
//! `appliance/helm/policy/house.rego` (evaluated by regorus) over every manifest, and what
//! the DaemonSet must hold for the relay to keep media flowing across restarts. K3s itself
//! does not run here. Needs helm and kubernetes-validate (`cargo xtask setup` installs both).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_json::{Value, json};

const VALUES_FILES: [&str; 3] = [
    "values.yaml",
    "values-edge-4c8g.yaml",
    "values-k3s-node.yaml",
];
/// The chart's floor (its kubeVersion) and the newest schemas kubernetes-validate bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Custom resources of the Prometheus operator: no schema in kubernetes-validate, checked
/// field by field below.
const CUSTOM_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

fn appliance(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../appliance")
        .join(path)
}

fn chart() -> PathBuf {
    appliance("helm/relay")
}

/// Runs `tool`; its stdout, or its stderr as the error.
fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool}: {e} (`cargo xtask setup` installs it in /usr/local/bin)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `helm template` of the chart with `values` (files of the chart) and `--set` pairs.
fn template(values: &[&str], sets: &[&str], kube: &str) -> Result<String, String> {
    template_of(&chart(), values, sets, kube)
}

/// `helm template` of `source` (the chart's directory or a packaged chart) with `values`
/// (files of the chart's directory) and `--set` pairs.
fn template_of(
    source: &Path,
    values: &[&str],
    sets: &[&str],
    kube: &str,
) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template".to_owned(),
        "relay".to_owned(),
        source.to_string_lossy().into_owned(),
        "--namespace".to_owned(),
        "relay".to_owned(),
        "--kube-version".to_owned(),
        kube.to_owned(),
    ];
    for file in values {
        args.extend([
            "--values".to_owned(),
            chart.join(file).to_string_lossy().into_owned(),
        ]);
    }
    for set in sets {
        args.extend(["--set".to_owned(), (*set).to_owned()]);
    }
    run("helm", &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn render(values: &[&str], sets: &[&str]) -> Vec<Value> {
    let yaml = template(values, sets, KUBERNETES_VERSIONS[0])
        .unwrap_or_else(|e| panic!("helm template {values:?} {sets:?}: {e}"));
    documents(&yaml)
}

/// Every object of a multi-document YAML stream (empty documents left out).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("helm rendered YAML that does not parse"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// kubernetes-validate's report on `yaml` against Kubernetes `kube`'s schemas, strict
/// (unknown fields refused); its report as the error when an object fails.
fn validate(yaml: &str, kube: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, yaml).unwrap();
    run(
        "kubernetes-validate",
        &["--strict", "-k", kube, &rendered.to_string_lossy()],
    )
}

/// The house rules' messages for `object`.
fn house_denials(object: &Value) -> Vec<String> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy_from_file(appliance("helm/policy/house.rego"))
        .expect("house.rego does not compile");
    engine
        .set_input_json(&object.to_string())
        .expect("manifest as input");
    let deny = engine
        .eval_rule("data.relay.house.deny".to_owned())
        .expect("evaluating data.relay.house.deny");
    deny.as_set()
        .expect("deny is a set")
        .iter()
        .map(|m| m.as_string().expect("a message").to_string())
        .collect()
}

#[test]
fn each_values_file_lints_renders_and_passes_the_schemas_and_the_house_rules() {
    let chart = chart();
    for file in VALUES_FILES {
        let values = chart.join(file);
        run(
            "helm",
            &[
                "lint",
                "--strict",
                &chart.to_string_lossy(),
                "--values",
                &values.to_string_lossy(),
            ],
        )
        .unwrap_or_else(|e| panic!("helm lint --strict -f {file}: {e}"));
        for kube in KUBERNETES_VERSIONS {
            let yaml = template(&[file], &[], kube)
                .unwrap_or_else(|e| panic!("helm template -f {file} (Kubernetes {kube}): {e}"));
            let report = validate(&yaml, kube)
                .unwrap_or_else(|e| panic!("{file} against Kubernetes {kube}'s schemas: {e}"));
            let objects = documents(&yaml);
            for object in &objects {
                let kind = object["kind"].as_str().unwrap();
                let name = object["metadata"]["name"].as_str().unwrap();
                let passed = format!(
                    "passed for resource {}/{name} against version",
                    kind.to_lowercase()
                );
                if CUSTOM_KINDS.contains(&kind) {
                    assert!(report.contains(&format!("Couldn't find schema for kind {kind}")));
                } else {
                    assert!(
                        report.contains(&passed),
                        "{file}: {kind}/{name} not validated against {kube}:\n{report}"
                    );
                }
                let denials = house_denials(object);
                assert!(denials.is_empty(), "{file}: {denials:#?}");
            }
            assert!(objects.iter().any(|o| o["kind"] == "DaemonSet"), "{file}");
        }
    }
}

const RELAY: &str = "/spec/template/spec/containers/0";
const VOLUMES: &str = "/spec/template/spec/volumes";

/// A breach of the house rules made in a good DaemonSet, and what the rules must say.
type Breach = (&'static str, fn(&mut Value), &'static str);

/// Appends `item` to the array at `pointer` of `object`.
fn push(object: &mut Value, pointer: &str, item: Value) {
    object
        .pointer_mut(pointer)
        .and_then(Value::as_array_mut)
        .unwrap_or_else(|| panic!("no array at {pointer}"))
        .push(item);
}

fn remove(object: &mut Value, pointer: &str, key: &str) {
    object
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer}"))
        .remove(key);
}

const BREACHES: [Breach; 7] = [
    (
        "no drop ALL",
        |d| remove(d, &format!("{RELAY}/securityContext/capabilities"), "drop"),
        "does not drop ALL capabilities",
    ),
    (
        "SYS_ADMIN",
        |d| {
            push(
                d,
                &format!("{RELAY}/securityContext/capabilities/add"),
                json!("SYS_ADMIN"),
            );
        },
        "adds SYS_ADMIN",
    ),
    (
        "no readiness probe",
        |d| remove(d, RELAY, "readinessProbe"),
        "has no readinessProbe",
    ),
    (
        "no liveness probe",
        |d| remove(d, RELAY, "livenessProbe"),
        "has no livenessProbe",
    ),
    (
        "a secret in env",
        |d| {
            let from = json!({"secretKeyRef": {"name": "relay-turn", "key": "secret"}});
            push(
                d,
                &format!("{RELAY}/env"),
                json!({"name": "TURN_SECRET", "valueFrom": from}),
            );
        },
        "takes secret TURN_SECRET in its environment",
    ),
    (
        "the node's /etc",
        |d| {
            push(
                d,
                VOLUMES,
                json!({"name": "etc", "hostPath": {"path": "/etc"}}),
            );
        },
        "mounts /etc of the node",
    ),
    (
        "a secret readable by others",
        |d| {
            let volumes = d
                .pointer_mut(VOLUMES)
                .and_then(Value::as_array_mut)
                .unwrap();
            let secret = volumes
                .iter_mut()
                .find(|v| v.get("secret").is_some())
                .unwrap();
            secret["secret"]["defaultMode"] = json!(0o644);
        },
        "is readable by group or others",
    ),
];

#[test]
fn the_house_rules_catch_what_they_forbid() {
    // The chart's own escape hatch for old kernels is caught, not waved through.
    let privileged = render(&[], &["privileged=true"]);
    let denials = house_denials(find(&privileged, "DaemonSet"));
    assert!(
        denials
            .iter()
            .any(|d| d.contains("container relay is privileged")),
        "{denials:#?}"
    );
    let good = find(&render(&[], &[]), "DaemonSet").clone();
    assert!(house_denials(&good).is_empty());
    for (what, breach, message) in BREACHES {
        let mut bad = good.clone();
        breach(&mut bad);
        let denials = house_denials(&bad);
        assert!(
            denials.iter().any(|d| d.contains(message)),
            "{what}: {denials:#?}"
        );
    }
    let leaky = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "relay"},
        "data": {"relay.toml": "realm = \"relay\"\nstatic-auth-secret = \"hunter2\"\n"}});
    assert_eq!(
        house_denials(&leaky),
        [
            "ConfigMap/relay: relay.toml holds a secret (static-auth-secret): use a Secret mounted as a file"
        ]
    );
}

/// The item of a Kubernetes list (volumes, mounts, ports) called `name`.
fn named<'a>(items: &'a Value, name: &str) -> &'a Value {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {items}"))
}

#[test]
fn the_daemonset_keeps_media_flowing_across_restarts() {
    let (objects, pod, relay) = edge_with_tls();
    let daemonset = find(&objects, "DaemonSet");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        daemonset["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() <= 30);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        relay["image"],
        format!("relay:{}", env!("CARGO_PKG_VERSION")),
        "the image `cargo xtask image` builds"
    );
    // Pins on the node's bpffs, state on the node's disk: what the next pod adopts.
    assert_eq!(
        named(&pod["volumes"], "bpffs")["hostPath"],
        json!({"path": "/sys/fs/bpf", "type": "DirectoryOrCreate"})
    );
    assert_eq!(
        named(&relay["volumeMounts"], "bpffs")["mountPropagation"],
        "HostToContainer"
    );
    assert_eq!(
        named(&pod["volumes"], "state")["hostPath"]["path"],
        "/var/lib/relay"
    );
    // Probes on the metrics listener the relay is told to open.
    let port = named(&relay["ports"], "metrics")["containerPort"]
        .as_u64()
        .unwrap();
    let args: Vec<&str> = relay["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let listen = args[args.iter().position(|a| *a == "--metrics-listen").unwrap() + 1];
    assert_eq!(listen, format!("$(HOST_IP):{port}"));
    assert_eq!(
        relay["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        relay["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    // The tune profile is shown, read-only, by an init container of the same image.
    let tune = &pod["initContainers"][0];
    assert_eq!(
        tune["args"],
        json!([
            "tune",
            "plan",
            "--profile",
            "edge-4c8g",
            "--config",
            "/etc/relay/relay.toml",
            "--interface",
            "eth0"
        ])
    );
    assert_eq!(
        named(&tune["volumeMounts"], "config")["mountPath"],
        "/etc/relay"
    );
}

/// The edge box's DaemonSet with TLS: the DaemonSet's pod spec and the relay's container.
fn edge_with_tls() -> (Vec<Value>, Value, Value) {
    let objects = render(
        &["values-edge-4c8g.yaml"],
        &["tls.existingSecret=relay-tls"],
    );
    let pod = find(&objects, "DaemonSet")["spec"]["template"]["spec"].clone();
    let relay = pod["containers"][0].clone();
    (objects, pod, relay)
}

/// relay.toml of `objects`, parsed as the relay reads it: unknown keys refused, as by
/// `relay run --config`.
fn relay_toml(objects: &[Value]) -> relay::config::Settings {
    let config = find(objects, "ConfigMap")["data"]["relay.toml"]
        .as_str()
        .unwrap();
    toml::from_str(config).unwrap_or_else(|e| panic!("relay.toml: {e}\n{config}"))
}

/// Each file is in the mount of its Secret volume, which holds it owner-only; no Secret
/// reaches the environment.
fn secret_files(objects: &[Value], files: &[(Option<PathBuf>, &str)]) {
    let pod = &find(objects, "DaemonSet")["spec"]["template"]["spec"];
    let relay = &pod["containers"][0];
    for (file, volume_name) in files {
        let file = file
            .as_deref()
            .unwrap_or_else(|| panic!("no file for {volume_name} in relay.toml"));
        let dir = named(&relay["volumeMounts"], volume_name)["mountPath"]
            .as_str()
            .unwrap();
        assert_eq!(file.parent().unwrap(), Path::new(dir), "{}", file.display());
        let secret = &named(&pod["volumes"], volume_name)["secret"];
        assert_eq!(secret["defaultMode"], 0o400);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            secret["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["path"] == name)
        );
    }
    assert!(
        !relay.to_string().contains("secretKeyRef"),
        "a secret in the environment"
    );
}

#[test]
fn relay_toml_parses_as_the_relay_reads_it_and_points_at_the_mounted_secrets() {
    let (objects, ..) = edge_with_tls();
    let settings = relay_toml(&objects);
    assert_eq!(settings.interface, ["eth0"]);
    assert_eq!(
        settings.state_dir.as_deref(),
        Some(Path::new("/var/lib/relay"))
    );
    assert_eq!(settings.use_auth_secret, Some(true));
    secret_files(
        &objects,
        &[
            (settings.static_auth_secret_file, "turn-secret"),
            (settings.cert, "tls"),
            (settings.pkey, "tls"),
        ],
    );
    // Static users and the control API's token are files of their Secrets too; with the
    // chart's escape hatch for old kernels the manifests still fit the schemas.
    let sets = [
        "turn.usersSecret.existingSecret=relay-users",
        "api.listen=127.0.0.1:8080",
        "api.tokenSecret.existingSecret=relay-api",
        "privileged=true",
    ];
    let objects = render(&[], &sets);
    let settings = relay_toml(&objects);
    assert_eq!(settings.api_listen, Some("127.0.0.1:8080".parse().unwrap()));
    secret_files(
        &objects,
        &[
            (settings.user_file, "users"),
            (settings.api_token_file, "api-token"),
        ],
    );
    let kube = KUBERNETES_VERSIONS[0];
    validate(&template(&[], &sets, kube).unwrap(), kube)
        .unwrap_or_else(|e| panic!("privileged, API and users against {kube}'s schemas: {e}"));
}

#[test]
fn tenants_and_a_low_port_render_as_the_relay_reads_them() {
    let objects = render(
        &[],
        &[
            "config.alt-tls-listening-port=443",
            "tls.existingSecret=relay-tls",
            "tenants[0].name=north",
            "tenants[0].packets-per-second=100",
            "tenants[0].rest-users={nurse-*,doctor-*}",
        ],
    );
    let config = find(&objects, "ConfigMap")["data"]["relay.toml"]
        .as_str()
        .unwrap();
    let settings: relay::config::Settings = toml::from_str(config).unwrap();
    assert_eq!(settings.alt_tls_listening_port, Some(443));
    assert_eq!(settings.tenant.len(), 1);
    assert_eq!(settings.tenant[0].name, "north");
    assert_eq!(settings.tenant[0].packets_per_second, Some(100));
    assert_eq!(settings.tenant[0].rest_users, ["nurse-*", "doctor-*"]);
    let relay = &find(&objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let added = &relay["securityContext"]["capabilities"]["add"];
    assert!(
        added
            .as_array()
            .unwrap()
            .contains(&json!("NET_BIND_SERVICE")),
        "{added}"
    );
    assert!(
        relay["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["hostPort"] == 443)
    );
    // Without a port below 1024 the capability is not granted.
    let plain = render(&[], &[]);
    let relay = &find(&plain, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        !relay["securityContext"]
            .to_string()
            .contains("NET_BIND_SERVICE")
    );
}

#[test]
fn the_dashboard_alerts_and_service_monitor_ship_as_they_are() {
    // From the chart's directory, and from its package, which must hold the linked files'
    // content to stand alone.
    let dir = tempfile::tempdir().unwrap();
    let chart = chart();
    let destination = dir.path().to_string_lossy();
    run(
        "helm",
        &[
            "package",
            &chart.to_string_lossy(),
            "--destination",
            &destination,
        ],
    )
    .unwrap_or_else(|e| panic!("helm package: {e}"));
    let package = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .expect("helm package wrote nothing")
        .unwrap()
        .path();
    for source in [chart, package] {
        let yaml = template_of(
            &source,
            &["values-k3s-node.yaml"],
            &[],
            KUBERNETES_VERSIONS[0],
        )
        .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        shipped_as_they_are(&documents(&yaml));
    }
    // Off by default: the CRDs may not be installed.
    let plain = render(&[], &[]);
    assert!(
        !plain
            .iter()
            .any(|o| CUSTOM_KINDS.contains(&o["kind"].as_str().unwrap()))
    );
}

/// The dashboard ConfigMap is the dashboard file, the PrometheusRule the rules file, and
/// the ServiceMonitor scrapes the job the rules select.
fn shipped_as_they_are(objects: &[Value]) {
    let dashboard = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "relay-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped = std::fs::read_to_string(appliance("grafana/relay-dashboard.json")).unwrap();
    assert_eq!(
        dashboard["data"]["relay-dashboard.json"].as_str().unwrap(),
        shipped.trim_end(),
        "the ConfigMap is the dashboard file, byte for byte"
    );
    let rule = find(objects, "PrometheusRule");
    let alerts: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(appliance("prometheus/relay-alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rule["spec"], alerts,
        "the PrometheusRule is the alert rules file"
    );
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let monitor = find(objects, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    // The alert rules select job="relay": the job is the Service's name label.
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/name");
    let service = find(objects, "Service");
    assert_eq!(
        service["metadata"]["labels"]["app.kubernetes.io/name"],
        "relay"
    );
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
}

#[test]
fn bad_values_are_refused_with_what_to_change() {
    let kube = KUBERNETES_VERSIONS[0];
    for (sets, message) in [
        (
            vec!["config.static-auth-secret=hunter2"],
            "config.static-auth-secret is set by the chart",
        ),
        (
            vec!["turn.authSecret.existingSecret="],
            "Relay refuses to run without credentials",
        ),
        (
            vec!["api.listen=127.0.0.1:8080"],
            "api.listen needs api.tokenSecret.existingSecret",
        ),
        (
            vec!["config.tenant.name=north"],
            "config.tenant: a table is not a relay.toml setting",
        ),
        // values.schema.json: a misspelt or mistyped value is named.
        (
            vec!["privilegd=true"],
            "Additional property privilegd is not allowed",
        ),
        (
            vec!["privileged=yes"],
            "privileged: Invalid type. Expected: boolean",
        ),
        (vec!["tune.profile=edge"], "tune.profile must be one of"),
    ] {
        let error = template(&[], &sets, kube).expect_err(&format!("{sets:?} rendered"));
        assert!(error.contains(message), "{sets:?}: {error}");
    }
}
