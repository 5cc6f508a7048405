//! Shipping: the Dockerfile, docker-compose.yml, the Kubernetes manifests and the broker
//! definitions in deploy/, checked against what the worker really reads and declares.
//!
//! No container engine or cluster is needed: the files are parsed (serde_yaml_ng) and checked
//! structurally. Where the tools exist on the machine, they are run too: `docker compose config
//! -q`, `kubectl kustomize` (kustomize is built into kubectl), `rabbitmqctl import_definitions`.
//! kubeconform is not used: it cannot be installed offline here (it is not packaged by Debian).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser;
use guest_session_worker::{
    amqp::{Topology, connect},
    config::WorkerArgs,
    health::{self, Readiness},
    metrics::Metrics,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::helpers::amqp_url;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a (multi-document) YAML text; empty documents are skipped.
fn yaml_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin} does not parse: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The Kubernetes objects of the files under `deploy/<dir>` (documents with `apiVersion` and
/// `kind`, not kustomizations).
fn objects(dir: &str) -> Vec<Value> {
    let mut files = Vec::new();
    files_under(&root().join("deploy").join(dir), &mut files);
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .flat_map(|p| yaml_documents(&read(p), &p.display().to_string()))
        .filter(|doc| doc["apiVersion"].is_string() && doc["kind"].is_string() && doc["kind"] != "Kustomization")
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"))
}

/// Every string in the crate's sources, to check that a setting is one the binary reads.
fn sources_mention(needle: &str) -> bool {
    static SOURCES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sources = SOURCES.get_or_init(|| {
        let mut files = Vec::new();
        files_under(&root().join("src"), &mut files);
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .map(|p| read(p))
            .collect()
    });
    sources.contains(&format!("\"{needle}\""))
}

/// Env vars read by the binary: its own (`env = "…"` in src/) and the standard ones it honours.
fn is_known_setting(var: &str) -> bool {
    matches!(
        var,
        "RUST_LOG" | "OTEL_RESOURCE_ATTRIBUTES" | "POD_NAME" | "POD_NAMESPACE"
    ) || sources_mention(var)
}

fn default_worker_args() -> WorkerArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }
    Cli::try_parse_from(["worker"]).expect("defaults parse").worker
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has no port"))
}

#[test]
fn every_file_in_deploy_parses() {
    let mut files = Vec::new();
    files_under(&root().join("deploy"), &mut files);
    let mut k8s_objects = 0;
    for path in &files {
        let text = read(path);
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                for doc in yaml_documents(&text, &path.display().to_string()) {
                    if doc["apiVersion"].is_string() {
                        assert!(doc["kind"].is_string(), "{}: an object without kind", path.display());
                        if doc["kind"] != "Kustomization" {
                            k8s_objects += 1;
                            assert!(
                                doc["metadata"]["name"].is_string(),
                                "{}: a {} without a name",
                                path.display(),
                                doc["kind"]
                            );
                        }
                    }
                }
            }
            Some("json") => {
                serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            _ => {}
        }
    }
    assert!(k8s_objects >= 10, "found {k8s_objects} Kubernetes objects");
}

