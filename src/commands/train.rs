//! `egizml train`: trains a model for one thing or an equipment class on history, prints its validation
//! metrics and registers it as a new version (optionally activated).

use crate::registry::{Registry, RegistryConfig, ScopeKind};
use crate::training::{
    self, ActivatePolicy, HistorySpec, ModelKind, ModelParams, SimulatorHistory, Stage,
    TrainReport, TrainSpec,
};
use anyhow::Context;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Arguments of `egizml train`.
#[derive(Clone, Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["thing", "equipment_type"])))]
#[command(group(clap::ArgGroup::new("source").required(true).args(["history", "simulator"])))]
pub struct TrainArgs {
    /// Train for this thing (scope = the thing id).
    #[arg(long)]
    pub thing: Option<String>,
    /// Train for every thing of this equipment class (scope = the class).
    #[arg(long)]
    pub equipment_type: Option<String>,
    /// History file: JSON lines (flat or EgizCore format; `label` is used for metrics when present).
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Train on labelled simulator telemetry instead of a file (see --sim-*).
    #[arg(long)]
    pub simulator: bool,
    /// Simulated things (with --simulator).
    #[arg(long, default_value_t = 20)]
    pub sim_things: usize,
    /// Simulated readings over all things (with --simulator).
    #[arg(long, default_value_t = 100_000)]
    pub sim_points: usize,
    /// Simulator seed (with --simulator).
    #[arg(long, default_value_t = 7)]
    pub sim_seed: u64,
    /// Fault episodes per thing per 1,000 readings (with --simulator).
    #[arg(long, default_value_t = 3.0)]
    pub sim_faults_per_1000: f64,
    /// Compute the features with this SQL feature set (DataFusion over the history) instead of the
    /// built-in derived features: use the file the scoring dataflow's `features.sql` names, so the model
    /// is trained on the features the stream computes. Its hash is recorded as the model's sql_hash.
    #[arg(long, value_name = "FILE.sql")]
    pub features_sql: Option<PathBuf>,
    /// Model family.
    #[arg(long, value_enum, default_value_t = ModelKind::IsolationForest)]
    pub model: ModelKind,
    /// A hyper-parameter, NAME=VALUE (VALUE as JSON, e.g. n_estimators=200, hidden=[8,3,8]);
    /// repeatable. Unknown names and bad values are refused.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Share of the rows (the earliest) used for training; the rest validates.
    #[arg(long, default_value_t = 0.8)]
    pub train_fraction: f64,
    /// Activate the new version.
    #[arg(long, conflicts_with = "activate_if_not_worse")]
    pub activate: bool,
    /// Activate the new version unless its --compare-metric is worse than the active version's.
    #[arg(long)]
    pub activate_if_not_worse: bool,
    /// Metric compared by --activate-if-not-worse.
    #[arg(long, default_value = "f1")]
    pub compare_metric: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Which registry a command uses.
#[derive(Clone, Debug, clap::Args)]
pub struct RegistryArgs {
    /// Model registry: a local directory, or an MLflow tracking server `http://HOST:PORT` (registered
    /// models `egizml.<scope>`, experiment `egizml`).
    #[arg(long, default_value = "egizml-data/models")]
    pub registry: PathBuf,
}

impl RegistryArgs {
    pub fn config(&self) -> anyhow::Result<RegistryConfig> {
        Ok(RegistryConfig::from_arg(&self.registry)?)
    }

    pub fn open(&self) -> anyhow::Result<std::sync::Arc<dyn Registry>> {
        Ok(self.config()?.open()?)
    }
}

/// `NAME=VALUE` pairs -> a JSON object (a VALUE that is not JSON is taken as a string).
pub fn parse_params(pairs: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--param `{pair}`: expected NAME=VALUE"))?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        if map.insert(name.trim().to_string(), value).is_some() {
            anyhow::bail!("--param `{name}` is given more than once");
        }
    }
    Ok(serde_json::Value::Object(map))
}

