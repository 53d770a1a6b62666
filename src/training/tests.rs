use super::*;
use crate::registry::LocalRegistry;

fn sim(points: usize) -> HistorySpec {
    HistorySpec::Simulator(SimulatorHistory {
        things: 3,
        points,
        seed: 11,
        faults_per_1000: 4.0,
    })
}

#[test]
fn feature_matrix_has_the_stream_columns_in_time_order() {
    let data = feature_matrix(&sim(3_000), "oven-00000", ScopeKind::Thing).unwrap();
    let ds = &data.dataset;
    assert_eq!(ds.len(), 1_000, "every third reading is oven-00000's");
    assert_eq!(
        ds.columns,
        [
            "voltage_a",
            "voltage_b",
            "voltage_c",
            "current_a",
            "current_b",
            "current_c",
            "power_factor",
            "temp_zone_1",
            "temp_zone_2",
            "temp_zone_3",
            "voltage_imbalance",
            "current_imbalance_pct",
            "temp_zone_spread"
        ]
    );
    // Derived columns are computed like the stream does: max - min of the three voltages.
    let r = ds.x.row(5);
    let (lo, hi) = r
        .iter()
        .take(3)
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    assert!((r[10] - (hi - lo)).abs() < 1e-12);
    assert!(ds.labels.is_some());
    assert_eq!(data.equipment_type.as_deref(), Some("oven"));
    assert_eq!(data.dropped_rows, 0);
}

#[test]
fn an_unknown_scope_is_a_clear_error() {
    let e = feature_matrix(&sim(300), "pump", ScopeKind::EquipmentClass).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no readings for equipment class `pump` in simulator"
    );
}

#[test]
fn a_malformed_history_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.jsonl");
    std::fs::write(
        &path,
        "{\"thing_id\":\"a\",\"ts\":1767225600000,\"values\":{\"x\":1.0}}\n\nnot json\n",
    )
    .unwrap();
    let e = feature_matrix(&HistorySpec::File(path), "a", ScopeKind::Thing).unwrap_err();
    assert!(e.to_string().contains("line 3"), "{e}");
}