#[test]
fn the_deployment_probes_secrets_and_grace_period_match_the_worker() {
    let base = objects("base");
    let deployment = find(&base, "Deployment", "guest-session-worker");
    let config = &find(&base, "ConfigMap", "guest-session-worker")["data"];
    let secret = find(&base, "Secret", "guest-session-worker");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"], json!(["run"]));

    // Probes on the health port: /healthz (liveness) and /readyz (readiness).
    let health_addr = config["HEALTH_ADDR"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| default_worker_args().health_addr.to_string());
    let port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "health")
        .expect("a port named health");
    assert_eq!(port["containerPort"], json!(port_of(&health_addr)));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "health");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(annotations["prometheus.io/port"], port_of(&health_addr).to_string());

    // The three secrets come from the Secret, and only from there.
    let env: BTreeMap<String, &Value> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e))
        .collect();
    for var in ["AMQP_URL", "GENESYS_CLIENT_SECRET", "AUDIT_HMAC_KEY"] {
        let reference = &env.get(var).unwrap_or_else(|| panic!("{var} is not set"))["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["name"], secret["metadata"]["name"], "{var}");
        assert_eq!(reference["key"], var);
        assert!(secret["stringData"][var].is_string(), "the Secret holds {var}");
        assert!(config.get(var).is_none(), "{var} must not be in the ConfigMap");
    }
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        find(&base, "ConfigMap", "guest-session-worker")["metadata"]["name"]
    );

    // Every setting is one the binary reads (a typo would be silently ignored).
    for var in config.as_object().expect("data").keys().chain(env.keys()) {
        assert!(is_known_setting(var), "{var} is not read by guest-session-worker");
    }

    // The kubelet waits longer than the worker's own shutdown grace before SIGKILL.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let default_grace = default_worker_args().shutdown_grace_secs;
    let configured = config["WORKER_SHUTDOWN_GRACE_SECS"]
        .as_str()
        .map(|s| s.parse::<u64>().expect("a number"))
        .unwrap_or(default_grace);
    assert!(
        grace > configured && grace > default_grace,
        "terminationGracePeriodSeconds {grace} must exceed WORKER_SHUTDOWN_GRACE_SECS {configured}"
    );

    // Locked down: non-root (the image's uid), read-only root, no privilege, bounded resources.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(container["resources"][kind][resource].is_string(), "{kind}.{resource}");
        }
    }
    // KEDA owns the replica count.
    assert!(deployment["spec"].get("replicas").is_none());
}

#[test]
fn keda_scales_the_worker_on_its_default_request_queue() {
    let base = objects("base");
    let scaled = find(&base, "ScaledObject", "guest-session-worker");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "guest-session-worker");
    let min = scaled["spec"]["minReplicaCount"].as_u64().expect("min");
    let max = scaled["spec"]["maxReplicaCount"].as_u64().expect("max");
    assert!(1 <= min && min <= max, "{min}..{max}");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "rabbitmq");
    assert_eq!(trigger["metadata"]["mode"], "QueueLength");
    assert!(
        trigger["metadata"]["value"]
            .as_str()
            .is_some_and(|v| v.parse::<u32>().is_ok())
    );
    // The queue the worker consumes with its defaults (the ConfigMap sets no AMQP_NAME_PREFIX).
    let config = &find(&base, "ConfigMap", "guest-session-worker")["data"];
    assert!(config.get("AMQP_NAME_PREFIX").is_none());
    assert_eq!(
        trigger["metadata"]["queueName"],
        Topology::new("").request_queue.as_str()
    );
    // KEDA reads the queue with the worker's broker URL, from the same Secret.
    let auth_name = trigger["authenticationRef"]["name"]
        .as_str()
        .expect("authenticationRef");
    let auth = find(&base, "TriggerAuthentication", auth_name);
    let host = auth["spec"]["secretTargetRef"]
        .as_array()
        .expect("secretTargetRef")
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("a host parameter");
    assert_eq!(host["name"], "guest-session-worker");
    assert_eq!(host["key"], "AMQP_URL");
}

#[test]
fn the_pdb_service_and_servicemonitor_select_the_worker() {
    let base = objects("base");
    let deployment = find(&base, "Deployment", "guest-session-worker");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |selector: &Value| {
        selector
            .as_object()
            .expect("a selector")
            .iter()
            .all(|(k, v)| &pod_labels[k] == v)
    };
    assert!(selects_pods(&deployment["spec"]["selector"]["matchLabels"]));
    let pdb = find(&base, "PodDisruptionBudget", "guest-session-worker");
    assert!(selects_pods(&pdb["spec"]["selector"]["matchLabels"]));
    assert!(pdb["spec"]["maxUnavailable"].is_number() || pdb["spec"]["minAvailable"].is_number());

    let service = find(&base, "Service", "guest-session-worker");
    assert!(selects_pods(&service["spec"]["selector"]));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "health");

    let monitoring = objects("monitoring");
    let monitor = find(&monitoring, "ServiceMonitor", "guest-session-worker");
    let service_labels = &service["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&service_labels[k], v, "the ServiceMonitor selects the Service");
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}

