//! History loaders for training: CSV and Parquet files, and InfluxDB 1.x over its HTTP query API.
//!
//! Every loader returns one Arrow [`RecordBatch`] in the shape the SQL feature sets read
//! ([`crate::sql_features`]): `thing_id` (Utf8), `ts` (Int64, epoch ms), one nullable Float64 column per
//! sensor, and `label` when the source has one. Rows are sorted by (thing_id, ts), limited to the
//! requested [`TimeRange`] (default: the last 30 days) and gap-handled: a missing sensor value is
//! forward-filled from the thing's previous reading for at most [`HistoryQuery::max_fill`] (default 5)
//! consecutive samples; a row that still misses a sensor its thing reports is dropped.

mod files;
mod influx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, lexsort_to_indices, take, SortColumn};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

pub use files::{read_csv, read_parquet, write_parquet};
pub use influx::InfluxSource;

use crate::sql_features::{THING_ID, TS};

/// Label column name (optional 0/1 ground truth).
pub const LABEL: &str = crate::sql_features::batch::LABEL;

/// Default history span for training.
pub const DEFAULT_DAYS: i64 = 30;
/// Default forward-fill limit (consecutive missing samples per sensor).
pub const DEFAULT_MAX_FILL: usize = 5;

/// A history source that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    #[error(transparent)]
    Features(#[from] crate::sql_features::SqlFeatureError),
}

pub(crate) fn err(source_name: &str, message: impl std::fmt::Display) -> HistoryError {
    HistoryError::Source {
        source_name: source_name.to_string(),
        message: message.to_string(),
    }
}

/// Half-open event-time range `[start_ms, end_ms)`, epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl TimeRange {
    /// The `days` days before `now_ms`.
    pub fn last_days(days: i64, now_ms: i64) -> TimeRange {
        TimeRange {
            start_ms: now_ms - days * 86_400_000,
            end_ms: now_ms + 1,
        }
    }

    /// The default: the last 30 days up to now, with the end rounded down to the hour so repeated
    /// loads within an hour issue the same query (and hit the Parquet cache).
    pub fn default_now() -> TimeRange {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let hour = 3_600_000;
        let end = (now / hour + 1) * hour;
        TimeRange {
            start_ms: end - DEFAULT_DAYS * 86_400_000,
            end_ms: end,
        }
    }

    pub fn contains(&self, ts: i64) -> bool {
        ts >= self.start_ms && ts < self.end_ms
    }
}

/// Where history comes from.
#[derive(Clone, Debug)]
pub enum HistorySource {
    /// A CSV file with a header: `thing_id`, `ts` (epoch ms or RFC 3339), sensor columns, optional `label`.
    Csv(PathBuf),
    /// A Parquet file with the same columns (`ts` may also be an Arrow timestamp).
    Parquet(PathBuf),
    /// An InfluxDB 1.x measurement (tag `thing_id`, one field per sensor).
    Influx(InfluxSource),
}

/// What to load and how.
#[derive(Clone, Debug)]
pub struct HistoryQuery {
    pub source: HistorySource,
    /// Event-time range; `None` = [`TimeRange::default_now`].
    pub range: Option<TimeRange>,
    /// Forward-fill limit per sensor (consecutive missing samples of a thing).
    pub max_fill: usize,
    /// Folder of the local Parquet cache for remote sources (InfluxDB); `None` = no cache.
    pub cache_dir: Option<PathBuf>,
}

impl HistoryQuery {
    pub fn new(source: HistorySource) -> HistoryQuery {
        HistoryQuery {
            source,
            range: None,
            max_fill: DEFAULT_MAX_FILL,
            cache_dir: None,
        }
    }
}

/// Loads history: source -> normalised, range-limited, sorted, gap-handled batch.
pub fn load(q: &HistoryQuery) -> Result<RecordBatch, HistoryError> {
    let range = q.range.unwrap_or_else(TimeRange::default_now);
    let (name, raw) = match &q.source {
        HistorySource::Csv(p) => (p.display().to_string(), read_csv(p)?),
        HistorySource::Parquet(p) => (p.display().to_string(), read_parquet(p)?),
        HistorySource::Influx(src) => (
            src.label(),
            influx::load_cached(src, range, q.cache_dir.as_deref())?,
        ),
    };
    let batch = normalise(&name, &raw)?;
    let batch = filter_range(&name, &batch, range)?;
    let batch = sort(&name, &batch)?;
    fill_gaps(&name, &batch, q.max_fill)
}