impl TrainArgs {
    /// The history source and the training spec the arguments describe.
    pub fn spec(&self) -> anyhow::Result<(HistorySpec, TrainSpec)> {
        let (scope, kind) = match (&self.thing, &self.equipment_type) {
            (Some(t), None) => (t.clone(), ScopeKind::Thing),
            (None, Some(c)) => (c.clone(), ScopeKind::EquipmentClass),
            _ => anyhow::bail!("give exactly one of --thing and --equipment-type"),
        };
        let history = match (&self.history, self.simulator) {
            (Some(p), false) => HistorySpec::File(p.clone()),
            (None, true) => HistorySpec::Simulator(SimulatorHistory {
                things: self.sim_things,
                points: self.sim_points,
                seed: self.sim_seed,
                faults_per_1000: self.sim_faults_per_1000,
            }),
            _ => anyhow::bail!("give exactly one of --history and --simulator"),
        };
        let params = ModelParams::from_json(self.model, &parse_params(&self.params)?)
            .map_err(anyhow::Error::msg)?;
        let mut spec = TrainSpec::new(scope, kind);
        spec.params = params;
        spec.train_fraction = self.train_fraction;
        spec.compare_metric = self.compare_metric.clone();
        spec.activate = if self.activate {
            ActivatePolicy::Always
        } else if self.activate_if_not_worse {
            ActivatePolicy::IfNotWorse
        } else {
            ActivatePolicy::Never
        };
        Ok((history, spec))
    }
}

/// A one-line progress display on stderr, only when stderr is a terminal (logs stay clean).
struct ProgressLine {
    tty: bool,
}

impl ProgressLine {
    fn show(&self, stage: Stage, detail: &str) {
        if self.tty {
            eprint!("\r\x1b[2K[{}/4] {}{detail}", stage.step(), stage.as_str());
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!("\r\x1b[2K[4/4] done");
        }
    }
}

/// `egizml train`.
pub fn train(args: &TrainArgs) -> anyhow::Result<TrainReport> {
    let (history, spec) = args.spec()?;
    let registry = args.registry.open()?;
    let progress = ProgressLine {
        tty: std::io::stderr().is_terminal(),
    };
    progress.show(Stage::Loading, "");
    let data = match &args.features_sql {
        Some(path) => {
            let set = crate::sql_features::FeatureSet::from_file(path)?;
            training::sql_feature_matrix(&history, &set, &spec.scope, spec.scope_kind)?
        }
        None => training::feature_matrix(&history, &spec.scope, spec.scope_kind)?,
    };
    let rows = data.dataset.len();
    let cols = data.dataset.columns.len();
    let report = training::train(&spec, data, registry.as_ref(), &mut |stage| {
        let detail = match stage {
            Stage::Training => format!(
                " {} on {rows} rows x {cols} features",
                spec.params.kind().as_str()
            ),
            _ => String::new(),
        };
        progress.show(stage, &detail);
    })?;
    progress.done();
    Ok(report)
}

/// The human-readable lines printed before the JSON summary.
pub fn describe(report: &TrainReport) -> Vec<String> {
    let m = &report.model;
    let get = |k: &str| m.metrics.get(k).copied();
    let mut lines = vec![format!(
        "registered {} ({}, {} training rows x {} features: {})",
        m.id,
        m.model_type,
        m.samples,
        m.features.len(),
        m.features.join(", ")
    )];
    lines.push(format!(
        "training time {:.2} s, model size {:.1} kB, threshold {:.4}, validation rows {}, flagged {:.2} %",
        get("train_s").unwrap_or(0.0),
        get("model_bytes").unwrap_or(0.0) / 1e3,
        get("threshold").unwrap_or(f64::NAN),
        get("validation_rows").unwrap_or(0.0),
        get("validation_anomaly_rate").unwrap_or(0.0) * 100.0
    ));
    match (get("precision"), get("recall"), get("f1")) {
        (Some(p), Some(r), Some(f)) => lines.push(format!(
            "validation precision {p:.3}, recall {r:.3}, F1 {f:.3} (tp {}, fp {}, fn {})",
            get("tp").unwrap_or(0.0),
            get("fp").unwrap_or(0.0),
            get("fn").unwrap_or(0.0)
        )),
        _ => lines.push("no labels in the history: precision/recall/F1 not computed".into()),
    }
    lines.push(report.activation.clone());
    lines
}
