use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::batch::{feature_matrix, run, HistoryColumns};
use super::*;

const SENSORS: [&str; 12] = [
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
    "vibration_rms",
    "speed_rpm",
];

/// One reading per row, things interleaved, ts strictly increasing per thing with irregular gaps.
/// Includes NULLs (5% of values), a thing without `power_factor` and `speed_rpm`, a stretch of
/// constant values (variance exactly 0) and of zero currents (the CASE's else branch).
struct History {
    things: Vec<String>,
    ts: Vec<i64>,
    values: Vec<Vec<Option<f64>>>,
    labels: Vec<f64>,
}

fn history(rows_per_thing: usize, seed: u64) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let things = ["oven-1", "oven-2", "press-9"];
    let mut h = History {
        things: Vec::new(),
        ts: Vec::new(),
        values: vec![Vec::new(); SENSORS.len()],
        labels: Vec::new(),
    };
    let mut clock = [1_767_225_600_000i64; 3];
    for i in 0..rows_per_thing {
        for (t, thing) in things.iter().enumerate() {
            clock[t] += 1000 * rng.random_range(1..=4);
            h.things.push(thing.to_string());
            h.ts.push(clock[t]);
            h.labels.push((i % 97 == 50) as u8 as f64);
            let constant = (100..130).contains(&i);
            let idle = (200..215).contains(&i);
            for (s, name) in SENSORS.iter().enumerate() {
                let base = match *name {
                    n if n.starts_with("voltage") => 230.0,
                    n if n.starts_with("current") => 15.0,
                    "power_factor" => 0.9,
                    n if n.starts_with("temp") => 180.0 + s as f64,
                    "vibration_rms" => 4.0,
                    _ => 1450.0,
                };
                let v = if constant {
                    base
                } else if idle && name.starts_with("current") {
                    0.0
                } else {
                    base * (1.0 + rng.random_range(-0.05..0.05))
                };
                let missing = (t == 2 && (*name == "power_factor" || *name == "speed_rpm"))
                    || rng.random_bool(0.05);
                h.values[s].push(if missing { None } else { Some(v) });
            }
        }
    }
    h
}

fn to_batch(h: &History) -> RecordBatch {
    let mut fields = vec![
        Field::new(THING_ID, DataType::Utf8, false),
        Field::new(TS, DataType::Int64, false),
        Field::new("label", DataType::Float64, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(h.things.clone())),
        Arc::new(Int64Array::from(h.ts.clone())),
        Arc::new(Float64Array::from(h.labels.clone())),
    ];
    for (s, name) in SENSORS.iter().enumerate() {
        fields.push(Field::new(*name, DataType::Float64, true));
        cols.push(Arc::new(Float64Array::from(h.values[s].clone())));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// Streams the history reading by reading (things interleaved, as the dataflow sees them), returning
/// rows sorted by (thing_id, ts) like the batch result.
fn stream(set: &FeatureSet, h: &History) -> HistoryColumns {
    let ev = set.evaluator();
    let mut state: std::collections::HashMap<String, ThingWindows> = Default::default();
    let slots: Vec<usize> = ev
        .inputs()
        .iter()
        .map(|i| SENSORS.iter().position(|s| s == i).expect("known sensor"))
        .collect();
    let mut rows: Vec<(String, i64, Vec<Option<f64>>)> = Vec::new();
    let mut inputs = vec![None; slots.len()];
    for r in 0..h.ts.len() {
        for (x, &s) in inputs.iter_mut().zip(&slots) {
            *x = h.values[s][r];
        }
        let st = state
            .entry(h.things[r].clone())
            .or_insert_with(|| ev.new_thing());
        let mut out = vec![None; ev.outputs().len()];
        ev.evaluate(st, &inputs, &mut out);
        rows.push((h.things[r].clone(), h.ts[r], out));
    }
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut out = HistoryColumns {
        names: ev.outputs().to_vec(),
        columns: vec![Vec::new(); ev.outputs().len()],
        ..Default::default()
    };
    for (thing, ts, vals) in rows {
        out.thing_ids.push(thing);
        out.ts.push(ts);
        for (c, v) in out.columns.iter_mut().zip(vals) {
            c.push(v);
        }
    }
    out
}

fn same(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) if x.is_nan() && y.is_nan() => true,
        (Some(x), Some(y)) if x.is_infinite() || y.is_infinite() => x == y,
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9,
        _ => false,
    }
}

