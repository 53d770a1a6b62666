use super::*;
use crate::models::{Fit, IsolationForestParams};
use ndarray::Array2;

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

fn new(scope: &str, model: IsolationForest) -> NewModel {
    NewModel {
        scope: scope.to_string(),
        scope_kind: ScopeKind::Thing,
        equipment_type: Some("oven".into()),
        trained_at: "2026-11-23T00:00:00Z".into(),
        samples: 300,
        features: vec!["temp".into(), "vibration".into()],
        metrics: [("f1".to_string(), 0.5)].into_iter().collect(),
        sql_hash: Some("abc".into()),
        model: StoredModel::IsolationForest(model),
    }
}

#[test]
fn register_activate_score_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::new(dir.path().join("models"));
    assert!(reg.list(None).unwrap().is_empty());
    // v1 learnt data around 0.5, v2 data around 10.5: a row at 0.5 is normal for v1 only.
    let m1 = reg.register(new("pump-1", forest(1, 0.0))).unwrap();
    let m2 = reg.register(new("pump-1", forest(2, 10.0))).unwrap();
    assert_eq!((m1.version, m2.version), (1, 2));
    assert_eq!(m2.id, "pump-1/v2");
    assert_eq!(m2.model_type, "isolation_forest");
    assert_eq!(m2.hyper_parameters["n_estimators"], 10);
    assert_eq!(reg.active("pump-1").unwrap(), None);
    assert!(reg.load_active("pump-1").unwrap().is_none());

    let row = [0.5, 0.5];
    reg.activate("pump-1", 1).unwrap();
    let (meta, model) = reg.load_active("pump-1").unwrap().unwrap();
    assert_eq!(meta.version, 1);
    let s1 = model.score(&row);
    assert!(!model.is_anomaly(&row), "{s1}");

    reg.activate("pump-1", 2).unwrap();
    let (meta, model) = reg.load_active("pump-1").unwrap().unwrap();
    assert_eq!(meta.version, 2);
    assert!(model.is_anomaly(&row));
    assert!(model.score(&row) > s1);

    let list = reg.list(Some("pump-1")).unwrap();
    assert_eq!(
        list.iter()
            .map(|v| (v.meta.version, v.active))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, true)]
    );
    assert_eq!(reg.rollback("pump-1").unwrap(), 1);
    assert_eq!(reg.active("pump-1").unwrap(), Some(1));
    assert!(matches!(
        reg.rollback("pump-1"),
        Err(RegistryError::NothingToRollBack { .. })
    ));
    assert!(matches!(
        reg.activate("pump-1", 9),
        Err(RegistryError::UnknownVersion { version: 9, .. })
    ));
    assert!(matches!(
        reg.register(new("../etc", forest(1, 0.0))),
        Err(RegistryError::InvalidScope(_))
    ));
    // No temporary files left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".tmp"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn corrupt_and_foreign_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::new(dir.path());
    reg.register(new("press", forest(3, 0.0))).unwrap();
    let model_path = dir.path().join("press/v1/model.json");
    let good = std::fs::read_to_string(&model_path).unwrap();

    std::fs::write(&model_path, &good[..good.len() / 2]).unwrap();
    let err = reg.load("press", 1).unwrap_err().to_string();
    assert!(
        err.contains("model.json") && err.contains("not an EgizML model file"),
        "{err}"
    );

    std::fs::write(
        &model_path,
        good.replace("\"format_version\":1", "\"format_version\":7"),
    )
    .unwrap();
    let err = reg.load("press", 1).unwrap_err().to_string();
    assert!(
        err.contains("unknown model format egizml-model version 7"),
        "{err}"
    );

    // Well-formed JSON, inconsistent forest: a split on a feature the model does not have.
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["model"]["n_features"] = serde_json::json!(1);
    std::fs::write(&model_path, v.to_string()).unwrap();
    let err = reg.load("press", 1).unwrap_err().to_string();
    assert!(err.contains("split on a feature"), "{err}");

    std::fs::write(&model_path, &good).unwrap();
    assert!(reg.load("press", 1).is_ok());
    std::fs::write(dir.path().join("press/active.json"), "{").unwrap();
    let err = reg.active("press").unwrap_err().to_string();
    assert!(err.contains("active.json"), "{err}");
}

fn new_rul(scope: &str, model: Arc<RulModel>) -> NewModel {
    NewModel {
        scope: scope.to_string(),
        scope_kind: ScopeKind::EquipmentClass,
        equipment_type: Some("turbofan".into()),
        trained_at: "2026-12-05T00:00:00Z".into(),
        samples: model.meta.train_samples,
        features: model.input_names(),
        metrics: [("rmse".to_string(), 12.5), ("phm08".to_string(), 250.0)]
            .into_iter()
            .collect(),
        sql_hash: None,
        model: StoredModel::Rul(model),
    }
}

