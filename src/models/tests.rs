use super::iforest::average_path_length;
use super::*;
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A bell-shaped cloud (sums of uniforms) with a few far outliers in the last rows.
fn cloud(n: usize, d: usize, outliers: usize, seed: u64) -> (Array2<f64>, Vec<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = Array2::zeros((n, d));
    let mut labels = vec![false; n];
    for i in 0..n {
        for j in 0..d {
            let v: f64 = (0..4).map(|_| rng.random::<f64>() - 0.5).sum();
            x[[i, j]] = v + j as f64;
        }
    }
    for (k, label) in labels.iter_mut().rev().take(outliers).enumerate() {
        *label = true;
        let i = n - 1 - k;
        // Off in every feature: a single-feature offset is isolated only when that feature is drawn,
        // which leaves such points close to the cloud's rim in score.
        for j in 0..d {
            x[[i, j]] += if j == k % d { 8.0 + k as f64 } else { 4.0 };
        }
    }
    (x, labels)
}

#[test]
fn average_path_length_matches_known_values() {
    assert_eq!(average_path_length(1), 0.0);
    assert_eq!(average_path_length(2), 1.0);
    // c(256) as in scikit-learn's _average_path_length.
    assert!((average_path_length(256) - 10.244_770_920_116_851).abs() < 1e-9);
}

#[test]
fn params_are_checked() {
    let x = Array2::<f64>::zeros((10, 2));
    let bad = |p: IsolationForestParams| match p.fit(x.view()) {
        Err(ModelError::InvalidParam { name, .. }) => name,
        other => panic!("expected an invalid parameter, got {other:?}"),
    };
    let base = IsolationForestParams::default();
    assert_eq!(
        bad(IsolationForestParams {
            n_estimators: 0,
            ..base.clone()
        }),
        "n_estimators"
    );
    assert_eq!(
        bad(IsolationForestParams {
            contamination: 0.7,
            ..base.clone()
        }),
        "contamination"
    );
    assert_eq!(
        bad(IsolationForestParams {
            max_samples: 1,
            ..base.clone()
        }),
        "max_samples"
    );
    // Node indices are u16: a tree of 32,769 rows could need 65,537 nodes.
    assert_eq!(
        bad(IsolationForestParams {
            max_samples: iforest::MAX_SAMPLES + 1,
            ..base
        }),
        "max_samples"
    );
    let ae = AutoencoderParams {
        hidden: vec![],
        ..Default::default()
    };
    assert!(matches!(
        ae.fit(x.view()),
        Err(ModelError::InvalidParam { name: "hidden", .. })
    ));
    let mut nan = x.clone();
    nan[[3, 1]] = f64::NAN;
    assert!(matches!(
        IsolationForestParams::default().fit(nan.view()),
        Err(ModelError::Data(_))
    ));
}

#[test]
fn isolation_forest_finds_outliers_deterministically() {
    let (x, labels) = cloud(2_000, 4, 10, 1);
    let params = IsolationForestParams {
        contamination: 0.005,
        threads: 2,
        ..Default::default()
    };
    let a = params.fit(x.view()).unwrap();
    // Same seed, other thread count: the same forest.
    let b = IsolationForestParams {
        threads: 1,
        ..params.clone()
    }
    .fit(x.view())
    .unwrap();
    assert!(a.trees == b.trees && a.threshold == b.threshold);
    assert_eq!(a.trees.len(), 100);
    assert_eq!(a.samples_per_tree, 256);
    let scores = a.predict(x.view()).unwrap();
    assert!(scores.iter().all(|s| *s > 0.0 && *s < 1.0));
    let flagged: Vec<bool> = scores.iter().map(|s| *s > a.threshold()).collect();
    let c = Classification::of(&flagged, &labels);
    assert!(c.recall >= 0.9, "{c:?}");
    assert!(c.precision >= 0.8, "{c:?}");
    // The training-score quantile leaves about `contamination` of the rows above the threshold.
    assert!((8..=12).contains(&flagged.iter().filter(|f| **f).count()));
    // Wrong width: an error from predict, NaN from score, nothing from explain.
    assert!(matches!(
        a.predict(x.slice(ndarray::s![.., ..3])),
        Err(ModelError::Dimension {
            expected: 4,
            got: 3
        })
    ));
    assert!(a.score(&[1.0]).is_nan());
    assert!(a.explain(&[1.0]).is_empty());
}

