//! docker/ cannot run here (no Docker), so its files are checked for consistency: they parse, every
//! file and service they reference exists, ports line up, and every metric the dashboard and alert rules
//! query is one EgizML exports.

use serde_norway::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker() -> PathBuf {
    repo().join("docker")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

/// `egizml_*` metric names in a PromQL expression, with histogram suffixes removed.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("egizml_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'"' || c == b'{')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let mut name = &expr[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base;
                }
            }
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

/// Every PromQL expression of the dashboard.
pub fn dashboard_exprs() -> Vec<String> {
    let path = docker().join("grafana/dashboards/egizml.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().expect("target without expr").to_string());
            }
            walk(p, out);
        }
    }
    walk(&dash, &mut exprs);
    exprs
}

pub fn alert_exprs() -> Vec<String> {
    let rules = yaml(&docker().join("prometheus/alerts.yml"));
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            assert!(r["alert"].is_string(), "{r:?}");
            out.push(str_of(&r["expr"]).to_string());
        }
    }
    out
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(egizml_inference_latency_seconds_bucket[5m]))) / egizml_x_total{a=\"egizml_not_a_metric\"}",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["egizml_inference_latency_seconds", "egizml_x_total"]
    );
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = egizml::metrics::global().metric_names();
    let rendered = egizml::metrics::global().render();
    let dash = dashboard_exprs();
    let alerts = alert_exprs();
    assert!(dash.len() >= 15, "{}", dash.len());
    let mut used = BTreeSet::new();
    for expr in dash.iter().chain(&alerts) {
        let names = metric_names(expr);
        for n in &names {
            assert!(
                exported.contains(n),
                "`{n}` (in `{expr}`) is not an EgizML metric; exported: {exported:?}"
            );
        }
        used.extend(names);
    }
    // Unlabelled metrics must also be in the actual scrape output.
    for n in &used {
        if ![
            "egizml_kafka_consumer_lag",
            "egizml_points_processed_total",
            "egizml_anomalies_detected_total",
        ]
        .contains(&n.as_str())
        {
            assert!(
                rendered.contains(&format!("# TYPE {n} ")),
                "{n} not rendered"
            );
        }
    }
    // The dashboard covers latency, anomaly rate, accuracy from feedback, health and lag.
    let dash_names: BTreeSet<String> = dash.iter().flat_map(|e| metric_names(e)).collect();
    for needed in [
        "egizml_inference_latency_seconds",
        "egizml_event_to_alert_latency_seconds",
        "egizml_anomalies_detected_total",
        "egizml_feedback_total",
        "egizml_kafka_consumer_lag",
        "egizml_points_processed_total",
        "egizml_websocket_connection_status",
        "egizml_model_load_time_seconds",
    ] {
        assert!(dash_names.contains(needed), "dashboard lacks {needed}");
    }
    assert!(dash.iter().any(|e| e.contains("up{job=\"egizml\"}")));
}

#[test]
fn dashboard_datasources_are_provisioned() {
    let ds = yaml(&docker().join("grafana/provisioning/datasources/prometheus.yml"));
    let uid = str_of(&ds["datasources"][0]["uid"]).to_string();
    let url = str_of(&ds["datasources"][0]["url"]).to_string();
    assert_eq!(url, "http://prometheus:9090");
    let text = std::fs::read_to_string(docker().join("grafana/dashboards/egizml.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], uid.as_str(), "{}", p["title"]);
        }
    }
    let provider = yaml(&docker().join("grafana/provisioning/dashboards/egizml.yml"));
    assert_eq!(
        str_of(&provider["providers"][0]["options"]["path"]),
        "/var/lib/grafana/dashboards"
    );
}

/// `host:container` port pairs of a compose service.
fn ports(service: &Value) -> Vec<(u16, u16)> {
    service["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|p| {
            let s = str_of(p);
            let (h, c) = s.split_once(':').unwrap_or_else(|| panic!("port `{s}`"));
            (h.parse().unwrap(), c.parse().unwrap())
        })
        .collect()
}