#[test]
fn rul_models_are_versioned_beside_anomaly_models() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::new(dir.path());
    let model = Arc::new(crate::rul::tests::small_model());
    let m1 = reg
        .register(new_rul("turbofan", Arc::clone(&model)))
        .unwrap();
    let m2 = reg
        .register(new_rul("turbofan", Arc::clone(&model)))
        .unwrap();
    reg.register(new("oven", forest(1, 0.0))).unwrap();
    assert_eq!(
        (m1.id.as_str(), m2.id.as_str()),
        ("turbofan/v1", "turbofan/v2")
    );
    assert_eq!(m2.model_type, "rul");
    assert_eq!(m2.scope_kind, ScopeKind::EquipmentClass);
    assert_eq!(m2.hyper_parameters["forest"]["n_trees"], 5);
    assert_eq!(m2.hyper_parameters["cap"], 125.0);
    assert_eq!(m2.features.last().map(String::as_str), Some("linear_hi"));
    // The same envelope as anomaly models.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("turbofan/v2/model.json")).unwrap())
            .unwrap();
    assert_eq!(file["format"], MODEL_FORMAT);
    assert_eq!(file["model_type"], "rul");
    let types: Vec<(String, String)> = reg
        .list(None)
        .unwrap()
        .into_iter()
        .map(|v| (v.meta.id, v.meta.model_type))
        .collect();
    assert_eq!(
        types,
        [
            ("oven/v1", "isolation_forest"),
            ("turbofan/v1", "rul"),
            ("turbofan/v2", "rul")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );

    // Loaded back it predicts exactly what it predicted before saving.
    let (meta, loaded) = reg.load_rul("turbofan", 2).unwrap();
    assert_eq!(meta.id, "turbofan/v2");
    let unit = &crate::rul::tests::synthetic_units(1, 5)[0];
    assert_eq!(
        loaded.unit_predictions(unit).unwrap(),
        model.unit_predictions(unit).unwrap()
    );
    reg.activate("turbofan", 1).unwrap();
    let (meta, _) = ModelRef::parse("turbofan")
        .unwrap()
        .find(&reg)
        .map(|i| reg.load_rul(&i.meta.scope, i.meta.version).unwrap())
        .unwrap();
    assert_eq!(meta.id, "turbofan/v1");

    // Where an anomaly model is required, a RUL model is a clear error, and the other way round.
    let err = reg.load("turbofan", 1).unwrap_err();
    assert!(matches!(err, RegistryError::WrongModelType { .. }));
    assert_eq!(
        err.to_string(),
        "`turbofan/v1` is not an anomaly model (model_type rul)"
    );
    assert!(matches!(
        reg.load_active("turbofan"),
        Err(RegistryError::WrongModelType { .. })
    ));
    let err = reg.load_rul("oven", 1).unwrap_err().to_string();
    assert_eq!(
        err,
        "`oven/v1` is not a RUL model (model_type isolation_forest)"
    );

    // A scope holds one family, so its active version is unambiguous.
    let err = reg.register(new("turbofan", forest(1, 0.0))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "scope `turbofan` holds rul models; register anomaly models under another scope"
    );
    let err = reg.register(new_rul("oven", model)).unwrap_err();
    assert!(matches!(
        err,
        RegistryError::MixedScope {
            existing: "anomaly",
            ..
        }
    ));
    assert_eq!(reg.list(Some("oven")).unwrap().len(), 1);

    // A damaged RUL model is named with its file.
    let path = dir.path().join("turbofan/v1/model.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["model"]["healthy"] = serde_json::json!([]);
    std::fs::write(&path, v.to_string()).unwrap();
    let err = reg.load_rul("turbofan", 1).unwrap_err().to_string();
    assert!(
        err.contains("turbofan/v1/model.json") && err.contains("inconsistent"),
        "{err}"
    );
}

#[test]
fn loading_a_model_is_timed_in_model_load_time_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::new(dir.path().join("models"));
    reg.register(new("kiln-1", forest(3, 0.0))).unwrap();
    let h = &crate::metrics::global().model_load_time;
    // The histogram is process-wide and other tests may load models too: it only grows.
    let (count, sum) = (h.get_sample_count(), h.get_sample_sum());
    assert!(reg.load("kiln-1", 1).is_ok());
    assert!(h.get_sample_count() > count);
    assert!(h.get_sample_sum() > sum);
}
