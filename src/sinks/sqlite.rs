//! Embedded SQLite anomaly store: the alert history behind `GET /api/v1/anomalies`.
//!
//! Each alert is stored once (keyed by its stable `alert_id`, so replays and retries are idempotent) with
//! its filterable fields in columns and the full alert JSON in `body`, which is what queries return: the
//! store never loses a field that a newer alert format adds.

use crate::event::{Alert, Severity};
use crate::rul::predict::Prediction;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default page size of [`AlertQuery::limit`].
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size a query may ask for.
pub const MAX_LIMIT: u32 = 1000;

/// How long a connection waits for another connection's lock (writer vs. API reader) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied so far.
const MIGRATIONS: &[&str] = &[
    // 1: alerts table and the indexes behind the per-thing and time-range queries.
    "CREATE TABLE alerts (
        alert_id       TEXT PRIMARY KEY NOT NULL,
        thing_id       TEXT NOT NULL,
        equipment_type TEXT NOT NULL,
        ts             INTEGER NOT NULL,
        severity       TEXT NOT NULL,
        type           TEXT NOT NULL,
        source         TEXT NOT NULL,
        score          REAL NOT NULL,
        body           TEXT NOT NULL
    );
    CREATE INDEX alerts_thing_ts ON alerts (thing_id, ts);
    CREATE INDEX alerts_ts ON alerts (ts);",
    // 2: operator feedback, one current verdict per alert.
    "CREATE TABLE feedback (
        alert_id TEXT PRIMARY KEY NOT NULL,
        thing_id TEXT NOT NULL,
        verdict  TEXT NOT NULL,
        note     TEXT,
        ts       INTEGER NOT NULL
    );
    CREATE INDEX feedback_thing_ts ON feedback (thing_id, ts);
    CREATE INDEX feedback_ts ON feedback (ts);",
    // 3: remaining-useful-life predictions, one per thing and event time.
    "CREATE TABLE predictions (
        thing_id        TEXT NOT NULL,
        ts              INTEGER NOT NULL,
        equipment_type  TEXT NOT NULL,
        rul             REAL NOT NULL,
        maintenance_due INTEGER NOT NULL,
        body            TEXT NOT NULL,
        PRIMARY KEY (thing_id, ts)
    );
    CREATE INDEX predictions_ts ON predictions (ts);",
];

/// Errors of an alert store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("alert store {path}: cannot create directory: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("alert store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("alert store {path}: schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("alert store {path}: invalid schema version {found}")]
    BadSchemaVersion { path: PathBuf, found: i64 },
    #[error("alert store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("alert {alert_id}: cannot encode as JSON: {source}")]
    Encode {
        alert_id: String,
        source: serde_json::Error,
    },
    #[error("alert {alert_id}: stored body is not a valid alert: {source}")]
    Corrupt {
        alert_id: String,
        source: serde_json::Error,
    },
    #[error("alert store: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("alert store {url}: {message}")]
    Connect { url: String, message: String },
    #[error("alert store: stored value is invalid: {0}")]
    Invalid(String),
    #[error("alert store: {what} is not supported by this store")]
    Unsupported { what: &'static str },
    #[error("feedback: alert `{alert_id}` is not stored (unknown or purged)")]
    UnknownAlert { alert_id: String },
    #[error("feedback: alert `{alert_id}` belongs to thing `{stored}`, not `{given}`")]
    ThingMismatch {
        alert_id: String,
        stored: String,
        given: String,
    },
}

/// Filters and paging of an alert query. Time bounds are inclusive; `None` means unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertQuery {
    /// Only alerts of this thing.
    pub thing_id: Option<String>,
    /// Only alerts with `ts >= since_ms` (epoch ms).
    pub since_ms: Option<i64>,
    /// Only alerts with `ts <= until_ms` (epoch ms).
    pub until_ms: Option<i64>,
    /// Only alerts of exactly this severity.
    pub severity: Option<Severity>,
    /// Only alerts of this `type`.
    pub alert_type: Option<String>,
    /// Page size; default [`DEFAULT_LIMIT`], capped at [`MAX_LIMIT`]. 0 returns only the total.
    pub limit: u32,
    /// Matching alerts to skip (newest first) before the page starts.
    pub offset: u64,
}