#[test]
fn compose_services_files_and_ports_line_up() {
    let dir = docker();
    let compose = yaml(&dir.join("docker-compose.yml"));
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(str_of).collect();
    for needed in [
        "egizml",
        "tansu",
        "mosquitto",
        "postgres",
        "mlflow",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(needed), "compose lacks {needed}");
    }
    let volumes: BTreeSet<&str> = compose["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(str_of)
        .collect();
    let mut mounts: Vec<(String, String, String)> = Vec::new();
    for (name, svc) in services {
        let name = str_of(name);
        assert!(
            svc["image"].is_string() || svc["build"].is_mapping(),
            "{name}: no image or build"
        );
        if let Some(build) = svc["build"].as_mapping() {
            let ctx = dir.join(str_of(&build[&Value::from("context")]));
            let dockerfile = ctx.join(str_of(&build[&Value::from("dockerfile")]));
            assert!(dockerfile.is_file(), "{name}: {}", dockerfile.display());
        }
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let spec = str_of(v);
            let mut parts = spec.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
            if src.starts_with('.') {
                assert!(dir.join(src).exists(), "{name}: mounts missing {src}");
            } else {
                assert!(volumes.contains(src), "{name}: undeclared volume {src}");
            }
            mounts.push((name.to_string(), src.to_string(), dst.to_string()));
        }
        for dep in svc["depends_on"]
            .as_sequence()
            .map(|s| s.iter().map(str_of).collect::<Vec<_>>())
            .or_else(|| {
                svc["depends_on"]
                    .as_mapping()
                    .map(|m| m.keys().map(str_of).collect())
            })
            .unwrap_or_default()
        {
            assert!(names.contains(dep), "{name}: depends on unknown {dep}");
        }
        ports(svc);
    }
    let mounted = |svc: &str, dst: &str| -> Option<String> {
        mounts
            .iter()
            .find(|(s, _, d)| s == svc && d == dst)
            .map(|(_, src, _)| src.clone())
    };

    // Prometheus scrapes the egizml service on the port the image exposes and compose publishes.
    let prom = yaml(&dir.join("prometheus/prometheus.yml"));
    let job = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "egizml")
        .expect("egizml scrape job");
    assert_eq!(str_of(&job["metrics_path"]), "/metrics");
    let target = str_of(&job["static_configs"][0]["targets"][0]);
    let (host, port) = target.split_once(':').unwrap();
    assert_eq!(host, "egizml");
    let port: u16 = port.parse().unwrap();
    assert!(ports(&services[&Value::from("egizml")])
        .iter()
        .any(|(_, c)| *c == port));
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    assert!(dockerfile.contains(&format!("0.0.0.0:{port}")));
    assert_eq!(
        mounted("prometheus", "/etc/prometheus/prometheus.yml").as_deref(),
        Some("./prometheus/prometheus.yml")
    );
    for rf in prom["rule_files"].as_sequence().unwrap() {
        let src = mounted("prometheus", str_of(rf)).expect("rule file is mounted");
        assert!(dir.join(src).is_file());
    }
    // Grafana gets its provisioning and the dashboards where the provider looks.
    assert_eq!(
        mounted("grafana", "/etc/grafana/provisioning").as_deref(),
        Some("./grafana/provisioning")
    );
    assert_eq!(
        mounted("grafana", "/var/lib/grafana/dashboards").as_deref(),
        Some("./grafana/dashboards")
    );
    assert_eq!(
        mounted("mosquitto", "/mosquitto/config/mosquitto.conf").as_deref(),
        Some("./mosquitto/mosquitto.conf")
    );
    let mosquitto = std::fs::read_to_string(dir.join("mosquitto/mosquitto.conf")).unwrap();
    assert!(mosquitto.contains("listener 1883"));
}