#[test]
fn forest_round_trips_through_json_and_rejects_corruption() {
    let (x, _) = cloud(500, 3, 0, 2);
    let f = IsolationForestParams {
        n_estimators: 10,
        ..Default::default()
    }
    .fit(x.view())
    .unwrap();
    let json = serde_json::to_string(&f).unwrap();
    let back: IsolationForest = serde_json::from_str(&json).unwrap();
    back.validate().unwrap();
    assert_eq!(back, f);
    let row = [0.1, 1.2, 2.3];
    assert_eq!(back.score(&row).to_bits(), f.score(&row).to_bits());
    // A child index pointing backwards (a cycle) is refused on load.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["trees"][0]["left"][0] = serde_json::json!(0u32);
    assert!(serde_json::from_value::<IsolationForest>(v.clone()).is_err());
    v["trees"][0]["left"][0] = serde_json::json!(1u32);
    v["trees"][0]["cover"][0] = serde_json::json!(7u32);
    assert!(serde_json::from_value::<IsolationForest>(v).is_err());
}

#[test]
fn shap_values_are_additive_and_point_at_the_outlier_feature() {
    let (x, _) = cloud(1_000, 5, 0, 3);
    let f = IsolationForestParams::default().fit(x.view()).unwrap();
    let mut row: Vec<f64> = (0..5).map(|j| j as f64).collect();
    row[2] += 9.0;
    let (phi, base) = f.shap_values(&row);
    let eh = f.expected_path_length(&row);
    assert!((phi.iter().sum::<f64>() + base - eh).abs() < 1e-9);
    let contrib = f.explain(&row);
    let top = (0..5)
        .max_by(|a, b| contrib[*a].total_cmp(&contrib[*b]))
        .unwrap();
    assert_eq!(top, 2, "{contrib:?}");
    assert!(contrib[2] > 0.0);
}