#[test]
fn the_collector_receives_otlp_over_http_and_exports_traces() {
    let config = yaml_documents(&read(&root().join("deploy/otel-collector.yaml")), "otel-collector.yaml")
        .pop()
        .expect("a document");
    assert!(
        config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
            .as_str()
            .is_some_and(|e| e.ends_with(":4318"))
    );
    let traces = &config["service"]["pipelines"]["traces"];
    assert_eq!(traces["receivers"], json!(["otlp"]));
    for (section, names) in [
        ("processors", &traces["processors"]),
        ("exporters", &traces["exporters"]),
    ] {
        let names = names.as_array().unwrap_or_else(|| panic!("traces.{section}"));
        assert!(!names.is_empty(), "traces.{section}");
        for name in names {
            let name = name.as_str().unwrap_or_default();
            assert!(
                config[section].get(name).is_some(),
                "{section}.{name} is used but not defined"
            );
        }
    }
    // The worker exports over OTLP/HTTP (the only protocol it speaks) to the collector's Service.
    let base = objects("base");
    let endpoint = find(&base, "ConfigMap", "guest-session-worker")["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"].clone();
    let collector = objects("collector");
    let service = find(&collector, "Service", "otel-collector");
    assert_eq!(
        endpoint,
        format!(
            "http://{}:4318",
            service["metadata"]["name"].as_str().unwrap_or_default()
        )
    );
}

/// `kubectl kustomize DIR`, or `None` when kubectl is not installed.
fn kustomize(dir: &str) -> Option<Vec<Value>> {
    let output = Command::new("kubectl")
        .args(["kustomize", &root().join(dir).display().to_string()])
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(yaml_documents(&String::from_utf8_lossy(&output.stdout), dir))
}

#[test]
fn the_kustomizations_render() {
    let Some(stack) = kustomize("deploy") else {
        eprintln!("skipped: kubectl (with its built-in kustomize) is not installed");
        return;
    };
    let kinds: BTreeSet<&str> = stack.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from the rendered stack");
    }
    for object in stack.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(
            object["metadata"]["namespace"], "guest-sessions",
            "{}",
            object["metadata"]["name"]
        );
    }
    // The collector mounts the generated (hash-suffixed) ConfigMap holding deploy/otel-collector.yaml.
    let generated = stack
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("otel-collector-config-"))
        })
        .expect("the generated collector ConfigMap");
    assert_eq!(
        generated["data"]["config.yaml"].as_str(),
        Some(read(&root().join("deploy/otel-collector.yaml")).as_str())
    );
    let collector = find(&stack, "Deployment", "otel-collector");
    assert_eq!(
        collector["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
        generated["metadata"]["name"]
    );
    assert!(kustomize("deploy/base").is_some_and(|o| o.len() >= 7));
    assert!(kustomize("deploy/monitoring").is_some_and(|o| o.len() == 1));
}

fn compose() -> Value {
    yaml_documents(&read(&root().join("docker-compose.yml")), "docker-compose.yml")
        .pop()
        .expect("a document")
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn has_port(service: &Value, port: &str) -> bool {
    service["ports"].as_array().is_some_and(|ports| {
        ports
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.ends_with(&format!(":{port}"))))
    })
}

