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