/// Asserts batch == stream to 1e-9 for every row and column; returns the number of non-NULL values
/// compared (so a test can check it compared something).
fn assert_parity(set: &FeatureSet, h: &History) -> usize {
    let batch = run(set, &[to_batch(h)]).unwrap();
    let streamed = stream(set, h);
    assert_eq!(batch.thing_ids, streamed.thing_ids, "{}", set.name);
    assert_eq!(batch.ts, streamed.ts, "{}", set.name);
    assert_eq!(batch.names, streamed.names);
    let mut compared = 0;
    for (j, name) in batch.names.iter().enumerate() {
        for i in 0..batch.ts.len() {
            let (b, s) = (batch.columns[j][i], streamed.columns[j][i]);
            assert!(
                same(b, s),
                "{}: {name} differs at {} ts {}: batch {b:?} stream {s:?}",
                set.name,
                batch.thing_ids[i],
                batch.ts[i]
            );
            compared += b.is_some() as usize;
        }
    }
    compared
}

#[test]
fn every_shipped_feature_set_streams_exactly_what_datafusion_computes() {
    let files = shipped_feature_files();
    assert!(files.len() >= 3, "{files:?}");
    let h = history(400, 7);
    for f in files {
        let set = FeatureSet::from_file(&f).unwrap();
        let compared = assert_parity(&set, &h);
        // Most values are defined: the parity is not vacuous.
        assert!(
            compared > set.outputs.len() * h.ts.len() / 2,
            "{}: only {compared} values",
            set.name
        );
    }
}

/// DataFusion 50.3's sliding `MIN` returns a stale value when every non-NULL value has left the frame
/// (apache/datafusion#23872, fixed upstream by #23874 after 50.3). The stream evaluator returns NULL,
/// as PostgreSQL, DuckDB and later DataFusion do; the parity test above therefore keeps `MIN`'s
/// argument non-NULL. This pins both behaviours so an upgrade that fixes the bug shows up here.
#[test]
fn min_over_an_all_null_frame_is_null_in_the_stream_and_stale_in_datafusion_50() {
    let sql = "SELECT thing_id, ts, MIN(voltage_a) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS m FROM telemetry";
    let set = FeatureSet::from_sql("min.sql", sql).unwrap();
    let mut h = History {
        things: vec!["t".to_string(); 3],
        ts: vec![1_000, 2_000, 3_000],
        values: vec![vec![Some(230.0); 3]; SENSORS.len()],
        labels: vec![0.0; 3],
    };
    let va = SENSORS.iter().position(|s| *s == "voltage_a").unwrap();
    h.values[va] = vec![Some(3.0), None, None];
    let streamed = stream(&set, &h);
    assert_eq!(streamed.columns[0], vec![Some(3.0), Some(3.0), None]);
    let batch = run(&set, &[to_batch(&h)]).unwrap();
    assert_eq!(batch.columns[0], vec![Some(3.0), Some(3.0), Some(3.0)]);
}

#[test]
fn parity_holds_for_every_supported_construct() {
    let sql = "SELECT thing_id, ts,
        CASE WHEN voltage_a IS NULL THEN -1 WHEN voltage_a BETWEEN 225 AND 235 THEN 1 ELSE 0 END AS band,
        CASE speed_rpm WHEN 1450.0 THEN 1.0 ELSE 2.0 END AS exact_speed,
        COALESCE(power_factor, 0.5) * 2 AS pf,
        NULLIF(current_a, 0.0) AS current_a_nz,
        -voltage_b % 7 + 3 / 2 AS int_div_and_rem,
        CAST(voltage_c AS INT) AS truncated,
        ROUND(vibration_rms * 10) / 10 AS rounded,
        POWER(ABS(current_b), 0.5) + SQRT(ABS(current_c)) + LN(ABS(current_a) + 1) + EXP(-vibration_rms) AS maths,
        FLOOR(temp_zone_1) + CEIL(temp_zone_2) + LOG10(temp_zone_3) + LOG2(voltage_a) AS more_maths,
        (voltage_a > voltage_b AND NOT voltage_b < voltage_c) OR voltage_c IS NOT NULL AS logic,
        SUM(current_a) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS s4,
        COUNT(*) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS n4,
        VAR_POP(temp_zone_1) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS vp7,
        VAR(temp_zone_2) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS vs7,
        STDDEV(temp_zone_3) OVER (PARTITION BY thing_id ORDER BY ts ROWS 1 PRECEDING) AS sd2,
        MIN(COALESCE(voltage_a - voltage_b, 0)) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 0 PRECEDING AND CURRENT ROW) AS d1,
        LAG(voltage_a, 2, -1.0) OVER (PARTITION BY thing_id ORDER BY ts) AS lag2,
        LAG(voltage_a) OVER (PARTITION BY thing_id ORDER BY ts) AS lag1
      FROM telemetry ORDER BY thing_id, ts";
    let set = FeatureSet::from_sql("constructs.sql", sql).unwrap();
    assert_eq!(set.outputs.len(), 18);
    let compared = assert_parity(&set, &history(150, 11));
    assert!(compared > 18 * 150, "{compared}");
}