impl Default for AlertQuery {
    fn default() -> Self {
        AlertQuery {
            thing_id: None,
            since_ms: None,
            until_ms: None,
            severity: None,
            alert_type: None,
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

/// One page of query results, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertPage {
    pub items: Vec<Alert>,
    /// Number of alerts matching the filters, over all pages.
    pub total: u64,
    /// The page size applied (after capping).
    pub limit: u32,
    pub offset: u64,
}

/// Filters and paging of a prediction query. Time bounds are inclusive; `None` means unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PredictionQuery {
    /// Only predictions of this thing.
    pub thing_id: Option<String>,
    /// Only predictions with `ts >= since_ms` (epoch ms).
    pub since_ms: Option<i64>,
    /// Only predictions with `ts <= until_ms` (epoch ms).
    pub until_ms: Option<i64>,
    /// Only each thing's newest prediction within the other bounds (the fleet's current state).
    pub latest: bool,
    /// Only predictions whose `maintenance_due` is this (applied after `latest`).
    pub maintenance_due: Option<bool>,
    /// Page size; default [`DEFAULT_LIMIT`], capped at [`MAX_LIMIT`]. 0 returns only the total.
    pub limit: u32,
    /// Matching predictions to skip (newest first) before the page starts.
    pub offset: u64,
}

impl Default for PredictionQuery {
    fn default() -> Self {
        PredictionQuery {
            thing_id: None,
            since_ms: None,
            until_ms: None,
            latest: false,
            maintenance_due: None,
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

/// One page of predictions, newest first (`ts` descending, then `thing_id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionPage {
    pub items: Vec<Prediction>,
    /// Number of predictions matching the filters, over all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// Decodes a stored prediction body.
pub(crate) fn decode_prediction(
    thing_id: &str,
    ts: i64,
    body: &str,
) -> Result<Prediction, StoreError> {
    serde_json::from_str(body).map_err(|e| {
        StoreError::Invalid(format!(
            "prediction of {thing_id} at {ts} is not a valid prediction: {e}"
        ))
    })
}

/// An operator's verdict on an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The alert was a real problem.
    TruePositive,
    /// The alert was a false alarm.
    FalsePositive,
}

impl Verdict {
    pub const ALL: [Verdict; 2] = [Verdict::TruePositive, Verdict::FalsePositive];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::TruePositive => "true_positive",
            Verdict::FalsePositive => "false_positive",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "true_positive" => Ok(Verdict::TruePositive),
            "false_positive" => Ok(Verdict::FalsePositive),
            other => Err(format!(
                "unknown verdict `{other}`; expected true_positive or false_positive"
            )),
        }
    }
}

/// Feedback on one alert. A store keeps one current verdict per alert: a later verdict replaces the
/// earlier one (operators correct themselves), so counts are over alerts, not submissions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub alert_id: String,
    pub thing_id: String,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the feedback was received, epoch ms.
    pub ts: i64,
}

/// Whether [`AlertStore::record_feedback`] stored a first verdict or replaced one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackOutcome {
    Created,
    Replaced,
}

/// Filters and paging of a feedback query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeedbackQuery {
    /// Only feedback on alerts of this thing.
    pub thing_id: Option<String>,
    /// Only this verdict.
    pub verdict: Option<Verdict>,
    /// Page size; default [`DEFAULT_LIMIT`], capped at [`MAX_LIMIT`]. 0 returns only the total.
    pub limit: u32,
    /// Matching entries to skip (newest first).
    pub offset: u64,
}

