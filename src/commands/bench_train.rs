//! `egizml bench-train`: Isolation Forest training time, model file size, and the cost of scoring and
//! of the exact TreeSHAP explanation, on a generated matrix.

use crate::models::{Fit, IsolationForestParams, Model};
use ndarray::Array2;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Arguments of `egizml bench-train`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchTrainArgs {
    /// Training rows.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Features per row.
    #[arg(long, default_value_t = 10)]
    pub features: usize,
    /// Training threads (default: the machine's cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Rows scored and explained to time scoring and TreeSHAP.
    #[arg(long, default_value_t = 2_000)]
    pub explain_rows: usize,
}

/// The last stdout line of `bench-train`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchTrainSummary {
    pub rows: usize,
    pub features: usize,
    pub train_s: f64,
    pub model_bytes: usize,
    pub score_us: f64,
    pub explain_us: f64,
}

pub fn bench_train(args: &BenchTrainArgs) -> anyhow::Result<BenchTrainSummary> {
    anyhow::ensure!(
        args.rows >= 2 && args.features >= 1,
        "--rows must be >= 2 and --features >= 1"
    );
    let mut rng = SmallRng::seed_from_u64(1);
    // Correlated features around a drifting operating point, like plant telemetry.
    let x = Array2::from_shape_fn((args.rows, args.features), |(i, j)| {
        let base = ((i / 1000) as f64 * 0.01).sin();
        base * (j as f64 + 1.0) + rng.random::<f64>() - 0.5
    });
    let params = IsolationForestParams {
        threads: args.threads,
        ..Default::default()
    };
    let t = Instant::now();
    let forest = params.fit(x.view())?;
    let train_s = t.elapsed().as_secs_f64();
    let model_bytes = forest.file_size();
    let n = args.explain_rows.clamp(1, args.rows);
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|k| x.row(k * (args.rows / n)).to_vec())
        .collect();
    let t = Instant::now();
    let mut sink = 0.0;
    for r in &rows {
        sink += forest.score(r);
    }
    let score_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for r in &rows {
        sink += forest.explain(r)[0];
    }
    let explain_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    std::hint::black_box(sink);
    Ok(BenchTrainSummary {
        rows: args.rows,
        features: args.features,
        train_s,
        model_bytes,
        score_us,
        explain_us,
    })
}
