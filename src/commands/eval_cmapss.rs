//! `egizml eval cmapss --data DIR --subset FD001 [--register [--registry DIR] [--scope NAME]
//! [--activate]] [--save-model DIR]`: the standard C-MAPSS protocol. Train on `train_<subset>`
//! (hyper-parameters were chosen on a validation split of the training units, docs/ACCURACY.md), predict
//! at the last cycle of each test unit, compare with `RUL_<subset>`; `--register` versions the model in
//! the model registry beside the anomaly models (model_type `rul`).

use crate::registry::{
    check_family, ModelFamily, ModelMeta, NewModel, Registry, RegistryConfig, ScopeKind,
    StoredModel,
};
use crate::rul::cmapss::{load_subset, write_jsonl};
use crate::rul::features::FeatureSpec;
use crate::rul::metrics::{mae, phm08, rmse};
use crate::rul::model::{ForestParams, RulModel, TrainOptions};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Equipment type of C-MAPSS engines (also the `equipment_type` of `--export-jsonl` lines).
pub const CMAPSS_EQUIPMENT: &str = "turbofan";

/// Event time of cycle 0 in `--export-jsonl` output (2026-01-01T00:00:00Z); one cycle per hour.
pub const EXPORT_T0_MS: i64 = 1_767_225_600_000;

/// Arguments of `egizml eval cmapss`.
#[derive(Clone, Debug, clap::Args)]
pub struct CmapssArgs {
    /// Directory holding train_FDxxx.txt, test_FDxxx.txt and RUL_FDxxx.txt.
    #[arg(long)]
    pub data: PathBuf,
    /// Subset (FD001..FD004).
    #[arg(long, default_value = "FD001")]
    pub subset: String,
    /// Register the trained model as the next version of `--scope` in the model registry (model_type
    /// `rul`, with the evaluation's metrics).
    #[arg(long)]
    pub register: bool,
    /// Local model registry directory (with --register).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "egizml-data/models",
        requires = "register"
    )]
    pub registry: PathBuf,
    /// Registry scope (an equipment class) of the registered model (with --register).
    #[arg(long, default_value = CMAPSS_EQUIPMENT, requires = "register")]
    pub scope: String,
    /// Make the registered version the scope's active one (with --register).
    #[arg(long, requires = "register")]
    pub activate: bool,
    /// Also save the model as a standalone file, the next version under DIR
    /// (`DIR/<subset>/rul/<version>/model.json`), outside the registry.
    #[arg(long, value_name = "DIR")]
    pub save_model: Option<PathBuf>,
    /// Trees in the forest.
    #[arg(long, default_value_t = ForestParams::default().n_trees)]
    pub trees: usize,
    /// Minimum samples per leaf.
    #[arg(long, default_value_t = ForestParams::default().min_samples_leaf)]
    pub min_samples_leaf: usize,
    /// Maximum tree depth (unlimited when absent).
    #[arg(long)]
    pub max_depth: Option<u16>,
    /// Features tried per split (a third of them when absent).
    #[arg(long)]
    pub mtry: Option<usize>,
    /// Random seed.
    #[arg(long, default_value_t = ForestParams::default().seed)]
    pub seed: u64,
    /// Short rolling window, cycles.
    #[arg(long, default_value_t = FeatureSpec::cmapss_default().short)]
    pub short_window: usize,
    /// Long rolling window (mean, slope), cycles.
    #[arg(long, default_value_t = FeatureSpec::cmapss_default().long)]
    pub long_window: usize,
    /// Cycles averaged as each unit's own baseline.
    #[arg(long, default_value_t = FeatureSpec::cmapss_default().baseline)]
    pub baseline: usize,
    /// Successive predictions averaged per unit (1 = none).
    #[arg(long, default_value_t = 1)]
    pub smooth: usize,
    /// Leave out the linear health-index feature (the forest on window features alone).
    #[arg(long)]
    pub no_linear_hi: bool,
    /// Also write the test units as flat JSONL telemetry (for replaying them through the live path).
    #[arg(long, value_name = "FILE")]
    pub export_jsonl: Option<PathBuf>,
}

impl CmapssArgs {
    /// Arguments with the defaults for a data directory.
    pub fn new(data: PathBuf) -> Self {
        let f = ForestParams::default();
        let spec = FeatureSpec::cmapss_default();
        CmapssArgs {
            data,
            subset: "FD001".into(),
            register: false,
            registry: PathBuf::from("egizml-data/models"),
            scope: CMAPSS_EQUIPMENT.into(),
            activate: false,
            save_model: None,
            trees: f.n_trees,
            min_samples_leaf: f.min_samples_leaf,
            max_depth: f.max_depth,
            mtry: f.m,
            seed: f.seed,
            short_window: spec.short,
            long_window: spec.long,
            baseline: spec.baseline,
            smooth: 1,
            no_linear_hi: false,
            export_jsonl: None,
        }
    }
}