impl Default for FeedbackQuery {
    fn default() -> Self {
        FeedbackQuery {
            thing_id: None,
            verdict: None,
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

/// One page of feedback, newest first (`ts` descending, then `alert_id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedbackPage {
    pub items: Vec<Feedback>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// Alerts with a current verdict, per verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackCounts {
    pub true_positive: u64,
    pub false_positive: u64,
}

impl FeedbackCounts {
    /// Share of judged alerts that were real, `None` before any feedback.
    pub fn precision(&self) -> Option<f64> {
        let n = self.true_positive + self.false_positive;
        (n > 0).then(|| self.true_positive as f64 / n as f64)
    }

    fn add(&mut self, verdict: Verdict, n: u64) {
        match verdict {
            Verdict::TruePositive => self.true_positive += n,
            Verdict::FalsePositive => self.false_positive += n,
        }
    }
}

/// Alert history storage: SQLite ([`SqliteStore`], embedded default) and PostgreSQL
/// ([`crate::sinks::postgres::PostgresStore`]) implement it with the same semantics.
///
/// The feedback methods have defaults that answer [`StoreError::Unsupported`] so that a store which only
/// keeps alerts (a test double, a write-only sink) need not implement them.
pub trait AlertStore: Send {
    /// Stores `alerts` atomically; alerts whose `alert_id` is already stored are skipped. Returns the
    /// number of alerts newly stored.
    fn insert(&mut self, alerts: &[Alert]) -> Result<usize, StoreError>;
    /// Alerts matching `q`, newest first (`ts` descending, then `alert_id`).
    fn query(&self, q: &AlertQuery) -> Result<AlertPage, StoreError>;
    /// Deletes alerts with `ts < ts_ms`, and feedback received before `ts_ms`; returns how many alerts
    /// were deleted.
    fn purge_older_than(&mut self, ts_ms: i64) -> Result<usize, StoreError>;
    /// Stores `fb` as the current verdict on its alert. The alert must be stored
    /// ([`StoreError::UnknownAlert`]) and belong to `fb.thing_id` ([`StoreError::ThingMismatch`]).
    fn record_feedback(&mut self, fb: &Feedback) -> Result<FeedbackOutcome, StoreError> {
        let _ = fb;
        Err(StoreError::Unsupported { what: "feedback" })
    }
    /// Feedback matching `q`, newest first.
    fn feedback(&self, q: &FeedbackQuery) -> Result<FeedbackPage, StoreError> {
        let _ = q;
        Err(StoreError::Unsupported { what: "feedback" })
    }
    /// Alerts with a current verdict, per verdict, optionally of one thing.
    fn feedback_counts(&self, thing_id: Option<&str>) -> Result<FeedbackCounts, StoreError> {
        let _ = thing_id;
        Err(StoreError::Unsupported { what: "feedback" })
    }
    /// Stores RUL predictions; one already stored for the same thing and `ts` is kept (replays and
    /// retries are idempotent). Returns the number newly stored.
    fn insert_predictions(&mut self, predictions: &[Prediction]) -> Result<usize, StoreError> {
        let _ = predictions;
        Err(StoreError::Unsupported {
            what: "predictions",
        })
    }
    /// Predictions matching `q`, newest first (`ts` descending, then `thing_id`).
    fn predictions(&self, q: &PredictionQuery) -> Result<PredictionPage, StoreError> {
        let _ = q;
        Err(StoreError::Unsupported {
            what: "predictions",
        })
    }
}

/// A boxed store is a store (so `open_store`'s result can be shared with the API).
impl<S: AlertStore + ?Sized> AlertStore for Box<S> {
    fn insert(&mut self, alerts: &[Alert]) -> Result<usize, StoreError> {
        (**self).insert(alerts)
    }
    fn query(&self, q: &AlertQuery) -> Result<AlertPage, StoreError> {
        (**self).query(q)
    }
    fn purge_older_than(&mut self, ts_ms: i64) -> Result<usize, StoreError> {
        (**self).purge_older_than(ts_ms)
    }
    fn record_feedback(&mut self, fb: &Feedback) -> Result<FeedbackOutcome, StoreError> {
        (**self).record_feedback(fb)
    }
    fn feedback(&self, q: &FeedbackQuery) -> Result<FeedbackPage, StoreError> {
        (**self).feedback(q)
    }
    fn feedback_counts(&self, thing_id: Option<&str>) -> Result<FeedbackCounts, StoreError> {
        (**self).feedback_counts(thing_id)
    }
    fn insert_predictions(&mut self, predictions: &[Prediction]) -> Result<usize, StoreError> {
        (**self).insert_predictions(predictions)
    }
    fn predictions(&self, q: &PredictionQuery) -> Result<PredictionPage, StoreError> {
        (**self).predictions(q)
    }
}

/// Opens the store `spec` names: a `postgres://` or `postgresql://` URL is PostgreSQL, anything else an
/// SQLite file path.
pub fn open_store(spec: &str) -> Result<Box<dyn AlertStore>, StoreError> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        Ok(Box::new(crate::sinks::postgres::PostgresStore::connect(
            spec,
        )?))
    } else {
        Ok(Box::new(SqliteStore::open(spec)?))
    }
}

