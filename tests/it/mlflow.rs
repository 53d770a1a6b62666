//! The model registry's contract, checked on both backends: the local directory and a real MLflow
//! tracking server (`mlflow server` from PyPI, installed by tests/run.sh, started here on a free
//! 127.0.0.1 port with a SQLite store and proxied artifacts). Also the CLI and the REST API on MLflow.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use egizml::models::{AutoencoderParams, Fit, IsolationForest, IsolationForestParams, Model};
use egizml::registry::{
    LocalRegistry, MlflowConfig, MlflowRegistry, ModelMeta, ModelRef, NewModel, Registry,
    RegistryError, ScopeKind, StoredModel, VersionInfo,
};
use ndarray::Array2;
use serde_json::Value;

use crate::common::bin;
use crate::service::procs::{free_port, unavailable, wait_for};

// --- the contract ---------------------------------------------------------------------------------

fn forest(seed: u64, shift: f64) -> IsolationForest {
    let x = Array2::from_shape_fn((300, 2), |(i, j)| {
        ((i * 7 + j * 13) % 17) as f64 / 17.0 + shift
    });
    IsolationForestParams {
        n_estimators: 10,
        seed,
        ..Default::default()
    }
    .fit(x.view())
    .unwrap()
}

fn new_model(scope: &str, model: StoredModel, metrics: &[(&str, f64)]) -> NewModel {
    NewModel {
        scope: scope.to_string(),
        scope_kind: ScopeKind::Thing,
        equipment_type: Some("pump".into()),
        trained_at: "2026-11-23T00:00:00Z".into(),
        samples: 300,
        features: vec!["temp".into(), "vibration".into()],
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        sql_hash: Some("9f86d081884c7d65".into()),
        model,
    }
}

/// Scores of `rows`, as bits: a reloaded model must score exactly like the one registered.
fn scores(model: &dyn Model, rows: &[[f64; 2]]) -> Vec<u64> {
    rows.iter().map(|r| model.score(r).to_bits()).collect()
}

fn info(meta: &ModelMeta, active: bool) -> VersionInfo {
    VersionInfo {
        meta: meta.clone(),
        active,
    }
}