#[test]
fn docker_compose_runs_the_whole_stack() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["jaeger", "otel-collector", "rabbitmq", "sim", "worker"])
    );
    for (name, service) in services {
        let test = &service["healthcheck"]["test"];
        assert!(
            test.as_array().is_some_and(|t| t.len() >= 2 && t[0] == "CMD"),
            "{name} has a healthcheck: {test}"
        );
        assert!(service["healthcheck"].get("disable").is_none(), "{name}");
        for (dependency, condition) in service["depends_on"].as_object().into_iter().flatten() {
            assert!(
                services.contains_key(dependency),
                "{name} depends on unknown {dependency}"
            );
            assert_eq!(condition["condition"], "service_healthy", "{name} → {dependency}");
        }
    }
    let service = |name: &str| &services[name];

    // RabbitMQ with the management UI.
    let rabbitmq = service("rabbitmq");
    assert!(
        rabbitmq["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("rabbitmq:") && i.ends_with("-management"))
    );
    assert!(has_port(rabbitmq, "5672") && has_port(rabbitmq, "15672"));

    // Jaeger all-in-one with its UI on 16686, fed by the collector.
    let jaeger = service("jaeger");
    assert!(jaeger["image"].as_str().is_some_and(|i| i.contains("jaeger")));
    assert!(has_port(jaeger, "16686"));
    let collector = service("otel-collector");
    assert_eq!(collector["depends_on"]["jaeger"]["condition"], "service_healthy");
    assert_eq!(env_of(collector)["OTLP_TRACES_ENDPOINT"], "jaeger:4317");
    let mount = collector["volumes"][0].as_str().expect("a config mount");
    let (source, target) = mount.split_once(':').expect("source:target");
    assert!(root().join(source).is_file(), "{source} exists");
    assert!(collector["command"].as_array().is_some_and(|c| {
        c.iter()
            .any(|a| a.as_str().is_some_and(|a| a.contains(target.trim_end_matches(":ro"))))
    }));

    // The simulator, listening on every interface of its container.
    let sim = service("sim");
    assert_eq!(sim["command"], json!(["sim"]));
    let sim_env = env_of(sim);
    assert!(
        sim_env["SIM_ADDR"].starts_with("0.0.0.0:"),
        "the simulator must not listen on 127.0.0.1 only"
    );
    let sim_port = port_of(&sim_env["SIM_ADDR"]);

    // Two worker replicas, after their dependencies are healthy, wired to them.
    let worker = service("worker");
    assert_eq!(worker["command"], json!(["run"]));
    assert_eq!(worker["deploy"]["replicas"], 2);
    assert!(worker.get("container_name").is_none(), "replicas need generated names");
    for dependency in ["rabbitmq", "sim", "otel-collector"] {
        assert_eq!(
            worker["depends_on"][dependency]["condition"], "service_healthy",
            "{dependency}"
        );
    }
    let env = env_of(worker);
    assert!(env["AMQP_URL"].starts_with("amqp://") && env["AMQP_URL"].contains("@rabbitmq:5672/"));
    assert_eq!(env["GENESYS_API_URL"], format!("http://sim:{sim_port}"));
    assert_eq!(env["GENESYS_LOGIN_URL"], format!("http://sim:{sim_port}"));
    assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://otel-collector:4318");
    assert!(!env["AUDIT_HMAC_KEY"].is_empty(), "`run` refuses to start without it");
    for var in ["GENESYS_CLIENT_ID", "GENESYS_CLIENT_SECRET", "GENESYS_INTEGRATION_ID"] {
        assert_eq!(env[var], sim_env[var], "the worker uses the simulator's {var}");
    }
    for var in env.keys().chain(sim_env.keys()) {
        assert!(is_known_setting(var), "{var} is not read by guest-session-worker");
    }
    let health_port = port_of(env.get("HEALTH_ADDR").map_or("0.0.0.0:8080", String::as_str));
    assert_eq!(
        worker["healthcheck"]["test"],
        json!(["CMD", "http-probe", health_port.to_string(), "/readyz"])
    );
    assert_eq!(
        sim["healthcheck"]["test"],
        json!(["CMD", "http-probe", sim_port.to_string(), "/__sim/stats"])
    );
    // Both run the image built from the Dockerfile.
    assert_eq!(worker["image"], sim["image"]);

    // The real tool, where it exists.
    match Command::new("docker").args(["compose", "version"]).output() {
        Ok(version) if version.status.success() => {
            let check = Command::new("docker")
                .args(["compose", "-f", "docker-compose.yml", "config", "-q"])
                .current_dir(root())
                .output()
                .expect("docker compose runs");
            assert!(
                check.status.success(),
                "docker compose config -q: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        _ => eprintln!("`docker compose` is not available: checked structurally only"),
    }
}

/// The instructions of the Dockerfile's last stage.
fn final_stage(dockerfile: &str) -> &str {
    let start = dockerfile.rfind("\nFROM ").expect("a FROM");
    &dockerfile[start..]
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_unprivileged() {
    let dockerfile = read(&root().join("Dockerfile"));
    let stages = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 3, "multi-stage: {stages}");
    // Dependencies are built in a layer of their own, before the sources arrive.
    let cook = dockerfile.find("cargo chef cook").expect("cargo chef cook");
    let build = dockerfile.find("cargo build --release --locked").expect("cargo build");
    assert!(cook < build);
    assert!(
        dockerfile.contains("--mount=type=cache"),
        "downloads are cached between builds"
    );

    let runtime = final_stage(&dockerfile);
    assert!(runtime.starts_with("\nFROM debian:"), "debian-slim runtime");
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("a numeric uid");
    assert_ne!(uid, 0, "not root");
    let base = objects("base");
    let pod = &find(&base, "Deployment", "guest-session-worker")["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsUser"],
        json!(uid),
        "the Deployment runs as the image's user"
    );
    assert!(runtime.contains("HEALTHCHECK") && runtime.contains("CMD [\"http-probe\"]"));
    assert!(runtime.contains("ENTRYPOINT [\"guest-session-worker\"]"));
    assert!(runtime.contains("CMD [\"run\"]"));
    // Default health address of the image = the worker's default.
    assert!(runtime.contains(&format!("HEALTH_ADDR={}", default_worker_args().health_addr)));

    // The build context holds what the build copies.
    let ignore = read(&root().join(".dockerignore"));
    for allowed in ["!Cargo.toml", "!Cargo.lock", "!src/", "!deploy/docker/http-probe.sh"] {
        assert!(
            ignore.lines().any(|l| l.trim() == allowed),
            ".dockerignore lets {allowed} through"
        );
    }
    assert!(dockerfile.contains("COPY --chmod=0755 deploy/docker/http-probe.sh /usr/local/bin/http-probe"));
}

fn probe(args: &[&str], health_addr: Option<&str>) -> bool {
    let mut command = Command::new("bash");
    command.arg(root().join("deploy/docker/http-probe.sh")).args(args);
    command.env_remove("HEALTH_ADDR");
    if let Some(addr) = health_addr {
        command.env("HEALTH_ADDR", addr);
    }
    command.output().expect("bash runs").status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_probe_reads_the_worker_health_endpoint() {
    let readiness = Readiness::default();
    let cancel = tokio_util::sync::CancellationToken::new();
    let addr = health::serve(
        "127.0.0.1:0".parse().unwrap(),
        readiness.clone(),
        Metrics::new(),
        cancel.clone(),
    )
    .await
    .expect("health endpoint");
    let port = addr.port().to_string();
    let run = |args: Vec<String>, health_addr: Option<String>| {
        tokio::task::spawn_blocking(move || {
            probe(
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                health_addr.as_deref(),
            )
        })
    };
    assert!(run(vec![port.clone(), "/healthz".into()], None).await.unwrap());
    // The image's HEALTHCHECK passes no arguments: the port comes from HEALTH_ADDR.
    assert!(run(vec![], Some(format!("0.0.0.0:{port}"))).await.unwrap());
    assert!(
        !run(vec![port.clone(), "/readyz".into()], None).await.unwrap(),
        "503 until ready"
    );
    readiness.set_ready(true);
    assert!(run(vec![port.clone(), "/readyz".into()], None).await.unwrap());
    assert!(!run(vec![port.clone(), "/nope".into()], None).await.unwrap(), "404");
    cancel.cancel();
    // Once nothing listens any more, the probe fails (it does not hang).
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the health endpoint stops listening");
    assert!(!run(vec![port, "/healthz".into()], None).await.unwrap());
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_definitions_declare_what_the_worker_declares() {
    // deploy/rabbitmq/definitions.json, imported into a scratch vhost, must be equivalent to the
    // worker's own declaration: the worker re-declares on start, and the broker refuses
    // (PRECONDITION_FAILED) any queue whose type or arguments differ.
    let definitions: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rabbitmq/definitions.json"))
            .expect("definitions.json"),
    )
    .expect("definitions.json is JSON");
    let topology = Topology::new("");
    let names = |kind: &str| -> BTreeSet<String> {
        definitions[kind]
            .as_array()
            .expect(kind)
            .iter()
            .map(|e| e["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        names("exchanges"),
        BTreeSet::from([
            topology.request_exchange.clone(),
            topology.crm_exchange.clone(),
            topology.dead_letter_exchange.clone(),
            topology.audit_exchange.clone(),
        ])
    );
    assert_eq!(
        names("queues"),
        BTreeSet::from([
            topology.request_queue.clone(),
            topology.dead_letter_queue.clone(),
            topology.audit_queue.clone(),
        ])
    );
    let request_queue = definitions["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == topology.request_queue.as_str())
        .unwrap();
    assert_eq!(
        request_queue["arguments"]["x-delivery-limit"],
        json!(topology.options.delivery_limit)
    );
    // The worker accepts dead-letter and audit queues of any kind, but the shipped definitions
    // give them the durability it would declare itself.
    for queue in [&topology.dead_letter_queue, &topology.audit_queue] {
        let declared = definitions["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == queue.as_str())
            .unwrap();
        assert_eq!(declared["arguments"]["x-queue-type"], json!("quorum"), "{queue}");
    }

    // The live check needs the test broker to be this machine's, as user guest, with rabbitmqctl.
    let base_url = amqp_url().await;
    let local = ["amqp://guest:", "@127.0.0.1:", "@localhost:"];
    let is_local_guest = base_url.starts_with(local[0]) && (base_url.contains(local[1]) || base_url.contains(local[2]));
    let vhost = if is_local_guest { scratch_vhost().await } else { None };
    let Some(vhost) = vhost else {
        eprintln!("skipped the import: the test broker is not a local one rabbitmqctl can reach as guest");
        return;
    };
    let mut scoped = definitions.clone();
    for kind in ["exchanges", "queues", "bindings"] {
        for entry in scoped[kind].as_array_mut().unwrap() {
            entry["vhost"] = json!(vhost);
        }
    }
    let file = std::env::temp_dir().join(format!("{vhost}.json"));
    std::fs::write(&file, serde_json::to_vec(&scoped).unwrap()).unwrap();
    let imported = rabbitmqctl(&["import_definitions", file.to_str().unwrap()]).await;
    let _ = std::fs::remove_file(&file);

    let result = async {
        assert!(imported, "rabbitmqctl import_definitions failed");
        let (prefix, _) = base_url.rsplit_once('/').expect("a vhost in AMQP_URL");
        let connection = connect(&format!("{prefix}/{vhost}"), "it-definitions")
            .await
            .expect("connect to the scratch vhost");
        let declared = topology.declare(&connection).await;
        let _ = connection.close(200, "done".into()).await;
        declared
    }
    .await;
    rabbitmqctl(&["delete_vhost", &vhost]).await;
    if let Err(error) = result {
        panic!("the worker's declaration conflicts with definitions.json: {error}");
    }
}

/// A new vhost the broker's guest user may use, or `None` without rabbitmqctl.
async fn scratch_vhost() -> Option<String> {
    let vhost = format!("it-defs-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    if !rabbitmqctl(&["add_vhost", &vhost]).await {
        return None;
    }
    if !rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]).await {
        rabbitmqctl(&["delete_vhost", &vhost]).await;
        return None;
    }
    Some(vhost)
}

async fn rabbitmqctl(args: &[&str]) -> bool {
    tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}