#[test]
fn unsupported_sql_fails_at_start_up_naming_file_and_construct() {
    let cases = [
        ("SELECT thing_id, ts, voltage_a FROM telemetry WHERE voltage_a > 1", "Filter"),
        (
            "SELECT thing_id, max(ts) AS ts, avg(voltage_a) AS v FROM telemetry GROUP BY thing_id",
            "Aggregate",
        ),
        (
            "SELECT thing_id, ts, avg(voltage_a) OVER (PARTITION BY thing_id ORDER BY ts) AS v FROM telemetry",
            "a frame other than ROWS BETWEEN n PRECEDING AND CURRENT ROW",
        ),
        (
            "SELECT thing_id, ts, avg(voltage_a) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING) AS v FROM telemetry",
            "a frame other than ROWS",
        ),
        (
            "SELECT thing_id, ts, avg(voltage_a) OVER (ORDER BY ts ROWS 2 PRECEDING) AS v FROM telemetry",
            "PARTITION BY thing_id",
        ),
        (
            "SELECT thing_id, ts, avg(voltage_a) OVER (PARTITION BY thing_id ORDER BY ts DESC ROWS 2 PRECEDING) AS v FROM telemetry",
            "ORDER BY ts",
        ),
        (
            "SELECT thing_id, ts, lead(voltage_a) OVER (PARTITION BY thing_id ORDER BY ts) AS v FROM telemetry",
            "window function `lead`",
        ),
        ("SELECT thing_id, ts, sin(voltage_a) AS v FROM telemetry", "function `sin`"),
        ("SELECT thing_id, ts, ts * 2 AS v FROM telemetry", "`ts` inside an expression"),
        ("SELECT thing_id, voltage_a FROM telemetry", "without `thing_id` and `ts`"),
        ("SELECT thing_id, ts, 'x' AS v FROM telemetry", "output"),
    ];
    for (sql, construct) in cases {
        let err = FeatureSet::from_sql("bad.sql", sql)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad.sql: "), "{err}");
        assert!(err.contains(construct), "{sql}\n -> {err}");
    }
    let err = FeatureSet::from_sql("typo.sql", "SELEC thing_id FROM telemetry")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("typo.sql: SQL error"), "{err}");
    let err = FeatureSet::from_file(Path::new("/nonexistent/x.sql")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.sql"), "{err}");
}

#[test]
fn feature_matrix_keeps_complete_rows_with_labels_and_things() {
    let set = FeatureSet::from_file(&shipped_feature_files()[0]).unwrap();
    let h = history(60, 3);
    let m = feature_matrix(&set, &[to_batch(&h)]).unwrap();
    assert_eq!(m.columns, set.outputs);
    assert_eq!(m.x.ncols(), set.outputs.len());
    assert_eq!(m.x.nrows() + m.dropped_rows, h.ts.len());
    assert!(m.dropped_rows > 0 && m.x.nrows() > h.ts.len() / 2);
    assert!(m.x.iter().all(|v| v.is_finite()));
    assert_eq!(m.thing_ids.len(), m.x.nrows());
    let labels = m.labels.as_ref().expect("history has labels");
    assert_eq!(labels.len(), m.x.nrows());
    // Row i of X belongs to (thing_ids[i], ts[i]) and carries that reading's label.
    for (i, label) in labels.iter().enumerate() {
        let r = (0..h.ts.len())
            .find(|&r| h.things[r] == m.thing_ids[i] && h.ts[r] == m.ts[i])
            .unwrap();
        assert_eq!(*label as f64, h.labels[r]);
    }
    assert!(m.thing_ids.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn electrical_sql_row_features_equal_the_built_in_derived_features() {
    use crate::config::FeatureConfig;
    use crate::event::Name;
    use crate::features::DerivedPlan;
    let set = FeatureSet::from_file(&shipped_feature_files()[0]).unwrap();
    assert!(set.name.ends_with("electrical.sql"));
    let raw: Vec<Name> = set.inputs.iter().map(|s| Name::from(s.as_str())).collect();
    let (plan, derived) = DerivedPlan::new(&raw, &FeatureConfig::default());
    let ev = set.evaluator();
    let mut st = ev.new_thing();
    let h = history(120, 5);
    for r in 0..h.ts.len() {
        let values: Vec<Option<f64>> = set
            .inputs
            .iter()
            .map(|i| h.values[SENSORS.iter().position(|s| s == i).unwrap()][r])
            .collect();
        let mut out = vec![None; set.outputs.len()];
        ev.evaluate(&mut st, &values, &mut out);
        let Some(complete) = values.iter().copied().collect::<Option<Vec<f64>>>() else {
            continue;
        };
        let mut builtin = vec![0.0; plan.len()];
        plan.compute(&complete, &mut builtin);
        for (name, b) in derived.iter().zip(&builtin) {
            let j = set.outputs.iter().position(|o| o == name.as_str()).unwrap();
            assert!(
                (out[j].unwrap() - b).abs() < 1e-9,
                "{name}: {:?} vs {b}",
                out[j]
            );
        }
    }
    assert_eq!(derived.len(), 3);
}
