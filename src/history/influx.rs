//! InfluxDB 1.x history over the HTTP query API (`GET /query?db=..&q=SELECT ..&epoch=ms&chunked=true`),
//! with a local Parquet cache keyed by the query.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde_json::Value;

use super::{err, read_parquet, write_parquet, HistoryError, TimeRange};
use crate::sql_features::{THING_ID, TS};

/// One InfluxDB 1.x measurement holding telemetry: tag `thing_id`, one numeric field per sensor
/// (and optionally `label`).
#[derive(Clone, Debug)]
pub struct InfluxSource {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    pub database: String,
    pub measurement: String,
    /// Basic-auth credentials (`u`/`p` query parameters) when the server requires them.
    pub user: Option<String>,
    pub password: Option<String>,
}

impl InfluxSource {
    pub(crate) fn label(&self) -> String {
        format!(
            "influxdb {}/{}.{}",
            self.url, self.database, self.measurement
        )
    }

    /// The InfluxQL statement for `range` (identifiers double-quoted, escaped).
    pub fn query(&self, range: TimeRange) -> String {
        format!(
            "SELECT * FROM \"{}\" WHERE time >= {}ms AND time < {}ms GROUP BY \"{THING_ID}\"",
            self.measurement.replace('"', "\\\""),
            range.start_ms,
            range.end_ms
        )
    }
}

/// Loads through the cache: `<cache_dir>/influx-<xxh3(url, db, query)>.parquet` is read when present,
/// else the server is queried and the result written there.
pub(super) fn load_cached(
    src: &InfluxSource,
    range: TimeRange,
    cache_dir: Option<&Path>,
) -> Result<Vec<RecordBatch>, HistoryError> {
    let q = src.query(range);
    let Some(dir) = cache_dir else {
        return Ok(vec![fetch(src, &q)?]);
    };
    let key = xxhash_rust::xxh3::xxh3_64(format!("{}\n{}\n{q}", src.url, src.database).as_bytes());
    let path = dir.join(format!("influx-{key:016x}.parquet"));
    if path.exists() {
        tracing::debug!(path = %path.display(), "history cache hit");
        return read_parquet(&path);
    }
    let batch = fetch(src, &q)?;
    std::fs::create_dir_all(dir).map_err(|e| err(&dir.display().to_string(), e))?;
    write_parquet(&path, &batch)?;
    Ok(vec![batch])
}

/// Runs the query and turns the (chunked) JSON response into one batch.
fn fetch(src: &InfluxSource, q: &str) -> Result<RecordBatch, HistoryError> {
    let _span =
        tracing::info_span!("history_influx", db = %src.database, measurement = %src.measurement)
            .entered();
    let name = src.label();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent
        .get(format!("{}/query", src.url.trim_end_matches('/')))
        .query("db", &src.database)
        .query("q", q)
        .query("epoch", "ms")
        .query("chunked", "true");
    if let (Some(u), Some(p)) = (&src.user, &src.password) {
        req = req.query("u", u).query("p", p);
    }
    let mut resp = req.call().map_err(|e| err(&name, e))?;
    let status = resp.status();
    let reader = resp.body_mut().with_config().reader();
    let mut rows = Rows::default();
    for doc in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
        let doc = doc.map_err(|e| err(&name, format!("HTTP {status}: bad JSON: {e}")))?;
        if let Some(e) = doc.get("error").and_then(Value::as_str) {
            return Err(err(&name, format!("HTTP {status}: {e}")));
        }
        for result in doc["results"].as_array().into_iter().flatten() {
            if let Some(e) = result.get("error").and_then(Value::as_str) {
                return Err(err(&name, format!("query error: {e}")));
            }
            for series in result["series"].as_array().into_iter().flatten() {
                rows.add_series(&name, series)?;
            }
        }
    }
    if !status.is_success() {
        return Err(err(&name, format!("HTTP {status}")));
    }
    rows.into_batch(&name)
}

/// Rows gathered from all series, columns by name (missing values NULL).
#[derive(Default)]
struct Rows {
    things: Vec<String>,
    ts: Vec<i64>,
    columns: BTreeMap<String, Vec<Option<f64>>>,
}

impl Rows {
    fn add_series(&mut self, name: &str, series: &Value) -> Result<(), HistoryError> {
        let thing = series["tags"][THING_ID]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if thing.is_empty() {
            return Err(err(name, format!("a series without the `{THING_ID}` tag")));
        }
        let cols: Vec<&str> = series["columns"]
            .as_array()
            .map(|c| c.iter().map(|v| v.as_str().unwrap_or_default()).collect())
            .unwrap_or_default();
        let time_at = cols
            .iter()
            .position(|c| *c == "time")
            .ok_or_else(|| err(name, "a series without `time`"))?;
        let before = self.ts.len();
        for row in series["values"].as_array().into_iter().flatten() {
            let row = row
                .as_array()
                .ok_or_else(|| err(name, "a row that is not an array"))?;
            let ts = row
                .get(time_at)
                .and_then(Value::as_i64)
                .ok_or_else(|| err(name, "a row without an integer time (epoch=ms)"))?;
            self.things.push(thing.clone());
            self.ts.push(ts);
            for (c, v) in cols.iter().zip(row) {
                if *c == "time" || *c == THING_ID {
                    continue;
                }
                let v = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::Bool(b) => Some(*b as u8 as f64),
                    _ => None,
                };
                let col = self
                    .columns
                    .entry(c.to_string())
                    .or_insert_with(|| vec![None; before]);
                col.resize(self.ts.len() - 1, None);
                col.push(v);
            }
        }
        Ok(())
    }

    fn into_batch(self, name: &str) -> Result<RecordBatch, HistoryError> {
        let n = self.ts.len();
        let mut fields = vec![
            Field::new(THING_ID, DataType::Utf8, false),
            Field::new(TS, DataType::Int64, false),
        ];
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(self.things)),
            Arc::new(Int64Array::from(self.ts)),
        ];
        for (c, mut v) in self.columns {
            v.resize(n, None);
            fields.push(Field::new(c, DataType::Float64, true));
            cols.push(Arc::new(Float64Array::from(v)));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|e| err(name, e))
    }
}