#[test]
fn hyper_parameters_are_checked_by_name() {
    let e = ModelParams::from_json(
        ModelKind::IsolationForest,
        &serde_json::json!({"n_trees": 5}),
    )
    .unwrap_err();
    assert!(e.contains("n_trees"), "{e}");
    let e = ModelParams::from_json(
        ModelKind::IsolationForest,
        &serde_json::json!({"contamination": 0.9}),
    )
    .unwrap_err();
    assert!(e.contains("contamination"), "{e}");
    let e = ModelParams::from_json(ModelKind::Autoencoder, &serde_json::json!({"epochs": "x"}))
        .unwrap_err();
    assert!(e.contains("epochs"), "{e}");
    let p = ModelParams::from_json(
        ModelKind::IsolationForest,
        &serde_json::json!({"n_estimators": 7}),
    )
    .unwrap();
    match p {
        ModelParams::IsolationForest(p) => {
            assert_eq!((p.n_estimators, p.max_samples), (7, 256))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn trains_validates_registers_and_activates() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::new(dir.path());
    let data = feature_matrix(&sim(30_000), "oven", ScopeKind::EquipmentClass).unwrap();
    let rows = data.dataset.len();
    let mut spec = TrainSpec::new("oven", ScopeKind::EquipmentClass);
    spec.activate = ActivatePolicy::Always;
    let mut stages = Vec::new();
    let report = train(&spec, data, &reg, &mut |s| stages.push(s)).unwrap();
    assert_eq!(
        stages,
        [Stage::Training, Stage::Validating, Stage::Registering]
    );
    let m = &report.model;
    assert_eq!(m.id, "oven/v1");
    assert_eq!(m.model_type, "isolation_forest");
    assert_eq!(m.equipment_type.as_deref(), Some("oven"));
    assert_eq!(m.samples, (rows as f64 * 0.8).round() as usize);
    assert_eq!(m.metrics["validation_rows"] as usize, rows - m.samples);
    for k in [
        "precision",
        "recall",
        "f1",
        "train_s",
        "model_bytes",
        "threshold",
    ] {
        assert!(m.metrics.contains_key(k), "missing {k}");
    }
    // The confusion counts cover the validation rows and agree with the flagged share.
    let count = |k: &str| m.metrics[k] as usize;
    assert_eq!(
        count("tp") + count("fp") + count("fn") + count("tn"),
        rows - m.samples
    );
    let flagged = (count("tp") + count("fp")) as f64 / (rows - m.samples) as f64;
    assert!((flagged - m.metrics["validation_anomaly_rate"]).abs() < 1e-12);
    assert!(m.metrics["model_bytes"] > 10_000.0);
    assert_eq!(m.hyper_parameters["n_estimators"], 100);
    assert!(report.activated);
    assert_eq!(reg.active("oven").unwrap(), Some(1));
    // The registered model scores like the one trained.
    let (meta, model) = reg.load("oven", 1).unwrap();
    assert_eq!(meta, report.model);
    assert_eq!(model.threshold(), m.metrics["threshold"]);
}

#[test]
fn if_not_worse_keeps_the_better_active_version() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::new(dir.path());
    let data = feature_matrix(&sim(15_000), "oven", ScopeKind::EquipmentClass).unwrap();
    let mut spec = TrainSpec::new("oven", ScopeKind::EquipmentClass);
    spec.activate = ActivatePolicy::IfNotWorse;
    spec.compare_metric = "recall".into();
    let contamination = |c: f64| {
        ModelParams::from_json(
            ModelKind::IsolationForest,
            &serde_json::json!({ "contamination": c }),
        )
        .unwrap()
    };
    spec.params = contamination(0.2);
    let first = train(&spec, data.clone(), &reg, &mut |_| {}).unwrap();
    assert!(first.activated, "{}", first.activation);
    // The same forest (same seed and rows) with a higher threshold flags a subset: lower recall.
    spec.params = contamination(0.01);
    let worse = train(&spec, data.clone(), &reg, &mut |_| {}).unwrap();
    assert!(worse.model.metrics["recall"] < first.model.metrics["recall"]);
    assert!(!worse.activated, "{}", worse.activation);
    assert!(worse.activation.contains("oven/v1"), "{}", worse.activation);
    assert_eq!(reg.active("oven").unwrap(), Some(1));
    // The first parameters again: equal recall is not worse.
    spec.params = contamination(0.2);
    let same = train(&spec, data, &reg, &mut |_| {}).unwrap();
    assert!(same.activated, "{}", same.activation);
    assert_eq!(reg.active("oven").unwrap(), Some(3));
}

#[test]
fn not_worse_knows_error_metrics_and_missing_values() {
    let m = |k: &str, v: f64| [(k.to_string(), v)].into_iter().collect::<BTreeMap<_, _>>();
    assert!(not_worse("f1", &m("f1", 0.5), &m("f1", 0.4)));
    assert!(!not_worse("f1", &m("f1", 0.3), &m("f1", 0.4)));
    assert!(not_worse("rmse", &m("rmse", 12.0), &m("rmse", 13.0)));
    assert!(!not_worse("rmse", &m("rmse", 14.0), &m("rmse", 13.0)));
    assert!(not_worse("f1", &BTreeMap::new(), &BTreeMap::new()));
    assert!(!not_worse("f1", &BTreeMap::new(), &m("f1", 0.4)));
}

#[test]
fn trains_an_autoencoder() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::new(dir.path());
    let data = feature_matrix(&sim(6_000), "mixer-00001", ScopeKind::Thing).unwrap();
    let mut spec = TrainSpec::new("mixer-00001", ScopeKind::Thing);
    spec.params =
        ModelParams::from_json(ModelKind::Autoencoder, &serde_json::json!({"epochs": 5})).unwrap();
    let report = train(&spec, data, &reg, &mut |_| {}).unwrap();
    assert_eq!(report.model.model_type, "autoencoder");
    assert_eq!(
        report.model.hyper_parameters["hidden"],
        serde_json::json!([5, 2, 5])
    );
    assert!(!report.activated);
    assert_eq!(reg.active("mixer-00001").unwrap(), None);
    let (_, model) = reg.load("mixer-00001", 1).unwrap();
    assert!(model.threshold() > 0.0);
    assert_eq!(model.threshold(), report.model.metrics["threshold"]);
}
