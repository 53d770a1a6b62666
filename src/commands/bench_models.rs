//! `egizml bench-models`: the memory of many loaded registry models (issue 7).
//!
//! Trains `--models` distinct models (each on its own generated matrix) through the same function as
//! `egizml train` into a fresh local registry and activates them, then starts a fresh `egizml`
//! process that loads every active model through the loader the stream uses
//! ([`ActiveModels::watch`], the dataflow's `models:` section) and reports its `VmRSS` growth. A fresh
//! process, because memory the training freed would otherwise be reused by the loading and hide part
//! of it. The loaded models' own accounting ([`ActiveModel::memory_bytes`]: the structures and the
//! capacity of every buffer they own) is reported beside the RSS figure so it can be explained.

use crate::models::Dataset;
use crate::pipeline::rss_bytes;
use crate::registry::{ActiveModels, LocalRegistry, Registry, ScopeKind, StoredModel};
use crate::training::{self, ActivatePolicy, ModelKind, ModelParams, TrainSpec, TrainingData};
use anyhow::Context;
use ndarray::Array2;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `egizml bench-models`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchModelsArgs {
    /// Models to train and load (one scope each).
    #[arg(long, default_value_t = 100)]
    pub models: usize,
    /// Model family (default hyper-parameters).
    #[arg(long, value_enum, default_value_t = ModelKind::IsolationForest)]
    pub kind: ModelKind,
    /// Features per model.
    #[arg(long, default_value_t = 13)]
    pub features: usize,
    /// Generated rows per model (80 % train, 20 % validate, as `egizml train` splits them).
    #[arg(long, default_value_t = 2_000)]
    pub rows: usize,
    /// Keep the registry in this directory, which must be absent or empty (default: a temporary
    /// directory, removed at the end).
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// Only load the active models of `--registry` and print the load report (what the measuring
    /// process runs).
    #[arg(long, hide = true, requires = "registry")]
    pub load_only: bool,
}

/// What loading the models did to the process (the last stdout line of `bench-models --load-only`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadReport {
    /// Models in the loaded snapshot.
    pub loaded: usize,
    pub load_s: f64,
    /// `VmRSS` before loading (one model parsed beforehand and kept, so code and allocator are warm).
    pub rss_before_bytes: u64,
    /// `VmRSS` with every model loaded.
    pub rss_loaded_bytes: u64,
    /// `VmRSS` after each model scored and explained one row (lazily built state included).
    pub rss_used_bytes: u64,
    /// Sum of [`crate::registry::ActiveModel::memory_bytes`] over the snapshot.
    pub accounted_bytes: u64,
}

/// What training wrote.
#[derive(Clone, Debug, Default)]
pub struct Written {
    /// Model files (`model.json`), bytes, all models.
    pub file_bytes: u64,
    /// Isolation Forests: mean nodes per tree.
    pub nodes_per_tree: Option<f64>,
}

/// The last stdout line of `bench-models`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchModelsSummary {
    pub models: usize,
    pub kind: String,
    pub features: usize,
    pub rows: usize,
    /// Model files (`model.json`) in the registry, bytes, all models.
    pub file_bytes: u64,
    pub file_bytes_per_model: f64,
    pub rss_before_bytes: u64,
    pub rss_loaded_bytes: u64,
    /// (`rss_loaded_bytes` - `rss_before_bytes`) / models.
    pub rss_per_model_bytes: f64,
    /// The same after every model scored and explained a row.
    pub rss_used_per_model_bytes: f64,
    /// What the loaded structures account for, per model.
    pub accounted_bytes_per_model: f64,
    pub nodes_per_tree: Option<f64>,
    pub train_s: f64,
    pub load_s: f64,
}

/// A registry directory removed on drop unless it is the user's.
struct RegistryDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for RegistryDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn scope(i: usize) -> String {
    format!("bench-model-{i:05}")
}

