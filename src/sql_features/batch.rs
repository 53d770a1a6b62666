//! DataFusion over history: record batches in, feature rows (and the training matrix) out.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::prelude::{col, SessionConfig, SessionContext};
use ndarray::Array2;

use super::{history_schema, FeatureSet, SqlFeatureError, TABLE, THING_ID, TS};

/// Name of the optional ground-truth column (0/1) in history; carried to [`FeatureMatrix::labels`].
pub const LABEL: &str = "label";

/// Feature rows of a history, sorted by (thing_id, ts), one column per feature (NULL = `None`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryColumns {
    pub thing_ids: Vec<String>,
    pub ts: Vec<i64>,
    pub names: Vec<String>,
    /// `columns[j][i]`: feature `names[j]` of row `i`.
    pub columns: Vec<Vec<Option<f64>>>,
}

/// The training input: complete feature rows only.
#[derive(Clone, Debug)]
pub struct FeatureMatrix {
    /// Feature names, one per column of `x`.
    pub columns: Vec<String>,
    /// One row per reading that has every feature (rows with a NULL or non-finite feature are dropped).
    pub x: Array2<f64>,
    /// 0/1 ground truth per row when the history has a `label` column (a NULL label counts as 0).
    pub labels: Option<Vec<u8>>,
    /// The thing of each row.
    pub thing_ids: Vec<String>,
    /// The ts (epoch ms) of each row.
    pub ts: Vec<i64>,
    /// Rows left out because a feature was NULL or not finite (window warm-up, missing sensors).
    pub dropped_rows: usize,
}

fn exec_err(set: &FeatureSet, e: impl std::fmt::Display) -> SqlFeatureError {
    SqlFeatureError::Execute {
        file: set.name.clone(),
        message: e.to_string(),
    }
}

/// Brings history batches to the feature set's table: `thing_id` (Utf8), `ts` (Int64 ms) and the
/// set's inputs as Float64 (a sensor the history lacks is an all-NULL column).
fn table_batch(set: &FeatureSet, history: &[RecordBatch]) -> Result<RecordBatch, SqlFeatureError> {
    let schema = Arc::new(history_schema(&set.inputs));
    let mut out = Vec::with_capacity(history.len());
    for b in history {
        let column = |name: &str, ty: &DataType| -> Result<ArrayRef, SqlFeatureError> {
            match b.column_by_name(name) {
                Some(a) => cast(a, ty).map_err(|e| exec_err(set, format!("column `{name}`: {e}"))),
                None if name == THING_ID || name == TS => {
                    Err(exec_err(set, format!("history has no `{name}` column")))
                }
                None => Ok(Arc::new(Float64Array::new_null(b.num_rows()))),
            }
        };
        let mut cols = vec![
            column(THING_ID, &DataType::Utf8)?,
            column(TS, &DataType::Int64)?,
        ];
        for input in &set.inputs {
            cols.push(column(input, &DataType::Float64)?);
        }
        out.push(RecordBatch::try_new(Arc::clone(&schema), cols).map_err(|e| exec_err(set, e))?);
    }
    concat_batches(&schema, &out).map_err(|e| exec_err(set, e))
}

