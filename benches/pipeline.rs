//! Criterion benches of the per-reading hot path: decode, per-thing update, scoring, and the whole
//! engine step. `cargo bench --bench pipeline`; figures go to docs/BENCHMARKS.md.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use egizml::commands::load_dataflow;
use egizml::config::{DataflowConfig, ModelConfig};
use egizml::decode::Decoder;
use egizml::detectors::mahalanobis::OnlineMahalanobis;
use egizml::detectors::stats::FeatureStats;
use egizml::pipeline::{Engine, Record};
use egizml::sources::simulator::{Simulator, SimulatorConfig};
use egizml::sql_features::FeatureSet;

const FLAT: &[u8] = br#"{"thing_id":"oven-00042","equipment_type":"oven","ts":1767225600000,"values":{"voltage_a":230.1,"voltage_b":229.8,"voltage_c":230.4,"current_a":15.1,"current_b":14.9,"current_c":15.0,"power_factor":0.92,"temp_zone_1":185.2,"temp_zone_2":190.1,"temp_zone_3":188.0},"label":0}"#;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    let mut decoder = Decoder::new(&DataflowConfig::default().decode);
    g.bench_function("flat_10_values", |b| {
        b.iter(|| black_box(decoder.decode(black_box(FLAT)).expect("valid")))
    });
    g.finish();
}

fn per_thing_update(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_thing");
    g.throughput(Throughput::Elements(1));
    let mut stats = FeatureStats::new(60, 0.3);
    let mut x = 0.0f64;
    g.bench_function("feature_stats_update_w60", |b| {
        b.iter(|| {
            x = (x + 0.618_033_988_7) % 1.0;
            stats.update(black_box(230.0 + x))
        })
    });
    g.bench_function("feature_stats_score_w60", |b| {
        b.iter(|| black_box(stats.score(black_box(231.0))))
    });
    g.finish();
}

fn scoring(c: &mut Criterion) {
    let mut g = c.benchmark_group("scoring");
    g.throughput(Throughput::Elements(1));
    let dim = 13;
    let mut model = OnlineMahalanobis::new(dim, &ModelConfig::default());
    let mut seed = 1u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..500 {
        let x: Vec<f64> = (0..dim).map(|_| next()).collect();
        model.update(&x);
    }
    let x: Vec<f64> = (0..dim).map(|_| next()).collect();
    let mut scratch = Vec::new();
    let mut out = model.score(&x).expect("warm");
    g.bench_function("mahalanobis_score_d13", |b| {
        b.iter(|| black_box(model.score_into(black_box(&x), &mut scratch, &mut out)))
    });
    g.bench_function("mahalanobis_update_d13", |b| {
        b.iter(|| model.update(black_box(&x)))
    });
    g.finish();
}

fn engine_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    let (cfg, rules) = load_dataflow(None).expect("embedded defaults");
    let mut engine = Engine::new(cfg, rules, false);
    let mut sim = Simulator::new(SimulatorConfig {
        things: 100,
        ..SimulatorConfig::default()
    });
    let mut out = Vec::new();
    // Past the warm-up of every thing, so every detector runs.
    for _ in 0..100 * 200 {
        engine.process(Record::Point(sim.next_point(), 0), 0, &mut out);
    }
    g.bench_function("process_reading_all_detectors", |b| {
        b.iter_batched(
            || sim.next_point(),
            |p| {
                engine.process(Record::Point(p, 0), 0, &mut out);
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// SQL feature sets (issue 4): the compiled stream evaluator alone, and the engine step with
/// `features.sql: sql/electrical.sql` (its outputs replace the three built-in derived features).
fn sql_features(c: &mut Criterion) {
    let mut g = c.benchmark_group("sql_features");
    g.throughput(Throughput::Elements(1));
    let sql_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let set = FeatureSet::from_file(&sql_dir.join("electrical.sql")).expect("shipped");
    let eval = set.evaluator();
    let mut windows = eval.new_thing();
    let mut out = vec![None; eval.outputs().len()];
    let mut x = 0.0f64;
    let mut inputs = vec![Some(0.0); eval.inputs().len()];
    g.bench_function("evaluate_electrical", |b| {
        b.iter(|| {
            x = (x + 0.618_033_988_7) % 1.0;
            for (i, v) in inputs.iter_mut().enumerate() {
                *v = Some(100.0 + i as f64 + x);
            }
            eval.evaluate(&mut windows, black_box(&inputs), &mut out);
            black_box(&out);
        })
    });
    let (cfg, rules) = load_dataflow(None).expect("embedded defaults");
    let mut cfg = (*cfg).clone();
    cfg.features.sql = Some(sql_dir.join("electrical.sql"));
    cfg.features.compile_sql(&sql_dir).expect("shipped");
    let mut engine = Engine::new(std::sync::Arc::new(cfg), rules, false);
    let mut sim = Simulator::new(SimulatorConfig {
        things: 100,
        ..SimulatorConfig::default()
    });
    let mut out = Vec::new();
    for _ in 0..100 * 200 {
        engine.process(Record::Point(sim.next_point(), 0), 0, &mut out);
    }
    g.bench_function("process_reading_electrical_sql", |b| {
        b.iter_batched(
            || sim.next_point(),
            |p| {
                engine.process(Record::Point(p, 0), 0, &mut out);
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    decode,
    per_thing_update,
    scoring,
    engine_step,
    sql_features
);
criterion_main!(benches);