/// What every backend must do; `reg` starts empty.
fn contract(reg: &dyn Registry) -> Vec<ModelMeta> {
    let rows = [[0.5, 0.5], [10.5, 10.5], [3.0, -2.0], [0.1, 0.9]];
    assert_eq!(reg.list(None).unwrap(), vec![]);
    assert_eq!(reg.active("pump-1").unwrap(), None);
    assert!(matches!(
        ModelRef::parse("pump-1").unwrap().find(reg),
        Err(RegistryError::UnknownScope(s)) if s == "pump-1"
    ));
    assert!(matches!(
        reg.rollback("pump-1"),
        Err(RegistryError::UnknownScope(_))
    ));
    assert!(matches!(
        reg.load("pump-1", 1),
        Err(RegistryError::UnknownVersion { version: 1, .. })
    ));

    // v1 learnt data around 0.5, v2 data around 10.5: a row at 0.5 is normal for v1 only. Metrics
    // that a decimal or single-precision detour would change.
    let (f1, f2) = (forest(1, 0.0), forest(2, 10.0));
    let m1 = reg
        .register(new_model(
            "pump-1",
            StoredModel::IsolationForest(f1.clone()),
            &[
                ("f1", 0.1 + 0.2),
                ("threshold", 0.562_341_325_190_349_1),
                ("tiny", 1e-300),
                ("big", 1.797_693_134_862_315_7e308),
                ("tp", 12.0),
            ],
        ))
        .unwrap();
    let m2 = reg
        .register(new_model(
            "pump-1",
            StoredModel::IsolationForest(f2.clone()),
            &[("f1", 2.0 / 3.0)],
        ))
        .unwrap();
    assert_eq!((m1.version, m2.version), (1, 2));
    assert_eq!((m1.id.as_str(), m2.id.as_str()), ("pump-1/v1", "pump-1/v2"));
    assert_eq!(m2.model_type, "isolation_forest");
    assert_eq!(m2.hyper_parameters["n_estimators"], 10);
    assert_eq!(m1.metrics["f1"], 0.1 + 0.2);

    // A second scope: an equipment class, an autoencoder, no equipment type, no SQL hash, a long
    // feature list (longer than MLflow keeps in a run tag).
    let x = Array2::from_shape_fn((200, 2), |(i, j)| ((i * 3 + j * 5) % 11) as f64 / 11.0);
    let ae = AutoencoderParams {
        hidden: vec![3, 1, 3],
        epochs: 3,
        ..Default::default()
    }
    .fit(x.view())
    .unwrap();
    let mut oven = new_model("oven", StoredModel::Autoencoder(ae.clone()), &[]);
    oven.scope_kind = ScopeKind::EquipmentClass;
    oven.equipment_type = None;
    oven.sql_hash = None;
    oven.features = (0..400)
        .map(|i| format!("sql_feature_with_a_long_name_{i:03}"))
        .collect();
    let m3 = reg.register(oven).unwrap();
    assert_eq!((m3.id.as_str(), m3.version), ("oven/v1", 1));
    assert_eq!(m3.hyper_parameters["hidden"], serde_json::json!([3, 1, 3]));

    // Listed exactly as registered: by scope, oldest version first.
    assert_eq!(
        reg.list(Some("pump-1")).unwrap(),
        vec![info(&m1, false), info(&m2, false)]
    );
    assert_eq!(
        reg.list(None).unwrap(),
        vec![info(&m3, false), info(&m1, false), info(&m2, false)]
    );
    assert_eq!(reg.list(Some("nope")).unwrap(), vec![]);

    // Loaded: the same metadata and a model scoring bit for bit like the registered one.
    for (version, meta, original) in [(1, &m1, &f1), (2, &m2, &f2)] {
        let (loaded_meta, model) = reg.load("pump-1", version).unwrap();
        assert_eq!(&loaded_meta, meta);
        assert_eq!(scores(model.as_ref(), &rows), scores(original, &rows));
    }
    let (meta, model) = reg.load("oven", 1).unwrap();
    assert_eq!(meta, m3);
    assert_eq!(scores(model.as_ref(), &rows), scores(&ae, &rows));

    // Activation and rollback.
    assert!(reg.load_active("pump-1").unwrap().is_none());
    reg.activate("pump-1", 1).unwrap();
    assert_eq!(reg.active("pump-1").unwrap(), Some(1));
    let (meta, model) = reg.load_active("pump-1").unwrap().unwrap();
    assert_eq!(meta, m1);
    assert!(!model.is_anomaly(&rows[0]));
    reg.activate("pump-1", 1).unwrap(); // already active: no history entry
    reg.activate("pump-1", 2).unwrap();
    let (meta, model) = reg.load_active("pump-1").unwrap().unwrap();
    assert_eq!(meta, m2);
    assert!(model.is_anomaly(&rows[0]));
    assert_eq!(
        reg.list(Some("pump-1")).unwrap(),
        vec![info(&m1, false), info(&m2, true)]
    );
    assert_eq!(
        ModelRef::parse("pump-1").unwrap().find(reg).unwrap(),
        info(&m2, true)
    );
    // The watcher's cheap path agrees with the full listing.
    let from_list: std::collections::BTreeMap<String, u32> = reg
        .list(None)
        .unwrap()
        .into_iter()
        .filter(|v| v.active)
        .map(|v| (v.meta.scope, v.meta.version))
        .collect();
    assert_eq!(reg.active_versions().unwrap(), from_list);
    assert_eq!(reg.active_versions().unwrap().get("pump-1"), Some(&2));
    assert_eq!(reg.rollback("pump-1").unwrap(), 1);
    assert_eq!(reg.active("pump-1").unwrap(), Some(1));
    assert_eq!(reg.active_versions().unwrap().get("pump-1"), Some(&1));
    assert!(matches!(
        reg.rollback("pump-1"),
        Err(RegistryError::NothingToRollBack { .. })
    ));
    assert!(matches!(
        reg.rollback("oven"),
        Err(RegistryError::NothingToRollBack { .. })
    ));
    assert_eq!(reg.active("oven").unwrap(), None);

    // Unknown versions and scopes, invalid scope names.
    assert!(matches!(
        reg.activate("pump-1", 9),
        Err(RegistryError::UnknownVersion { version: 9, .. })
    ));
    assert!(matches!(
        reg.load("pump-1", 9),
        Err(RegistryError::UnknownVersion { version: 9, .. })
    ));
    assert!(matches!(
        reg.activate("nope", 1),
        Err(RegistryError::UnknownVersion { version: 1, .. })
    ));
    assert!(matches!(
        ModelRef::parse("pump-1/v7").unwrap().find(reg),
        Err(RegistryError::UnknownVersion { version: 7, .. })
    ));
    for bad in ["../etc", "a b", ""] {
        assert!(matches!(
            reg.register(new_model(
                bad,
                StoredModel::IsolationForest(f1.clone()),
                &[]
            )),
            Err(RegistryError::InvalidScope(_))
        ));
        assert!(matches!(
            reg.list(Some(bad)),
            Err(RegistryError::InvalidScope(_))
        ));
    }
    assert_eq!(reg.active("pump-1").unwrap(), Some(1), "nothing changed");
    vec![m1, m2, m3]
}