/// The last stdout line of `egizml eval cmapss` (DESIGN.md), plus a few extra fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CmapssSummary {
    pub subset: String,
    pub units: usize,
    pub rmse: f64,
    pub phm08: f64,
    pub mae: f64,
    /// Share of test units whose (capped) true RUL lies in the predicted interval.
    pub coverage: f64,
    /// RMSE on the held-out training units used for tuning and calibration.
    pub validation_rmse: f64,
    pub train_s: f64,
    pub elapsed_s: f64,
    /// Registry id of the registered model (`<scope>/v<N>`), with `--register`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Whether the registered version was activated, with `--register`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<bool>,
}

/// Everything the evaluation measured.
#[derive(Debug)]
pub struct CmapssReport {
    pub summary: CmapssSummary,
    /// Per test unit: (unit id, predicted RUL, true RUL).
    pub predictions: Vec<(u32, f64, f64)>,
    pub model: Arc<RulModel>,
    /// The standalone file written by `--save-model`.
    pub saved: Option<PathBuf>,
    /// The registry version written by `--register`.
    pub registered: Option<ModelMeta>,
    pub interval_level: f64,
}

pub fn eval_cmapss(args: &CmapssArgs) -> anyhow::Result<CmapssReport> {
    let t0 = Instant::now();
    if args.register {
        // A bad scope name, or a scope of anomaly models, fails before the training.
        let reg = RegistryConfig::local(&args.registry).open()?;
        check_family(reg.as_ref(), &args.scope, ModelFamily::Rul)
            .with_context(|| format!("registry {}", args.registry.display()))?;
    }
    let data = load_subset(&args.data, &args.subset).with_context(|| {
        format!(
            "cannot load C-MAPSS {} from {}",
            args.subset,
            args.data.display()
        )
    })?;
    if let Some(path) = &args.export_jsonl {
        let f = std::fs::File::create(path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        write_jsonl(
            &data.test,
            &data.name,
            "test",
            EXPORT_T0_MS,
            3_600_000,
            &mut w,
        )
        .and_then(|_| std::io::Write::flush(&mut w))
        .with_context(|| format!("{}: write failed", path.display()))?;
    }
    let mut opts = TrainOptions::cmapss(&data.name);
    opts.forest = ForestParams {
        n_trees: args.trees,
        max_depth: args.max_depth,
        min_samples_leaf: args.min_samples_leaf,
        m: args.mtry,
        seed: args.seed,
    };
    opts.smooth = args.smooth;
    opts.linear_hi = !args.no_linear_hi;
    opts.spec.short = args.short_window;
    opts.spec.long = args.long_window;
    opts.spec.baseline = args.baseline;
    anyhow::ensure!(args.trees > 0, "--trees must be at least 1");
    anyhow::ensure!(
        args.min_samples_leaf > 0,
        "--min-samples-leaf must be at least 1"
    );
    let t_train = Instant::now();
    let mut model = RulModel::train(&data.train, &opts)?;
    let train_s = t_train.elapsed().as_secs_f64();

    // Each test unit's prediction at its last cycle, built cycle by cycle as the live path does.
    let mut pred = Vec::with_capacity(data.test.len());
    for u in &data.test {
        pred.push(model.unit_predictions(u)?.pop().unwrap_or(model.meta.cap));
    }
    let truth = &data.rul;
    let covered = pred
        .iter()
        .zip(truth)
        .filter(|(p, t)| {
            let (lo, hi) = model.conformal.interval(**p);
            let t = t.min(model.meta.cap);
            t >= lo && t <= hi
        })
        .count();
    let mut summary = CmapssSummary {
        subset: data.name.clone(),
        units: pred.len(),
        rmse: round(rmse(&pred, truth), 3),
        phm08: round(phm08(&pred, truth), 1),
        mae: round(mae(&pred, truth), 3),
        coverage: round(covered as f64 / pred.len().max(1) as f64, 3),
        validation_rmse: round(model.meta.validation.rmse, 3),
        train_s: round(train_s, 2),
        elapsed_s: round(t0.elapsed().as_secs_f64(), 2),
        model_id: None,
        activated: None,
    };
    for (k, v) in [
        ("test_rmse", summary.rmse),
        ("test_phm08", summary.phm08),
        ("test_mae", summary.mae),
        ("test_coverage", summary.coverage),
    ] {
        model.meta.metrics.insert(k.into(), serde_json::json!(v));
    }
    let saved = match &args.save_model {
        Some(root) => Some(model.save(root)?),
        None => None,
    };
    let model = Arc::new(model);
    let registered = if args.register {
        let reg = RegistryConfig::local(&args.registry).open()?;
        let meta = register(reg.as_ref(), &model, &args.scope, &summary)
            .with_context(|| format!("registry {}", args.registry.display()))?;
        if args.activate {
            reg.activate(&meta.scope, meta.version)
                .with_context(|| format!("registry {}", args.registry.display()))?;
        }
        summary.model_id = Some(meta.id.clone());
        summary.activated = Some(args.activate);
        Some(meta)
    } else {
        None
    };
    let predictions = data
        .test
        .iter()
        .zip(&pred)
        .zip(truth)
        .map(|((u, p), t)| (u.id, *p, *t))
        .collect();
    Ok(CmapssReport {
        summary,
        predictions,
        interval_level: 1.0 - model.conformal.alpha,
        model,
        saved,
        registered,
    })
}

/// Registers `model` as the next version of `scope` (an equipment class), with the evaluation's
/// figures as its metrics: `rmse`, `phm08`, `mae`, `coverage` (test-unit interval coverage),
/// `interval_level`, `units` (test units) and the held-out validation figures, `train_units`,
/// `train_s`, `model_bytes`.
pub fn register(
    reg: &dyn Registry,
    model: &Arc<RulModel>,
    scope: &str,
    summary: &CmapssSummary,
) -> anyhow::Result<ModelMeta> {
    let m = &model.meta;
    let stored = StoredModel::Rul(Arc::clone(model));
    let metrics: BTreeMap<String, f64> = [
        ("rmse", summary.rmse),
        ("phm08", summary.phm08),
        ("mae", summary.mae),
        ("coverage", summary.coverage),
        ("interval_level", round(1.0 - model.conformal.alpha, 3)),
        ("units", summary.units as f64),
        ("validation_rmse", summary.validation_rmse),
        ("validation_coverage", round(m.validation.coverage, 3)),
        ("validation_units", m.validation.units as f64),
        ("validation_rows", m.validation.rows as f64),
        ("train_units", m.train_units as f64),
        ("train_s", summary.train_s),
        ("model_bytes", crate::training::model_bytes(&stored) as f64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(reg.register(NewModel {
        scope: scope.to_string(),
        scope_kind: ScopeKind::EquipmentClass,
        equipment_type: Some(CMAPSS_EQUIPMENT.to_string()),
        trained_at: crate::decode::timestamp::format_rfc3339(
            i64::try_from(m.trained_at).unwrap_or(i64::MAX / 1000) * 1000,
        ),
        samples: m.train_samples,
        features: model.input_names(),
        metrics,
        sql_hash: None,
        model: stored,
    })?)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Published FD001 figures (RMSE, PHM08): SOURCE.md beside the data, and DCNN from Li, Ding & Sun,
/// "Remaining useful life estimation in prognostics using deep convolution neural networks" (2018).
pub const PUBLISHED_FD001: [(&str, f64, f64); 7] = [
    ("CNN (Babu 2016)", 18.45, 1299.0),
    ("Deep LSTM (Zheng 2017)", 16.14, 338.0),
    ("DCNN (Li 2018)", 12.61, 273.7),
    ("DA-TCN 2021", 11.78, 229.0),
    ("MS-DCNN", 11.44, 196.22),
    ("TCNN-Transformer 2021", 11.40, 254.0),
    ("MTSTAN (best in table)", 10.97, 175.36),
];

/// The readable table.
pub fn describe(r: &CmapssReport) -> Vec<String> {
    let s = &r.summary;
    let m = &r.model.meta;
    let mut out = vec![
        format!(
            "C-MAPSS {}: trained on {} units ({} samples, target capped at {:.0}), {} test units",
            s.subset, m.train_units, m.train_samples, m.cap, s.units
        ),
        format!(
            "model: random forest, {} trees, min_samples_leaf {}, max_depth {}, seed {}; trained in {:.1} s",
            m.forest.n_trees,
            m.forest.min_samples_leaf,
            m.forest.max_depth.map_or("none".to_string(), |d| d.to_string()),
            m.forest.seed,
            s.train_s
        ),
        format!(
            "validation (held-out training units: {}, {} rows): RMSE {:.2}, {:.0}% interval coverage {:.2}",
            m.validation.units,
            m.validation.rows,
            m.validation.rmse,
            r.interval_level * 100.0,
            m.validation.coverage
        ),
        String::new(),
        format!("{:<28} {:>8} {:>10}", "method", "RMSE", "PHM08"),
        format!("{:<28} {:>8.2} {:>10.1}", "egizml (this run)", s.rmse, s.phm08),
    ];
    if s.subset == "FD001" {
        for (name, rmse, score) in PUBLISHED_FD001 {
            out.push(format!("{name:<28} {rmse:>8.2} {score:>10.1}"));
        }
    }
    out.push(String::new());
    out.push(format!(
        "MAE {:.2}; test interval coverage {:.2} ({:.0}% nominal); {:.1} s in all",
        s.mae,
        s.coverage,
        r.interval_level * 100.0,
        s.elapsed_s
    ));
    if let Some(p) = &r.saved {
        out.push(format!("model saved to {}", p.display()));
    }
    if let Some(m) = &r.registered {
        out.push(format!(
            "model registered as {} (model_type {}){}",
            m.id,
            m.model_type,
            if s.activated == Some(true) {
                ", active"
            } else {
                ", not activated"
            }
        ));
    }
    out
}