/// Runs the feature set over history with DataFusion. Works from any thread, inside a Tokio runtime
/// or not (DataFusion runs on a private current-thread runtime in a scoped thread).
pub fn run(set: &FeatureSet, history: &[RecordBatch]) -> Result<HistoryColumns, SqlFeatureError> {
    let table = table_batch(set, history)?;
    let batches = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<RecordBatch>, SqlFeatureError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| exec_err(set, e))?;
            rt.block_on(async {
                let ctx =
                    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
                let mem = MemTable::try_new(table.schema(), vec![vec![table]])
                    .map_err(|e| exec_err(set, e))?;
                ctx.register_table(TABLE, Arc::new(mem))
                    .map_err(|e| exec_err(set, e))?;
                let df = ctx.sql(&set.sql).await.map_err(|e| exec_err(set, e))?;
                df.sort(vec![
                    col(THING_ID).sort(true, false),
                    col(TS).sort(true, false),
                ])
                .map_err(|e| exec_err(set, e))?
                .collect()
                .await
                .map_err(|e| exec_err(set, e))
            })
        })
        .join()
        .map_err(|_| exec_err(set, "DataFusion thread panicked"))?
    })?;
    let mut out = HistoryColumns {
        names: set.outputs.clone(),
        columns: vec![Vec::new(); set.outputs.len()],
        ..HistoryColumns::default()
    };
    for b in &batches {
        let things = cast(
            b.column_by_name(THING_ID).expect("selected"),
            &DataType::Utf8,
        )
        .map_err(|e| exec_err(set, e))?;
        let things = things.as_any().downcast_ref::<StringArray>().expect("utf8");
        out.thing_ids
            .extend(things.iter().map(|t| t.unwrap_or_default().to_string()));
        let ts = cast(b.column_by_name(TS).expect("selected"), &DataType::Int64)
            .map_err(|e| exec_err(set, e))?;
        let ts = ts.as_any().downcast_ref::<Int64Array>().expect("int64");
        out.ts.extend(ts.iter().map(|t| t.unwrap_or_default()));
        for (j, name) in set.outputs.iter().enumerate() {
            let a = b
                .column_by_name(name)
                .ok_or_else(|| exec_err(set, format!("result has no column `{name}`")))?;
            let a = cast(a, &DataType::Float64).map_err(|e| exec_err(set, e))?;
            let a = a.as_any().downcast_ref::<Float64Array>().expect("float64");
            out.columns[j].extend(a.iter());
        }
    }
    Ok(out)
}

/// History -> training matrix through a feature set: `(column names, X, labels, thing ids)` plus the
/// row timestamps. Rows come sorted by (thing_id, ts); rows with a NULL or non-finite feature are
/// dropped (counted in `dropped_rows`).
pub fn feature_matrix(
    set: &FeatureSet,
    history: &[RecordBatch],
) -> Result<FeatureMatrix, SqlFeatureError> {
    let rows = run(set, history)?;
    let labels = label_lookup(set, history)?;
    let n = rows.ts.len();
    let d = rows.names.len();
    let mut data = Vec::with_capacity(n * d);
    let (mut thing_ids, mut ts, mut y) = (Vec::new(), Vec::new(), Vec::new());
    let mut dropped = 0;
    for i in 0..n {
        let row: Option<Vec<f64>> = rows
            .columns
            .iter()
            .map(|c| c[i].filter(|v| v.is_finite()))
            .collect();
        let Some(row) = row else {
            dropped += 1;
            continue;
        };
        data.extend(row);
        if let Some(l) = &labels {
            y.push(
                *l.get(&(rows.thing_ids[i].clone(), rows.ts[i]))
                    .unwrap_or(&0),
            );
        }
        thing_ids.push(rows.thing_ids[i].clone());
        ts.push(rows.ts[i]);
    }
    let x = Array2::from_shape_vec((thing_ids.len(), d), data).expect("rows x features");
    Ok(FeatureMatrix {
        columns: rows.names,
        x,
        labels: labels.map(|_| y),
        thing_ids,
        ts,
        dropped_rows: dropped,
    })
}

type Labels = HashMap<(String, i64), u8>;

fn label_lookup(
    set: &FeatureSet,
    history: &[RecordBatch],
) -> Result<Option<Labels>, SqlFeatureError> {
    if !history.iter().any(|b| b.column_by_name(LABEL).is_some()) {
        return Ok(None);
    }
    let mut map = HashMap::new();
    for b in history {
        let Some(label) = b.column_by_name(LABEL) else {
            continue;
        };
        let label = cast(label, &DataType::Float64).map_err(|e| exec_err(set, e))?;
        let label = label
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("float64");
        let things = cast(
            b.column_by_name(THING_ID).expect("checked by run"),
            &DataType::Utf8,
        )
        .map_err(|e| exec_err(set, e))?;
        let things = things.as_any().downcast_ref::<StringArray>().expect("utf8");
        let ts = cast(
            b.column_by_name(TS).expect("checked by run"),
            &DataType::Int64,
        )
        .map_err(|e| exec_err(set, e))?;
        let ts = ts.as_any().downcast_ref::<Int64Array>().expect("int64");
        for i in 0..b.num_rows() {
            if label.is_valid(i) && things.is_valid(i) && ts.is_valid(i) {
                let y = (label.value(i) != 0.0) as u8;
                map.insert((things.value(i).to_string(), ts.value(i)), y);
            }
        }
    }
    Ok(Some(map))
}