/// [`AlertStore`] on an SQLite database file (WAL mode, so one writer and API readers on separate
/// connections do not block each other).
pub struct SqliteStore {
    conn: Connection,
    path: Option<PathBuf>,
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent directory) the store at `path` and migrates its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(open_err)?;
        // NORMAL is durable across application crashes in WAL mode; only an OS crash may lose the
        // last transactions, which the alert history tolerates for much cheaper commits.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        Self::init(conn, Some(path))
    }

    /// A private, non-persistent store (tests, `replay` without a store file).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn, None)
    }

    /// The database file, `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version this build creates.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> Result<SqliteStore, StoreError> {
        let shown = path.clone().unwrap_or_else(|| PathBuf::from(":memory:"));
        let open_err = |source| StoreError::Open {
            path: shown.clone(),
            source,
        };
        // IMMEDIATE takes the write lock before reading the version, so a writer and a reader opening the
        // same new file concurrently cannot both apply a migration.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_err)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let supported = Self::schema_version();
        if version < 0 {
            return Err(StoreError::BadSchemaVersion {
                path: shown,
                found: version,
            });
        }
        if version > supported {
            return Err(StoreError::SchemaTooNew {
                path: shown,
                found: version,
                supported,
            });
        }
        for sql in &MIGRATIONS[version as usize..] {
            tx.execute_batch(sql).map_err(open_err)?;
        }
        if version < supported {
            tx.pragma_update(None, "user_version", supported)
                .map_err(open_err)?;
        }
        tx.commit().map_err(open_err)?;
        Ok(SqliteStore { conn, path })
    }

    /// The stored alert with this id, if any.
    pub fn get(&self, alert_id: &str) -> Result<Option<Alert>, StoreError> {
        let body: Option<String> = self
            .conn
            .prepare_cached("SELECT body FROM alerts WHERE alert_id = ?1")?
            .query_row([alert_id], |r| r.get(0))
            .optional()?;
        body.map(|b| decode(alert_id, &b)).transpose()
    }
}

fn decode(alert_id: &str, body: &str) -> Result<Alert, StoreError> {
    serde_json::from_str(body).map_err(|source| StoreError::Corrupt {
        alert_id: alert_id.to_string(),
        source,
    })
}

