use super::*;
use datafusion::arrow::array::Float64Array;

fn col(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    b.column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .iter()
        .collect()
}

fn ts(b: &RecordBatch) -> Vec<i64> {
    b.column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec()
}

fn things(b: &RecordBatch) -> Vec<String> {
    b.column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect()
}

const ALL: TimeRange = TimeRange {
    start_ms: 0,
    end_ms: i64::MAX,
};

/// `a` misses rows 2..=3 (filled) and 6..=12 (7 in a row: 5 filled, 2 dropped); thing `b` never has `v`
/// (stays NULL, rows kept); rows arrive unsorted; `b` has RFC 3339 times in the second file.
fn csv_text() -> String {
    let mut s = String::from("thing_id,ts,u,v,label\n");
    for i in (0..16).rev() {
        let v = if (2..=3).contains(&i) || (6..=12).contains(&i) {
            String::new()
        } else {
            format!("{}", i as f64 * 1.5)
        };
        s.push_str(&format!(
            "a,{},{},{v},{}\n",
            1000 + i * 10,
            i,
            (i == 5) as u8
        ));
    }
    for i in 0..3 {
        s.push_str(&format!("b,{},{},,0\n", 500 + i, 100 + i));
    }
    s
}

#[test]
fn csv_history_is_sorted_range_limited_and_gap_filled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.csv");
    std::fs::write(&path, csv_text()).unwrap();
    let mut q = HistoryQuery::new(source_for_file(&path).unwrap());
    q.range = Some(ALL);
    let b = load(&q).unwrap();
    // 19 rows - 2 dropped (the 6th and 7th consecutive missing `v` of thing a).
    assert_eq!(b.num_rows(), 17);
    assert_eq!(things(&b)[..3], ["a", "a", "a"]);
    let a_ts: Vec<i64> = ts(&b)[..14].to_vec();
    let mut sorted = a_ts.clone();
    sorted.sort();
    assert_eq!(a_ts, sorted);
    assert!(!a_ts.contains(&1110) && !a_ts.contains(&1120), "{a_ts:?}");
    let v = col(&b, "v");
    // Rows 2, 3 take row 1's value; rows 6..=10 take row 5's.
    assert_eq!(v[2], Some(1.5));
    assert_eq!(v[3], Some(1.5));
    assert_eq!(v[6..11], [Some(7.5); 5]);
    assert_eq!(v[11], Some(13.0 * 1.5));
    // Thing b never reports `v`: left NULL, rows kept.
    assert_eq!(&things(&b)[14..], ["b", "b", "b"]);
    assert_eq!(v[14..], [None, None, None]);
    assert_eq!(col(&b, "label")[5], Some(1.0));

    q.range = Some(TimeRange {
        start_ms: 1000,
        end_ms: 1050,
    });
    let b = load(&q).unwrap();
    assert_eq!(ts(&b), vec![1000, 1010, 1020, 1030, 1040]);
}

#[test]
fn parquet_round_trip_and_rfc3339_times() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    std::fs::write(
        &csv,
        "thing_id,ts,u\nm-1,2026-01-01T00:00:01Z,1.0\nm-1,2026-01-01T00:00:00Z,2.0\n",
    )
    .unwrap();
    let mut q = HistoryQuery::new(HistorySource::Csv(csv));
    q.range = Some(ALL);
    let b = load(&q).unwrap();
    assert_eq!(ts(&b), vec![1_767_225_600_000, 1_767_225_601_000]);
    assert_eq!(col(&b, "u"), vec![Some(2.0), Some(1.0)]);

    let pq = dir.path().join("t.parquet");
    write_parquet(&pq, &b).unwrap();
    let mut q = HistoryQuery::new(source_for_file(&pq).unwrap());
    q.range = Some(ALL);
    assert_eq!(load(&q).unwrap(), b);
}

#[test]
fn default_range_is_the_last_30_days() {
    let r = TimeRange::default_now();
    assert_eq!(r.end_ms - r.start_ms, 30 * 86_400_000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(r.contains(now) && !r.contains(now - 31 * 86_400_000));
}

#[test]
fn bad_files_fail_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no_ts.csv");
    std::fs::write(&p, "thing_id,u\na,1\n").unwrap();
    let e = load(&HistoryQuery::new(HistorySource::Csv(p.clone())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_ts.csv") && e.contains("`ts`"), "{e}");
    let e = source_for_file(&dir.path().join("x.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.json"), "{e}");
    let e = load(&HistoryQuery::new(HistorySource::Parquet(
        dir.path().join("none.parquet"),
    )))
    .unwrap_err()
    .to_string();
    assert!(e.contains("none.parquet"), "{e}");
}

#[test]
fn training_matrix_runs_a_feature_set_over_a_history_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.csv");
    std::fs::write(&path, csv_text()).unwrap();
    let set = crate::sql_features::FeatureSet::from_sql(
        "uv.sql",
        "SELECT thing_id, ts, u + v AS s, AVG(u) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS a FROM telemetry",
    )
    .unwrap();
    let mut q = HistoryQuery::new(HistorySource::Csv(path));
    q.range = Some(ALL);
    let m = training_matrix(&q, &set).unwrap();
    assert_eq!(m.columns, ["s", "a"]);
    // Thing b's rows have no `v`, so no `s`: dropped; thing a's 14 rows are complete.
    assert_eq!((m.x.nrows(), m.dropped_rows), (14, 3));
    assert_eq!(m.x[[0, 0]], 0.0);
    assert_eq!(m.x[[1, 1]], 0.5);
    assert_eq!(
        m.labels
            .as_ref()
            .unwrap()
            .iter()
            .filter(|&&l| l == 1)
            .count(),
        1
    );
    assert!(m.thing_ids.iter().all(|t| t == "a"));
}