#[test]
fn scaler_standardises_and_survives_constant_columns() {
    let x = ndarray::array![[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]];
    let s = StandardScaler::fit(x.view()).unwrap();
    assert_eq!(s.mean, vec![3.0, 5.0]);
    assert!((s.std[0] - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
    assert_eq!(s.std[1], 1.0);
    let t = s.transform(x.view());
    assert!((t[[2, 0]] - 2.0 / (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
    assert_eq!(t[[0, 1]], 0.0);
    assert_eq!(s.transform_row(&[3.0, 6.0]), vec![0.0, 1.0]);
}

#[test]
fn dataset_checks_shapes_and_splits_in_time_order() {
    let x = Array2::from_shape_fn((10, 2), |(i, j)| (i * 2 + j) as f64);
    let cols = vec!["a".to_string(), "b".to_string()];
    assert!(Dataset::new(cols[..1].to_vec(), x.clone(), None).is_err());
    assert!(Dataset::new(cols.clone(), x.clone(), Some(vec![false; 3])).is_err());
    let ds = Dataset::new(cols, x, Some((0..10).map(|i| i >= 8).collect())).unwrap();
    let (train, val) = ds.split(0.8);
    assert_eq!(train.x.nrows(), 8);
    assert_eq!(val.x[[0, 0]], 16.0);
    assert_eq!(val.labels.unwrap(), &[true, true]);
}

#[test]
fn classification_metrics() {
    let c = Classification::of(
        &[true, true, false, false, true],
        &[true, false, true, false, true],
    );
    assert_eq!((c.tp, c.fp, c.fn_, c.tn), (2, 1, 1, 1));
    assert!((c.precision - 2.0 / 3.0).abs() < 1e-12);
    assert!((c.recall - 2.0 / 3.0).abs() < 1e-12);
    assert!((c.f1 - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(Classification::of(&[false], &[false]).f1, 0.0);
}

#[test]
fn autoencoder_learns_correlated_data_and_flags_broken_correlation() {
    // Three features driven by one latent factor: a 2-wide bottleneck reconstructs them well.
    let mut rng = StdRng::seed_from_u64(4);
    let n = 3_000;
    let x = Array2::from_shape_fn((n, 3), |_| 0.0);
    let mut x = x;
    for i in 0..n {
        let t: f64 = rng.random_range(-1.0..1.0);
        let noise = |r: &mut StdRng| r.random_range(-0.02..0.02);
        x[[i, 0]] = t + noise(&mut rng);
        x[[i, 1]] = 2.0 * t + noise(&mut rng);
        x[[i, 2]] = -t + 5.0 + noise(&mut rng);
    }
    let params = AutoencoderParams {
        hidden: vec![4, 2, 4],
        epochs: 40,
        learning_rate: 5e-3,
        ..Default::default()
    };
    let ae = params.fit(x.view()).unwrap();
    assert_eq!(
        ae,
        params.fit(x.view()).unwrap(),
        "seeded training is deterministic"
    );
    assert!(ae.final_loss < 0.05, "loss {}", ae.final_loss);
    let normal = [0.5, 1.0, 4.5];
    let broken = [0.5, -1.0, 4.5]; // feature 1 contradicts the others
    assert!(
        ae.score(&normal) < ae.threshold(),
        "{} {}",
        ae.score(&normal),
        ae.threshold()
    );
    assert!(ae.is_anomaly(&broken));
    let e = ae.explain(&broken);
    let top = (0..3).max_by(|a, b| e[*a].total_cmp(&e[*b])).unwrap();
    assert_eq!(top, 1, "{e:?}");
    let json = serde_json::to_string(&ae).unwrap();
    let back: Autoencoder = serde_json::from_str(&json).unwrap();
    back.validate().unwrap();
    assert_eq!(back.score(&broken).to_bits(), ae.score(&broken).to_bits());
}

// --- TreeSHAP against shap.TreeExplainer -------------------------------------------------------------

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/iforest_shap")
}

/// What `scripts/shap_fixture.py` reads (forest.json is the forest itself).
#[derive(Serialize, Deserialize)]
struct FixtureRows {
    rows: Vec<Vec<f64>>,
}

/// What `scripts/shap_fixture.py` writes.
#[derive(Deserialize)]
struct FixtureExpected {
    expected_value: f64,
    shap_values: Vec<Vec<f64>>,
    shap_version: String,
}

/// Regenerates the forest and rows of the fixture (then run scripts/shap_fixture.py):
/// `cargo test --lib models::tests::write_shap_fixture_inputs -- --ignored`
#[test]
#[ignore = "writes the TreeSHAP fixture inputs"]
fn write_shap_fixture_inputs() {
    let (x, _) = cloud(3_000, 6, 20, 5);
    let forest = IsolationForestParams {
        n_estimators: 25,
        max_samples: 128,
        seed: 7,
        ..Default::default()
    }
    .fit(x.view())
    .unwrap();
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("forest.json"),
        serde_json::to_string(&forest).unwrap(),
    )
    .unwrap();
    // Ordinary rows, the planted outliers, and rows far outside the training range.
    let mut rows: Vec<Vec<f64>> = (0..20).map(|i| x.row(i * 97).to_vec()).collect();
    rows.extend((0..10).map(|k| x.row(2_999 - k).to_vec()));
    rows.push(vec![-20.0, 1.0, 2.0, 3.0, 4.0, 50.0]);
    rows.push(vec![0.0; 6]);
    std::fs::write(
        dir.join("rows.json"),
        serde_json::to_string(&FixtureRows { rows }).unwrap(),
    )
    .unwrap();
}

#[test]
fn tree_shap_matches_python_shap() {
    let dir = fixture_dir();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let forest: IsolationForest = serde_json::from_str(&read("forest.json")).unwrap();
    forest.validate().unwrap();
    let rows: FixtureRows = serde_json::from_str(&read("rows.json")).unwrap();
    let expected: FixtureExpected = serde_json::from_str(&read("expected.json")).unwrap();
    assert!(!expected.shap_version.is_empty());
    assert_eq!(rows.rows.len(), expected.shap_values.len());
    assert!(rows.rows.len() >= 30);
    for (row, want) in rows.rows.iter().zip(&expected.shap_values) {
        let (phi, base) = forest.shap_values(row);
        assert!((base - expected.expected_value).abs() < 1e-6, "{base}");
        for (j, (got, want)) in phi.iter().zip(want).enumerate() {
            assert!(
                (got - want).abs() < 1e-6,
                "row {row:?} feature {j}: {got} vs shap {want}"
            );
        }
    }
}

/// The node arrays of a model file, as written (u32 indices, covers as counts).
#[derive(Deserialize)]
struct FileTree {
    left: Vec<u32>,
    right: Vec<u32>,
    feature: Vec<u32>,
    threshold: Vec<f64>,
    cover: Vec<u32>,
}

/// The anomaly score computed straight from the file's arrays, with the arithmetic of the
/// representation before the compact one (f64 depth + c(cover) at the leaf, mean over trees).
fn score_from_file(trees: &[FileTree], samples_per_tree: usize, row: &[f64]) -> f64 {
    let sum: f64 = trees
        .iter()
        .map(|t| {
            let (mut node, mut depth) = (0usize, 0usize);
            while t.left[node] != 0 {
                node = if row[t.feature[node] as usize] <= t.threshold[node] {
                    t.left[node] as usize
                } else {
                    t.right[node] as usize
                };
                depth += 1;
            }
            depth as f64 + average_path_length(t.cover[node] as usize)
        })
        .sum();
    let eh = sum / trees.len() as f64;
    (2.0f64).powf(-eh / average_path_length(samples_per_tree))
}

#[test]
fn compact_trees_score_bit_identically_to_the_file_arrays() {
    let (x, _) = cloud(3_000, 13, 20, 11);
    let forest = IsolationForestParams::default().fit(x.view()).unwrap();
    let json = serde_json::to_value(&forest).unwrap();
    let trees: Vec<FileTree> = serde_json::from_value(json["trees"].clone()).unwrap();
    let loaded: IsolationForest = serde_json::from_value(json).unwrap();
    assert_eq!(loaded, forest);
    let mut rng = StdRng::seed_from_u64(12);
    let mut rows: Vec<Vec<f64>> = (0..300).map(|i| x.row(i * 10).to_vec()).collect();
    rows.extend((0..300).map(|_| {
        (0..13)
            .map(|j| j as f64 + rng.random_range(-4.0..4.0))
            .collect()
    }));
    // Rows exactly on split thresholds: `<=` must still send them left.
    let t0 = &trees[0];
    rows.push(
        (0..13)
            .map(|j| {
                if j == t0.feature[0] as usize {
                    t0.threshold[0]
                } else {
                    j as f64
                }
            })
            .collect(),
    );
    for row in &rows {
        let want = score_from_file(&trees, forest.samples_per_tree, row);
        assert_eq!(forest.score(row).to_bits(), want.to_bits(), "{row:?}");
        assert_eq!(loaded.score(row).to_bits(), want.to_bits(), "{row:?}");
    }
}

#[test]
fn forest_memory_is_the_node_buffers_and_loading_leaves_no_slack() {
    let (x, _) = cloud(1_000, 5, 0, 13);
    let forest = IsolationForestParams::default().fit(x.view()).unwrap();
    let nodes: usize = forest.trees.iter().map(|t| t.n_nodes()).sum();
    let per_node = 4 * std::mem::size_of::<u16>() + 2 * std::mem::size_of::<f64>();
    let structs = std::mem::size_of::<IsolationForest>()
        + forest.trees.capacity() * std::mem::size_of::<iforest::IsolationTree>();
    assert_eq!(forest.memory_bytes(), structs + nodes * per_node);
    // Loaded from its file, the forest holds exactly as much: no parse buffers or spare capacity.
    let loaded: IsolationForest =
        serde_json::from_slice(&serde_json::to_vec(&forest).unwrap()).unwrap();
    let loaded_structs = std::mem::size_of::<IsolationForest>()
        + loaded.trees.capacity() * std::mem::size_of::<iforest::IsolationTree>();
    assert_eq!(loaded.memory_bytes(), loaded_structs + nodes * per_node);
    // A tree's accessors cover its buffers exactly.
    let t = &forest.trees[0];
    let n = t.n_nodes();
    assert_eq!(t.heap_bytes(), n * per_node);
    for part in [t.left(), t.right(), t.feature(), t.cover()] {
        assert_eq!(part.len(), n);
    }
    assert_eq!(t.thresholds().len() + t.values().len(), 2 * n);
    assert!(t.cover()[0] as usize == forest.samples_per_tree);
}

#[test]
fn autoencoder_memory_counts_its_weights() {
    let (x, _) = cloud(500, 4, 0, 14);
    let ae = AutoencoderParams {
        epochs: 2,
        ..Default::default()
    }
    .fit(x.view())
    .unwrap();
    let floats: usize = ae
        .layers
        .iter()
        .map(|l| l.w.len() + l.b.len())
        .sum::<usize>()
        + 2 * 4;
    let m = ae.memory_bytes();
    assert!(m >= floats * 8 + std::mem::size_of::<Autoencoder>(), "{m}");
    assert!(m < floats * 8 + 1_024, "{m}");
}