/// `thing_id` Utf8, `ts` Int64 ms, `label` Float64, every other numeric column Float64; non-numeric
/// other columns are left out.
pub(crate) fn normalise(name: &str, batches: &[RecordBatch]) -> Result<RecordBatch, HistoryError> {
    let Some(first) = batches.first() else {
        return Ok(RecordBatch::new_empty(Arc::new(Schema::new(vec![
            Field::new(THING_ID, DataType::Utf8, false),
            Field::new(TS, DataType::Int64, false),
        ]))));
    };
    let schema = first.schema();
    let all = concat_batches(&schema, batches).map_err(|e| err(name, e))?;
    let col = |c: &str| {
        all.column_by_name(c)
            .ok_or_else(|| err(name, format!("no `{c}` column")))
    };
    let thing =
        cast(col(THING_ID)?, &DataType::Utf8).map_err(|e| err(name, format!("`thing_id`: {e}")))?;
    if thing.null_count() > 0 {
        return Err(err(name, "`thing_id` has empty values"));
    }
    let ts = ts_millis(col(TS)?).map_err(|e| err(name, format!("`ts`: {e}")))?;
    if ts.null_count() > 0 {
        return Err(err(name, "`ts` has empty or unparsable values"));
    }
    let mut fields = vec![
        Field::new(THING_ID, DataType::Utf8, false),
        Field::new(TS, DataType::Int64, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![thing, ts];
    for (f, a) in schema.fields().iter().zip(all.columns()) {
        let n = f.name().as_str();
        if n == THING_ID
            || n == TS
            || !(f.data_type().is_numeric()
                || f.data_type() == &DataType::Boolean
                || f.data_type() == &DataType::Null)
        {
            continue;
        }
        fields.push(Field::new(n, DataType::Float64, true));
        cols.push(cast(a, &DataType::Float64).map_err(|e| err(name, format!("`{n}`: {e}")))?);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|e| err(name, e))
}

/// Epoch ms from an integer column (ms), a timestamp column (any unit) or RFC 3339 strings.
fn ts_millis(a: &ArrayRef) -> Result<ArrayRef, datafusion::arrow::error::ArrowError> {
    let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    match a.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Timestamp(..) => {
            cast(&cast(a, &ms)?, &DataType::Int64)
        }
        _ => cast(a, &DataType::Int64),
    }
}

fn filter_range(
    name: &str,
    b: &RecordBatch,
    range: TimeRange,
) -> Result<RecordBatch, HistoryError> {
    let ts = b
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("normalised");
    let keep: datafusion::arrow::array::BooleanArray =
        ts.iter().map(|t| t.map(|t| range.contains(t))).collect();
    datafusion::arrow::compute::filter_record_batch(b, &keep).map_err(|e| err(name, e))
}

fn sort(name: &str, b: &RecordBatch) -> Result<RecordBatch, HistoryError> {
    let idx = lexsort_to_indices(
        &[
            SortColumn {
                values: Arc::clone(b.column(0)),
                options: None,
            },
            SortColumn {
                values: Arc::clone(b.column(1)),
                options: None,
            },
        ],
        None,
    )
    .map_err(|e| err(name, e))?;
    take_rows(name, b, &idx)
}

fn take_rows(name: &str, b: &RecordBatch, idx: &UInt32Array) -> Result<RecordBatch, HistoryError> {
    let cols = b
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), idx, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(name, e))?;
    RecordBatch::try_new(b.schema(), cols).map_err(|e| err(name, e))
}

/// Forward-fills each thing's sensor gaps of at most `max_fill` samples, then drops rows that still
/// miss a sensor the thing reports at all (a sensor a thing never reports stays NULL: the SQL decides).
/// Expects rows sorted by (thing_id, ts). The label column is not filled.
pub(crate) fn fill_gaps(
    name: &str,
    b: &RecordBatch,
    max_fill: usize,
) -> Result<RecordBatch, HistoryError> {
    let n = b.num_rows();
    let things = b
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("normalised");
    let schema = b.schema();
    let mut keep = vec![true; n];
    let mut cols: Vec<ArrayRef> = vec![Arc::clone(b.column(0)), Arc::clone(b.column(1))];
    // Thing runs: [start, end) row ranges.
    let mut runs = Vec::new();
    let mut s = 0;
    for i in 1..=n {
        if i == n || things.value(i) != things.value(s) {
            runs.push((s, i));
            s = i;
        }
    }
    for (j, f) in schema.fields().iter().enumerate().skip(2) {
        let a = b
            .column(j)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("normalised");
        if f.name() == LABEL {
            cols.push(Arc::clone(b.column(j)));
            continue;
        }
        let mut out: Vec<Option<f64>> = a.iter().collect();
        for &(start, end) in &runs {
            if out[start..end].iter().all(Option::is_none) {
                continue;
            }
            let (mut last, mut gap) = (None, 0usize);
            for i in start..end {
                match out[i] {
                    Some(v) => {
                        last = Some(v);
                        gap = 0;
                    }
                    None => {
                        gap += 1;
                        if gap <= max_fill && last.is_some() {
                            out[i] = last;
                        } else {
                            keep[i] = false;
                        }
                    }
                }
            }
        }
        cols.push(Arc::new(Float64Array::from(out)));
    }
    let filled = RecordBatch::try_new(schema, cols).map_err(|e| err(name, e))?;
    let keep: datafusion::arrow::array::BooleanArray = keep.into_iter().map(Some).collect();
    datafusion::arrow::compute::filter_record_batch(&filled, &keep).map_err(|e| err(name, e))
}

/// History -> training matrix through a SQL feature set: loads `q` (range, gap handling, cache) and
/// runs `set` over it with DataFusion. The result holds the column names, `X` (`Array2<f64>`, complete
/// rows only), the labels when the history has a `label` column, and each row's thing id and ts.
pub fn training_matrix(
    q: &HistoryQuery,
    set: &crate::sql_features::FeatureSet,
) -> Result<crate::sql_features::FeatureMatrix, HistoryError> {
    let _span = tracing::info_span!("training_matrix", features = %set.name).entered();
    let history = load(q)?;
    Ok(crate::sql_features::batch::feature_matrix(set, &[history])?)
}

/// Reads a history file by extension (`.csv` or `.parquet`).
pub fn source_for_file(path: &Path) -> Result<HistorySource, HistoryError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Ok(HistorySource::Csv(path.to_path_buf())),
        Some("parquet") => Ok(HistorySource::Parquet(path.to_path_buf())),
        _ => Err(err(
            &path.display().to_string(),
            "unknown history file type (expected .csv or .parquet)",
        )),
    }
}

#[cfg(test)]
mod tests;