/// `egizml bench-models`: trains into a registry, then measures the loading in a fresh process.
pub fn bench_models(args: &BenchModelsArgs) -> anyhow::Result<BenchModelsSummary> {
    if args.load_only {
        anyhow::bail!("--load-only prints a load report: call `load_report`");
    }
    anyhow::ensure!(args.models >= 1, "--models must be >= 1");
    anyhow::ensure!(args.features >= 1, "--features must be >= 1");
    anyhow::ensure!(
        args.rows >= 10,
        "--rows must be >= 10 (80 % train, 20 % validate)"
    );
    let dir = match &args.registry {
        Some(p) => {
            let empty = match std::fs::read_dir(p) {
                Ok(mut entries) => entries.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(e).with_context(|| format!("--registry {}", p.display())),
            };
            anyhow::ensure!(
                empty,
                "--registry {}: must be absent or empty (the bench fills it)",
                p.display()
            );
            RegistryDir {
                path: p.clone(),
                remove: false,
            }
        }
        None => RegistryDir {
            path: std::env::temp_dir().join(format!("egizml-bench-models-{}", std::process::id())),
            remove: true,
        },
    };
    let started = Instant::now();
    let written = write_models(args, &dir.path)?;
    let train_s = started.elapsed().as_secs_f64();
    let exe = std::env::current_exe().context("the egizml executable")?;
    let out = std::process::Command::new(&exe)
        .arg("bench-models")
        .arg("--load-only")
        .arg("--registry")
        .arg(&dir.path)
        .output()
        .with_context(|| format!("running {} bench-models --load-only", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the loading process failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let load: LoadReport = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("the loading process printed no load report: {stdout}"))?;
    anyhow::ensure!(
        load.loaded == args.models,
        "{} models loaded of {}",
        load.loaded,
        args.models
    );
    Ok(summary(args, &written, train_s, &load))
}

/// The summary of a load report for `args`.
pub fn summary(
    args: &BenchModelsArgs,
    written: &Written,
    train_s: f64,
    load: &LoadReport,
) -> BenchModelsSummary {
    let n = args.models.max(1) as f64;
    let per = |after: u64| after.saturating_sub(load.rss_before_bytes) as f64 / n;
    BenchModelsSummary {
        models: args.models,
        kind: args.kind.as_str().to_string(),
        features: args.features,
        rows: args.rows,
        file_bytes: written.file_bytes,
        file_bytes_per_model: written.file_bytes as f64 / n,
        rss_before_bytes: load.rss_before_bytes,
        rss_loaded_bytes: load.rss_loaded_bytes,
        rss_per_model_bytes: per(load.rss_loaded_bytes),
        rss_used_per_model_bytes: per(load.rss_used_bytes),
        accounted_bytes_per_model: load.accounted_bytes as f64 / n,
        nodes_per_tree: written.nodes_per_tree,
        train_s,
        load_s: load.load_s,
    }
}

/// A generated training matrix, distinct per model: correlated features around a drifting operating
/// point (like plant telemetry), each model with its own seed, offsets and scales.
fn matrix(rows: usize, features: usize, model: usize) -> Array2<f64> {
    let mut rng = SmallRng::seed_from_u64(0x5EED ^ model as u64);
    let offset: Vec<f64> = (0..features)
        .map(|_| rng.random_range(-100.0..100.0))
        .collect();
    let scale: Vec<f64> = (0..features).map(|_| rng.random_range(0.5..5.0)).collect();
    Array2::from_shape_fn((rows, features), |(i, j)| {
        let base = ((i / 100) as f64 * 0.05 + model as f64).sin();
        offset[j] + scale[j] * (base * (j as f64 + 1.0) + rng.random::<f64>() - 0.5)
    })
}

/// Trains `args.models` models with `egizml train`'s function into a local registry at `dir`, each
/// in its own scope and activated; returns the size of their model files and their shape.
pub fn write_models(args: &BenchModelsArgs, dir: &Path) -> anyhow::Result<Written> {
    let registry = LocalRegistry::new(dir);
    let columns: Vec<String> = (0..args.features).map(|j| format!("f{j:02}")).collect();
    let mut file_bytes = 0;
    let (mut nodes, mut trees) = (0usize, 0usize);
    for i in 0..args.models {
        let mut spec = TrainSpec::new(scope(i), ScopeKind::Thing);
        spec.params = ModelParams::from_json(args.kind, &serde_json::json!({}))
            .map_err(anyhow::Error::msg)?;
        spec.activate = ActivatePolicy::Always;
        let data = TrainingData {
            dataset: Dataset::new(columns.clone(), matrix(args.rows, args.features, i), None)?,
            equipment_type: Some("bench".into()),
            sql_hash: None,
            dropped_rows: 0,
        };
        let report = training::train(&spec, data, &registry, &mut |_| {})?;
        let file = dir
            .join(&report.model.scope)
            .join(format!("v{}", report.model.version))
            .join("model.json");
        file_bytes += std::fs::metadata(&file)
            .with_context(|| format!("model file {}", file.display()))?
            .len();
        if let (_, StoredModel::IsolationForest(f)) =
            registry.load_stored(&report.model.scope, report.model.version)?
        {
            nodes += f.trees.iter().map(|t| t.n_nodes()).sum::<usize>();
            trees += f.trees.len();
        }
    }
    Ok(Written {
        file_bytes,
        nodes_per_tree: (trees > 0).then(|| nodes as f64 / trees as f64),
    })
}

/// Loads every active model of the local registry at `dir` as the stream does, and reports the
/// process's memory before and after.
pub fn load_report(dir: &Path) -> anyhow::Result<LoadReport> {
    let registry: Arc<dyn Registry> = Arc::new(LocalRegistry::new(dir));
    let active = registry.active_versions()?;
    let (first_scope, first_version) = active
        .iter()
        .next()
        .with_context(|| format!("no active models in {}", dir.display()))?;
    // Warm-up: the code paths of loading and the allocator's first pages, kept out of the figure.
    let warm = registry.load(first_scope, *first_version)?;
    let rss = || rss_bytes().context("VmRSS (/proc/self/status) is unavailable");
    let rss_before_bytes = rss()?;
    let started = Instant::now();
    // The stream's loader; the watcher thread it leaves polls once an hour, i.e. never during this.
    let models = ActiveModels::watch(Arc::clone(&registry), Duration::from_secs(3600))?;
    let snapshot = models.current();
    let load_s = started.elapsed().as_secs_f64();
    let rss_loaded_bytes = rss()?;
    let accounted_bytes = snapshot
        .by_scope
        .values()
        .map(|m| m.memory_bytes() as u64)
        .sum();
    let mut sink = 0.0;
    for m in snapshot.by_scope.values() {
        let row = vec![0.5; m.model.n_features()];
        sink += m.model.score(&row);
        sink += m.model.explain(&row).iter().sum::<f64>();
    }
    std::hint::black_box(sink);
    let rss_used_bytes = rss()?;
    drop(warm);
    Ok(LoadReport {
        loaded: snapshot.by_scope.len(),
        load_s,
        rss_before_bytes,
        rss_loaded_bytes,
        rss_used_bytes,
        accounted_bytes,
    })
}

/// The human-readable line printed before the JSON summary.
pub fn describe(s: &BenchModelsSummary) -> String {
    let mb = |b: f64| b / 1e6;
    let nodes = s
        .nodes_per_tree
        .map_or(String::new(), |n| format!(", {n:.0} nodes per tree"));
    format!(
        "{} {} models ({} features{nodes}): {:.3} MB resident per model ({:.1} MB for all; {:.3} MB after \
         scoring and explaining), {:.3} MB accounted by the structures, model file {:.3} MB; VmRSS {:.1} MB -> {:.1} MB",
        s.models,
        s.kind,
        s.features,
        mb(s.rss_per_model_bytes),
        mb(s.rss_per_model_bytes * s.models as f64),
        mb(s.rss_used_per_model_bytes),
        mb(s.accounted_bytes_per_model),
        mb(s.file_bytes_per_model),
        mb(s.rss_before_bytes as f64),
        mb(s.rss_loaded_bytes as f64),
    )
}