#[test]
fn dockerfile_is_multi_stage_and_copies_existing_paths() {
    let text = std::fs::read_to_string(docker().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert!(stages.len() >= 2, "{stages:?}");
    let names: Vec<&str> = stages
        .iter()
        .filter_map(|s| s.split(" AS ").nth(1))
        .collect();
    for l in text.lines().filter(|l| l.starts_with("COPY ")) {
        let parts: Vec<&str> = l.split_whitespace().collect();
        if let Some(stage) = parts[1].strip_prefix("--from=") {
            assert!(names.contains(&stage), "{l}");
            continue;
        }
        // Build context is the repository root.
        for src in &parts[1..parts.len() - 1] {
            assert!(repo().join(src).exists(), "{l}: {src} missing");
        }
    }
    assert!(text.contains("USER "), "runs as non-root");
}

#[test]
fn compose_runs_the_service_with_a_config_that_fits_the_stack() {
    let dir = docker();
    let compose = yaml(&dir.join("docker-compose.yml"));
    let services = &compose["services"];
    let egizml = &services["egizml"];
    let command: Vec<&str> = egizml["command"]
        .as_sequence()
        .expect("the egizml service has a command")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(command[..2], ["run", "--config"], "{command:?}");
    // The config is shipped in the image: /etc/egizml/configs is the repository's configs/.
    let in_image = command[2];
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY configs /etc/egizml/configs"));
    assert!(dockerfile.contains("COPY dataflows /etc/egizml/dataflows"));
    let rel = in_image
        .strip_prefix("/etc/egizml/")
        .unwrap_or_else(|| panic!("{in_image} is not under /etc/egizml"));
    let config_path = repo().join(rel);
    let text = std::fs::read_to_string(&config_path).unwrap();

    // It parses as a service config. The token variable is set by compose (checked below), not here.
    let token_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("token_env:"))
        .expect("the API token comes from the environment");
    let token_var = token_line.split(':').nth(1).unwrap().trim();
    let without_token = text.replace(&format!("{token_line}\n"), "");
    let mut cfg: egizml::commands::run::ServiceConfig =
        egizml::config::parse_yaml(&without_token, &config_path.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
    let mut api = cfg.api.take().expect("the service serves the API");
    egizml::commands::serve::check_config(&mut api, &config_path, None).unwrap();
    assert!(
        egizml["environment"][token_var].is_string(),
        "compose does not set {token_var}"
    );

    // The dataflow exists in the image (resolved like the service does, against the config's folder).
    let dataflow = config_path
        .parent()
        .unwrap()
        .join(cfg.dataflow.as_ref().expect("a dataflow file"));
    assert!(dataflow.is_file(), "{}", dataflow.display());
    egizml::config::DataflowConfig::load(&dataflow).unwrap();

    // Prometheus scrapes the port the API listens on.
    let prom = yaml(&dir.join("prometheus/prometheus.yml"));
    let target = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "egizml")
        .map(|j| str_of(&j["static_configs"][0]["targets"][0]).to_string())
        .unwrap();
    assert_eq!(
        target,
        format!("egizml:{}", api.listen.port()),
        "scrape target vs api.listen"
    );
    assert!(
        api.listen.ip().is_unspecified(),
        "reachable from the other containers"
    );

    // Kafka in and out through the compose broker, alerts in the compose PostgreSQL.
    let kafka = cfg.source.kafka.as_ref().expect("a Kafka source");
    let broker = |b: &str| {
        let (host, port) = b.split_once(':').unwrap();
        assert!(
            services[host].is_mapping(),
            "broker {b} is not a compose service"
        );
        assert!(ports(&services[host])
            .iter()
            .any(|(_, c)| c.to_string() == port));
    };
    broker(&kafka.brokers);
    broker(&cfg.sinks.kafka.as_ref().expect("a Kafka sink").brokers);
    let store = api.store.as_deref().expect("a PostgreSQL store");
    let pg = &services["postgres"]["environment"];
    let want = format!(
        "postgresql://{user}:{pass}@postgres:5432/{db}",
        user = str_of(&pg["POSTGRES_USER"]),
        pass = str_of(&pg["POSTGRES_PASSWORD"]),
        db = str_of(&pg["POSTGRES_DB"])
    );
    assert_eq!(store, want);
    assert_eq!(api.retention.days, 90);
    // The registry lives on the service's data volume.
    let registry = api.registry.as_ref().expect("a model registry");
    let data = egizml["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .find_map(|v| v.strip_prefix("egizml-data:"))
        .expect("egizml data volume");
    assert!(
        registry.path.starts_with(data),
        "{}",
        registry.path.display()
    );
}