/// The WHERE clause and its parameters for the filters of a prediction query.
fn prediction_filters(q: &PredictionQuery) -> (String, Vec<Value>) {
    let mut base: Vec<&str> = Vec::new();
    let mut values = Vec::new();
    if let Some(t) = &q.thing_id {
        base.push("thing_id = ?");
        values.push(Value::Text(t.clone()));
    }
    if let Some(s) = q.since_ms {
        base.push("ts >= ?");
        values.push(Value::Integer(s));
    }
    if let Some(u) = q.until_ms {
        base.push("ts <= ?");
        values.push(Value::Integer(u));
    }
    let base_sql = base.join(" AND ");
    let mut clauses: Vec<String> = base.iter().map(|c| c.to_string()).collect();
    if q.latest {
        let inner = if base_sql.is_empty() {
            String::new()
        } else {
            format!(" WHERE {base_sql}")
        };
        clauses.push(format!(
            "(thing_id, ts) IN (SELECT thing_id, MAX(ts) FROM predictions{inner} GROUP BY thing_id)"
        ));
        values.extend(values.clone());
    }
    if let Some(d) = q.maintenance_due {
        clauses.push("maintenance_due = ?".into());
        values.push(Value::Integer(i64::from(d)));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

/// The WHERE clause and its parameters for the filters of `q`.
fn filters(q: &AlertQuery) -> (String, Vec<Value>) {
    let mut clauses: Vec<&str> = Vec::new();
    let mut values = Vec::new();
    if let Some(t) = &q.thing_id {
        clauses.push("thing_id = ?");
        values.push(Value::Text(t.clone()));
    }
    if let Some(s) = q.since_ms {
        clauses.push("ts >= ?");
        values.push(Value::Integer(s));
    }
    if let Some(u) = q.until_ms {
        clauses.push("ts <= ?");
        values.push(Value::Integer(u));
    }
    if let Some(s) = q.severity {
        clauses.push("severity = ?");
        values.push(Value::Text(s.as_str().to_string()));
    }
    if let Some(t) = &q.alert_type {
        clauses.push("type = ?");
        values.push(Value::Text(t.clone()));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

impl AlertStore for SqliteStore {
    fn insert(&mut self, alerts: &[Alert]) -> Result<usize, StoreError> {
        if alerts.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        let mut inserted = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO alerts
                 (alert_id, thing_id, equipment_type, ts, severity, type, source, score, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for a in alerts {
                let body = serde_json::to_string(a).map_err(|source| StoreError::Encode {
                    alert_id: a.alert_id.clone(),
                    source,
                })?;
                inserted += stmt.execute(params![
                    a.alert_id,
                    a.thing_id.as_str(),
                    a.equipment_type.as_str(),
                    a.ts,
                    a.severity.as_str(),
                    a.alert_type,
                    a.source,
                    a.score,
                    body,
                ])?;
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn query(&self, q: &AlertQuery) -> Result<AlertPage, StoreError> {
        let limit = q.limit.min(MAX_LIMIT);
        let (clause, values) = filters(q);
        // One read transaction so `total` and `items` come from the same snapshot while a writer commits.
        let tx = self.conn.unchecked_transaction()?;
        let total: i64 = tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM alerts{clause}"))?
            .query_row(params_from_iter(values.iter()), |r| r.get(0))?;
        let mut items = Vec::with_capacity((limit as usize).min(total.max(0) as usize));
        if limit > 0 && q.offset < total.max(0) as u64 {
            let mut page_values = values;
            page_values.push(Value::Integer(i64::from(limit)));
            page_values.push(Value::Integer(i64::try_from(q.offset).unwrap_or(i64::MAX)));
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT alert_id, body FROM alerts{clause} ORDER BY ts DESC, alert_id LIMIT ? OFFSET ?"
            ))?;
            let mut rows = stmt.query(params_from_iter(page_values.iter()))?;
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let body: String = row.get(1)?;
                items.push(decode(&id, &body)?);
            }
        }
        tx.finish()?;
        Ok(AlertPage {
            items,
            total: total.max(0) as u64,
            limit,
            offset: q.offset,
        })
    }

    fn insert_predictions(&mut self, predictions: &[Prediction]) -> Result<usize, StoreError> {
        if predictions.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        let mut inserted = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO predictions
                 (thing_id, ts, equipment_type, rul, maintenance_due, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for p in predictions {
                let body = serde_json::to_string(p).map_err(|source| StoreError::Encode {
                    alert_id: format!("prediction {} {}", p.thing_id, p.ts),
                    source,
                })?;
                inserted += stmt.execute(params![
                    p.thing_id.as_str(),
                    p.ts,
                    p.equipment_type.as_str(),
                    p.rul,
                    p.maintenance_due,
                    body,
                ])?;
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn predictions(&self, q: &PredictionQuery) -> Result<PredictionPage, StoreError> {
        let limit = q.limit.min(MAX_LIMIT);
        let (clause, values) = prediction_filters(q);
        let tx = self.conn.unchecked_transaction()?;
        let total: i64 = tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM predictions{clause}"))?
            .query_row(params_from_iter(values.iter()), |r| r.get(0))?;
        let mut items = Vec::with_capacity((limit as usize).min(total.max(0) as usize));
        if limit > 0 && q.offset < total.max(0) as u64 {
            let mut page_values = values;
            page_values.push(Value::Integer(i64::from(limit)));
            page_values.push(Value::Integer(i64::try_from(q.offset).unwrap_or(i64::MAX)));
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT thing_id, ts, body FROM predictions{clause}
                 ORDER BY ts DESC, thing_id LIMIT ? OFFSET ?"
            ))?;
            let mut rows = stmt.query(params_from_iter(page_values.iter()))?;
            while let Some(row) = rows.next()? {
                let thing: String = row.get(0)?;
                let ts: i64 = row.get(1)?;
                let body: String = row.get(2)?;
                items.push(decode_prediction(&thing, ts, &body)?);
            }
        }
        tx.finish()?;
        Ok(PredictionPage {
            items,
            total: total.max(0) as u64,
            limit,
            offset: q.offset,
        })
    }

    fn purge_older_than(&mut self, ts_ms: i64) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM alerts WHERE ts < ?1", [ts_ms])?;
        tx.execute("DELETE FROM feedback WHERE ts < ?1", [ts_ms])?;
        tx.execute("DELETE FROM predictions WHERE ts < ?1", [ts_ms])?;
        tx.commit()?;
        Ok(n)
    }

    fn record_feedback(&mut self, fb: &Feedback) -> Result<FeedbackOutcome, StoreError> {
        // IMMEDIATE: the existence checks and the write see one state even with a concurrent writer.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<String> = tx
            .prepare_cached("SELECT thing_id FROM alerts WHERE alert_id = ?1")?
            .query_row([&fb.alert_id], |r| r.get(0))
            .optional()?;
        check_feedback_target(fb, stored)?;
        let existed = tx
            .prepare_cached("SELECT 1 FROM feedback WHERE alert_id = ?1")?
            .exists([&fb.alert_id])?;
        tx.prepare_cached(
            "INSERT INTO feedback (alert_id, thing_id, verdict, note, ts) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (alert_id) DO UPDATE SET
               thing_id = excluded.thing_id, verdict = excluded.verdict, note = excluded.note,
               ts = excluded.ts",
        )?
        .execute(params![
            fb.alert_id,
            fb.thing_id,
            fb.verdict.as_str(),
            fb.note,
            fb.ts
        ])?;
        tx.commit()?;
        Ok(if existed {
            FeedbackOutcome::Replaced
        } else {
            FeedbackOutcome::Created
        })
    }

    fn feedback(&self, q: &FeedbackQuery) -> Result<FeedbackPage, StoreError> {
        let limit = q.limit.min(MAX_LIMIT);
        let mut clauses: Vec<&str> = Vec::new();
        let mut values = Vec::new();
        if let Some(t) = &q.thing_id {
            clauses.push("thing_id = ?");
            values.push(Value::Text(t.clone()));
        }
        if let Some(v) = q.verdict {
            clauses.push("verdict = ?");
            values.push(Value::Text(v.as_str().to_string()));
        }
        let clause = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let tx = self.conn.unchecked_transaction()?;
        let total: i64 = tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM feedback{clause}"))?
            .query_row(params_from_iter(values.iter()), |r| r.get(0))?;
        let mut items = Vec::new();
        if limit > 0 && q.offset < total.max(0) as u64 {
            values.push(Value::Integer(i64::from(limit)));
            values.push(Value::Integer(i64::try_from(q.offset).unwrap_or(i64::MAX)));
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT alert_id, thing_id, verdict, note, ts FROM feedback{clause}
                 ORDER BY ts DESC, alert_id LIMIT ? OFFSET ?"
            ))?;
            let mut rows = stmt.query(params_from_iter(values.iter()))?;
            while let Some(row) = rows.next()? {
                let verdict: String = row.get(2)?;
                items.push(Feedback {
                    alert_id: row.get(0)?,
                    thing_id: row.get(1)?,
                    verdict: verdict.parse().map_err(StoreError::Invalid)?,
                    note: row.get(3)?,
                    ts: row.get(4)?,
                });
            }
        }
        tx.finish()?;
        Ok(FeedbackPage {
            items,
            total: total.max(0) as u64,
            limit,
            offset: q.offset,
        })
    }

    fn feedback_counts(&self, thing_id: Option<&str>) -> Result<FeedbackCounts, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT verdict, COUNT(*) FROM feedback WHERE ?1 IS NULL OR thing_id = ?1 GROUP BY verdict",
        )?;
        let mut rows = stmt.query([thing_id])?;
        let mut counts = FeedbackCounts::default();
        while let Some(row) = rows.next()? {
            let verdict: String = row.get(0)?;
            let n: i64 = row.get(1)?;
            add_count(&mut counts, &verdict, n)?;
        }
        Ok(counts)
    }
}

/// Checks that feedback targets a stored alert of the same thing; `stored` is the alert's `thing_id`.
pub(crate) fn check_feedback_target(
    fb: &Feedback,
    stored: Option<String>,
) -> Result<(), StoreError> {
    match stored {
        None => Err(StoreError::UnknownAlert {
            alert_id: fb.alert_id.clone(),
        }),
        Some(t) if t != fb.thing_id => Err(StoreError::ThingMismatch {
            alert_id: fb.alert_id.clone(),
            stored: t,
            given: fb.thing_id.clone(),
        }),
        Some(_) => Ok(()),
    }
}

/// Adds a verdict count read from a store (shared with the PostgreSQL store).
pub(crate) fn add_count(
    counts: &mut FeedbackCounts,
    verdict: &str,
    n: i64,
) -> Result<(), StoreError> {
    counts.add(
        verdict.parse().map_err(StoreError::Invalid)?,
        n.max(0) as u64,
    );
    Ok(())
}

#[cfg(test)]
mod tests;