#[test]
fn local_registry_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&LocalRegistry::new(dir.path().join("models")));
}

// --- a real MLflow server -------------------------------------------------------------------------

/// The `mlflow` executable: $EGIZML_MLFLOW, the venv tests/run.sh installs, or `mlflow` on PATH.
fn mlflow_binary() -> Option<PathBuf> {
    let venv = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/egizml/mlflow-venv/bin/mlflow"));
    let on_path = Command::new("sh")
        .args(["-c", "command -v mlflow"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    std::env::var_os("EGIZML_MLFLOW")
        .map(PathBuf::from)
        .into_iter()
        .chain(venv)
        .chain(on_path)
        .find(|p| p.is_file())
}

pub struct MlflowServer {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl MlflowServer {
    fn start() -> Result<MlflowServer, String> {
        let bin = mlflow_binary().ok_or(
            "mlflow not found ($EGIZML_MLFLOW, ~/.cache/egizml/mlflow-venv, PATH; tests/run.sh installs it)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("egizml-mlflow-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = free_port();
        let log =
            std::fs::File::create(dir.path().join("mlflow.log")).map_err(|e| e.to_string())?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(&bin)
            .arg("server")
            .arg("--backend-store-uri")
            .arg(format!(
                "sqlite:///{}",
                dir.path().join("mlflow.db").display()
            ))
            .arg("--serve-artifacts")
            .arg("--artifacts-destination")
            .arg(dir.path().join("artifacts"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1"])
            // The GenAI job runner is a second process the registry does not use.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            // Its own process group: the server forks uvicorn workers, all stopped together on drop.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut server = MlflowServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let health = format!("{}/health", server.url);
        let up = wait_for(Duration::from_secs(180), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Some(Err(format!("exited with {status}")));
            }
            ureq::get(&health)
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| Ok(()))
        });
        match up {
            Some(Ok(())) => Ok(server),
            Some(Err(e)) => Err(format!("mlflow server {e}: {}", server.log_tail())),
            None => Err(format!(
                "mlflow server did not answer /health within 180 s: {}",
                server.log_tail()
            )),
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("mlflow.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A registry on this server whose registered models are `<prefix><scope>`.
    fn registry(&self, prefix: &str) -> MlflowRegistry {
        let mut config = MlflowConfig::new(&self.url).unwrap();
        config.model_prefix = prefix.to_string();
        MlflowRegistry::new(config)
    }

    fn api(&self, endpoint: &str, query: &[(&str, &str)]) -> Value {
        let mut req = ureq::get(format!("{}/api/2.0/mlflow/{endpoint}", self.url));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        req.call().unwrap().body_mut().read_json().unwrap()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let stopped = wait_for(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        });
        if stopped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Workers left behind by a slow shutdown.
        signal("-KILL");
    }
}

/// The shared server: started by the first test that needs it, stopped when the last one holding it
/// finishes. `None` (skip) when MLflow is not installed, outside CI.
fn mlflow() -> Option<Arc<MlflowServer>> {
    static SHARED: Mutex<Weak<MlflowServer>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return Some(s);
    }
    match MlflowServer::start() {
        Ok(s) => {
            let s = Arc::new(s);
            *slot = Arc::downgrade(&s);
            Some(s)
        }
        Err(e) => unavailable(format!("MLflow unavailable: {e}")),
    }
}

fn tags(v: &Value) -> std::collections::BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["key"].as_str().unwrap().to_string(),
                t["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn mlflow_registry_keeps_the_contract() {
    let Some(server) = mlflow() else { return };
    let reg = server.registry("contract.");
    let registered = contract(&reg);

    // Through MLflow's own API: one registered model per scope, MLflow's version numbers, a run per
    // version with the hyper-parameters as params, the metrics as metrics, the metadata as tags, and
    // the model file as its artifact; the active version as the `active` alias.
    let rm = server.api("registered-models/get", &[("name", "contract.pump-1")]);
    let rm = &rm["registered_model"];
    assert_eq!(
        rm["aliases"],
        serde_json::json!([{"alias": "active", "version": "1"}])
    );
    assert_eq!(tags(&rm["tags"])["egizml.previous_active"], "[]");
    let m1 = &registered[0];
    let mv = server.api(
        "model-versions/get",
        &[("name", "contract.pump-1"), ("version", "1")],
    );
    let mv = &mv["model_version"];
    assert_eq!(mv["version"], "1");
    let run = server.api("runs/get", &[("run_id", mv["run_id"].as_str().unwrap())]);
    let run = &run["run"];
    assert_eq!(run["info"]["status"], "FINISHED");
    let params = tags(&run["data"]["params"]);
    assert_eq!(params["n_estimators"], "10");
    assert_eq!(
        params["contamination"],
        m1.hyper_parameters["contamination"].to_string()
    );
    let metrics: std::collections::BTreeMap<String, f64> = run["data"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_string(),
                m["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(metrics, m1.metrics, "metrics logged exactly");
    let run_tags = tags(&run["data"]["tags"]);
    assert_eq!(run_tags["egizml.scope"], "pump-1");
    assert_eq!(run_tags["egizml.scope_kind"], "thing");
    assert_eq!(run_tags["egizml.equipment_type"], "pump");
    assert_eq!(run_tags["egizml.sql_hash"], m1.sql_hash.clone().unwrap());
    assert_eq!(run_tags["egizml.trained_at"], m1.trained_at);
    assert_eq!(run_tags["egizml.samples"], "300");
    assert_eq!(run_tags["egizml.features"], r#"["temp","vibration"]"#);
    let artifact_uri = run["info"]["artifact_uri"].as_str().unwrap();
    let path = artifact_uri.strip_prefix("mlflow-artifacts:/").unwrap();
    let file: Value = ureq::get(format!(
        "{}/api/2.0/mlflow-artifacts/artifacts/{path}/model.json",
        server.url
    ))
    .call()
    .unwrap()
    .body_mut()
    .read_json()
    .unwrap();
    assert_eq!(
        (file["format"].as_str(), file["format_version"].as_u64()),
        (Some("egizml-model"), Some(1))
    );
    assert_eq!(file["model_type"], "isolation_forest");

    // Versions are MLflow's: one registered elsewhere (not by EgizML, no metadata tag) takes number 3;
    // the registry leaves it out of its lists and refuses to load or activate it; ours then gets 4.
    let post = |endpoint: &str, body: Value| -> Value {
        ureq::post(format!("{}/api/2.0/mlflow/{endpoint}", server.url))
            .send_json(body)
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let foreign = post(
        "model-versions/create",
        serde_json::json!({"name": "contract.pump-1", "source": artifact_uri, "run_id": mv["run_id"]}),
    );
    assert_eq!(foreign["model_version"]["version"], "3");
    assert_eq!(reg.list(Some("pump-1")).unwrap().len(), 2);
    let e = reg.load("pump-1", 3).unwrap_err().to_string();
    assert!(e.contains("not registered by EgizML"), "{e}");
    assert!(reg.activate("pump-1", 3).is_err());
    let m4 = reg
        .register(new_model(
            "pump-1",
            StoredModel::IsolationForest(forest(4, 0.0)),
            &[],
        ))
        .unwrap();
    assert_eq!(m4.id, "pump-1/v4");
    assert_eq!(
        reg.list(Some("pump-1"))
            .unwrap()
            .iter()
            .map(|v| v.meta.version)
            .collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    // A corrupt history tag is named.
    post(
        "registered-models/set-tag",
        serde_json::json!({"name": "contract.pump-1", "key": "egizml.previous_active", "value": "[1,"}),
    );
    let e = reg.rollback("pump-1").unwrap_err().to_string();
    assert!(
        e.contains("contract.pump-1 tag egizml.previous_active"),
        "{e}"
    );

    // MLflow's errors carry the call, the HTTP status and MLflow's error code.
    let mut config = MlflowConfig::new(&server.url).unwrap();
    config.experiment = String::new();
    let e = MlflowRegistry::new(config)
        .register(new_model(
            "pump-9",
            StoredModel::IsolationForest(forest(1, 0.0)),
            &[],
        ))
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::Mlflow { status: 400, error_code, .. } if error_code == "INVALID_PARAMETER_VALUE"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("MLflow GET experiments/get-by-name: HTTP 400 INVALID_PARAMETER_VALUE: "),
        "{e}"
    );
}

#[test]
fn unreachable_mlflow_is_named() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let reg = MlflowRegistry::new(MlflowConfig::new(&url).unwrap());
    let e = reg.list(None).unwrap_err();
    assert!(
        matches!(&e, RegistryError::Unreachable { url: u, .. } if *u == url),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("MLflow server {url} is unreachable: ")),
        "{e}"
    );
}

// --- the CLI and the REST API on MLflow ---------------------------------------------------------------

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().expect("run egizml");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_json(stdout: &str) -> Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

/// `egizml train` for the oven class on simulator history into the registry at `url`.
fn train(url: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "train",
        "--equipment-type",
        "oven",
        "--simulator",
        "--sim-things",
        "3",
        "--sim-points",
        "6000",
        "--registry",
        url,
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    last_json(&out)
}

#[test]
fn train_and_models_commands_and_the_api_on_mlflow() {
    let Some(server) = mlflow() else { return };
    let url = server.url.as_str();
    let v1 = train(url, &["--activate"]);
    assert_eq!(v1["model"]["id"], "oven/v1");
    assert_eq!(v1["activated"], true);
    let v2 = train(url, &["--model", "autoencoder", "--param", "epochs=2"]);
    assert_eq!(v2["model"]["id"], "oven/v2");
    assert_eq!(v2["activated"], false);

    let (ok, out, err) = run(&["models", "list", "--registry", url]);
    assert!(ok, "{err}");
    let listed = last_json(&out);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{out}");
    assert_eq!(listed[0]["id"], "oven/v1");
    assert_eq!(listed[0]["active"], true);
    assert_eq!(listed[1]["id"], "oven/v2");
    assert_eq!(listed[1]["hyper_parameters"]["epochs"], 2);
    // Exactly what train reported (the metrics included).
    let mut reported = v2["model"].clone();
    reported["active"] = Value::Bool(false);
    assert_eq!(listed[1], reported);
    assert!(out.starts_with("* oven/v1"), "{out}");

    let (ok, _, err) = run(&["models", "activate", "oven/v2", "--registry", url]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["models", "rollback", "oven", "--registry", url]);
    assert!(ok, "{err}");
    assert_eq!(last_json(&out)["active"], 1);
    let (ok, _, err) = run(&["models", "activate", "oven/v9", "--registry", url]);
    assert!(!ok);
    assert_eq!(err.trim(), "egizml: no version 9 of `oven`");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, err) = run(&["models", "list", "--registry", &closed]);
    assert!(!ok);
    assert!(
        err.starts_with(&format!("egizml: MLflow server {closed} is unreachable")),
        "{err}"
    );

    // The REST API of `egizml demo` on the same MLflow registry.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _demo = crate::service::procs::KillOnDrop(
        Command::new(bin())
            .args([
                "demo",
                "--duration",
                "120",
                "--things",
                "2",
                "--rate",
                "50",
                "--quiet",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--store", dir.path().join("demo.db").to_str().unwrap()])
            .args(["--registry", url, "--train-points", "4000"])
            .env_remove("EGIZML_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("demo starts"),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let up = wait_for(Duration::from_secs(60), || {
        ureq::get(format!("http://127.0.0.1:{port}/health"))
            .call()
            .ok()
    });
    assert!(up.is_some(), "the demo's API never answered");
    let get = |path: &str| -> Value {
        ureq::get(format!("{api}{path}"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let models = get("/models");
    let ids: Vec<(&str, bool)> = models["models"]
        .as_array()
        .unwrap_or_else(|| panic!("{models}"))
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["active"].as_bool().unwrap()))
        .collect();
    assert_eq!(ids, vec![("oven/v1", true), ("oven/v2", false)]);
    let resp = ureq::post(format!("{api}/models/oven/v2/activate"))
        .send_empty()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(get("/models/oven")["id"], "oven/v2");
    let (ok, out, _) = run(&["models", "show", "oven", "--registry", url]);
    assert!(ok && out.starts_with("* oven/v2"), "{out}");

    // A training job through the API registers into MLflow.
    let job: Value = ureq::post(format!("{api}/train/oven-00000"))
        .header("content-type", "application/json")
        .send(r#"{"activate":"always"}"#)
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let status_url = format!(
        "http://127.0.0.1:{port}{}",
        job["status_url"].as_str().unwrap()
    );
    let done = wait_for(Duration::from_secs(120), || {
        let job = ureq::get(&status_url)
            .call()
            .ok()?
            .body_mut()
            .read_json::<Value>()
            .ok()?;
        (job["state"] == "succeeded" || job["state"] == "failed").then_some(job)
    })
    .expect("the training job finished");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["report"]["model"]["id"], "oven-00000/v1");
    let reg = server.registry("egizml.");
    assert_eq!(reg.active("oven-00000").unwrap(), Some(1));
    let reported: std::collections::BTreeMap<String, f64> =
        serde_json::from_value(done["report"]["model"]["metrics"].clone()).unwrap();
    assert_eq!(
        reg.list(Some("oven-00000")).unwrap()[0].meta.metrics,
        reported
    );
}
