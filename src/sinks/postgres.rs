//! PostgreSQL anomaly store: the production backend behind the same [`AlertStore`] trait as the embedded
//! SQLite store, with the same semantics (idempotent inserts keyed by `alert_id`, newest-first paging,
//! one current verdict per alert, retention purge).
//!
//! Schema changes are numbered migrations recorded in `schema_migrations`; they run in one transaction
//! under an advisory lock, so several EgizML processes starting against a new database apply each
//! migration exactly once. Alert bodies are stored as TEXT rather than JSONB: JSONB reorders keys and
//! normalises numbers, and the store must return exactly the alert it was given.

use super::sqlite::{
    add_count, check_feedback_target, AlertPage, AlertQuery, AlertStore, Feedback, FeedbackCounts,
    FeedbackOutcome, FeedbackPage, FeedbackQuery, StoreError, MAX_LIMIT,
};
use super::sqlite::{decode_prediction, PredictionPage, PredictionQuery};
use crate::event::Alert;
use crate::rul::predict::Prediction;
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, NoTls};
use std::sync::Mutex;
use std::time::Duration;

/// Schema migrations, applied in order; version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // 1: alerts and the indexes behind the per-thing and time-range queries.
    "CREATE TABLE alerts (
        alert_id       TEXT PRIMARY KEY,
        thing_id       TEXT NOT NULL,
        equipment_type TEXT NOT NULL,
        ts             BIGINT NOT NULL,
        severity       TEXT NOT NULL,
        type           TEXT NOT NULL,
        source         TEXT NOT NULL,
        score          DOUBLE PRECISION NOT NULL,
        body           TEXT NOT NULL
    );
    CREATE INDEX alerts_thing_ts ON alerts (thing_id, ts);
    CREATE INDEX alerts_ts ON alerts (ts);",
    // 2: operator feedback, one current verdict per alert.
    "CREATE TABLE feedback (
        alert_id TEXT PRIMARY KEY,
        thing_id TEXT NOT NULL,
        verdict  TEXT NOT NULL,
        note     TEXT,
        ts       BIGINT NOT NULL
    );
    CREATE INDEX feedback_thing_ts ON feedback (thing_id, ts);
    CREATE INDEX feedback_ts ON feedback (ts);",
    // 3: remaining-useful-life predictions, one per thing and event time.
    "CREATE TABLE predictions (
        thing_id        TEXT NOT NULL,
        ts              BIGINT NOT NULL,
        equipment_type  TEXT NOT NULL,
        rul             DOUBLE PRECISION NOT NULL,
        maintenance_due BOOLEAN NOT NULL,
        body            TEXT NOT NULL,
        PRIMARY KEY (thing_id, ts)
    );
    CREATE INDEX predictions_ts ON predictions (ts);",
];

/// Advisory lock key serialising migrations between processes (any constant unique to EgizML).
const MIGRATION_LOCK: i64 = 0x4567_697a_4d4c_0001;

/// How long connecting may take before it is an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// [`AlertStore`] on a PostgreSQL database.
pub struct PostgresStore {
    // `AlertStore::query` takes `&self` but the client needs `&mut`; the lock is uncontended (the
    // store itself sits behind the API's mutex). `None` only while dropping.
    client: Option<Mutex<Client>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The sync client closes its connection by blocking on its own runtime, which panics inside
        // another tokio runtime (the API server drops its state there); close it on a plain thread.
        if let Some(client) = self.client.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("egizml-pg-close".into())
                    .spawn(move || drop(client));
            }
        }
    }
}

type Params = Vec<Box<dyn ToSql + Sync>>;

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref()).collect()
}

impl PostgresStore {
    /// Connects to `url` (`postgresql://user@host:port/db` or a `key=value` string) without TLS and
    /// migrates the schema. Errors name the URL without its password.
    pub fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let shown = redact(url);
        let mut config: postgres::Config =
            url.parse()
                .map_err(|e: postgres::Error| StoreError::Connect {
                    url: shown.clone(),
                    message: format!("invalid connection string: {e}"),
                })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("egizml");
        let mut client = config.connect(NoTls).map_err(|e| StoreError::Connect {
            url: shown.clone(),
            message: e.to_string(),
        })?;
        migrate(&mut client).map_err(|e| StoreError::Connect {
            url: shown,
            message: format!("migrating the schema: {e}"),
        })?;
        Ok(PostgresStore {
            client: Some(Mutex::new(client)),
        })
    }

    /// The schema version this build creates.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// The schema version recorded in the database.
    pub fn applied_version(&self) -> Result<i64, StoreError> {
        let mut c = self.lock();
        let row = c.query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )?;
        Ok(row.get(0))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Client> {
        // A panic mid-call leaves at most an aborted transaction, which the next statement rolls back.
        self.client
            .as_ref()
            .expect("the client is present until drop")
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    let supported = MIGRATIONS.len() as i32;
    if applied > supported {
        return Err(StoreError::Invalid(format!(
            "schema version {applied} is newer than this build supports ({supported})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn decode(alert_id: &str, body: &str) -> Result<Alert, StoreError> {
    serde_json::from_str(body).map_err(|source| StoreError::Corrupt {
        alert_id: alert_id.to_string(),
        source,
    })
}

/// The WHERE clause (with `$n` placeholders) and its parameters for the filters of a prediction query.
fn prediction_filters(q: &PredictionQuery) -> (String, Params) {
    let mut values: Params = Vec::new();
    // The thing and time bounds, numbered from the current parameter count (used twice with `latest`).
    let bounds = |values: &mut Params| {
        let mut clauses = Vec::new();
        let mut add = |col: &str, op: &str, v: Box<dyn ToSql + Sync>| {
            values.push(v);
            clauses.push(format!("{col} {op} ${}", values.len()));
        };
        if let Some(t) = &q.thing_id {
            add("thing_id", "=", Box::new(t.clone()));
        }
        if let Some(s) = q.since_ms {
            add("ts", ">=", Box::new(s));
        }
        if let Some(u) = q.until_ms {
            add("ts", "<=", Box::new(u));
        }
        clauses
    };
    let mut clauses = bounds(&mut values);
    if q.latest {
        let inner = bounds(&mut values);
        let inner = if inner.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", inner.join(" AND "))
        };
        clauses.push(format!(
            "(thing_id, ts) IN (SELECT thing_id, MAX(ts) FROM predictions{inner} GROUP BY thing_id)"
        ));
    }
    if let Some(d) = q.maintenance_due {
        values.push(Box::new(d));
        clauses.push(format!("maintenance_due = ${}", values.len()));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

/// The WHERE clause (with `$n` placeholders) and its parameters for the filters of `q`.
fn filters(q: &AlertQuery) -> (String, Params) {
    let mut clauses = Vec::new();
    let mut values: Params = Vec::new();
    let mut add = |col: &str, op: &str, v: Box<dyn ToSql + Sync>| {
        values.push(v);
        clauses.push(format!("{col} {op} ${}", values.len()));
    };
    if let Some(t) = &q.thing_id {
        add("thing_id", "=", Box::new(t.clone()));
    }
    if let Some(s) = q.since_ms {
        add("ts", ">=", Box::new(s));
    }
    if let Some(u) = q.until_ms {
        add("ts", "<=", Box::new(u));
    }
    if let Some(s) = q.severity {
        add("severity", "=", Box::new(s.as_str().to_string()));
    }
    if let Some(t) = &q.alert_type {
        add("type", "=", Box::new(t.clone()));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

impl AlertStore for PostgresStore {
    fn insert(&mut self, alerts: &[Alert]) -> Result<usize, StoreError> {
        if alerts.is_empty() {
            return Ok(0);
        }
        let mut c = self.lock();
        let mut tx = c.transaction()?;
        let stmt = tx.prepare(
            "INSERT INTO alerts
             (alert_id, thing_id, equipment_type, ts, severity, type, source, score, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (alert_id) DO NOTHING",
        )?;
        let mut inserted = 0;
        for a in alerts {
            let body = serde_json::to_string(a).map_err(|source| StoreError::Encode {
                alert_id: a.alert_id.clone(),
                source,
            })?;
            inserted += tx.execute(
                &stmt,
                &[
                    &a.alert_id,
                    &a.thing_id.as_str(),
                    &a.equipment_type.as_str(),
                    &a.ts,
                    &a.severity.as_str(),
                    &a.alert_type,
                    &a.source,
                    &a.score,
                    &body,
                ],
            )? as usize;
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn query(&self, q: &AlertQuery) -> Result<AlertPage, StoreError> {
        let limit = q.limit.min(MAX_LIMIT);
        let (clause, mut values) = filters(q);
        let mut c = self.lock();
        // REPEATABLE READ: `total` and `items` come from one snapshot while a writer commits.
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let total: i64 = tx
            .query_one(
                &format!("SELECT COUNT(*) FROM alerts{clause}"),
                &refs(&values),
            )?
            .get(0);
        let mut items = Vec::new();
        if limit > 0 && q.offset < total.max(0) as u64 {
            let n = values.len();
            values.push(Box::new(i64::from(limit)));
            values.push(Box::new(i64::try_from(q.offset).unwrap_or(i64::MAX)));
            let rows = tx.query(
                &format!(
                    "SELECT alert_id, body FROM alerts{clause}
                     ORDER BY ts DESC, alert_id COLLATE \"C\" LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                ),
                &refs(&values),
            )?;
            for row in rows {
                let id: String = row.get(0);
                let body: String = row.get(1);
                items.push(decode(&id, &body)?);
            }
        }
        tx.commit()?;
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
        let mut c = self.lock();
        let mut tx = c.transaction()?;
        let stmt = tx.prepare(
            "INSERT INTO predictions (thing_id, ts, equipment_type, rul, maintenance_due, body)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (thing_id, ts) DO NOTHING",
        )?;
        let mut inserted = 0;
        for p in predictions {
            let body = serde_json::to_string(p).map_err(|source| StoreError::Encode {
                alert_id: format!("prediction {} {}", p.thing_id, p.ts),
                source,
            })?;
            inserted += tx.execute(
                &stmt,
                &[
                    &p.thing_id.as_str(),
                    &p.ts,
                    &p.equipment_type.as_str(),
                    &p.rul,
                    &p.maintenance_due,
                    &body,
                ],
            )? as usize;
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn predictions(&self, q: &PredictionQuery) -> Result<PredictionPage, StoreError> {
        let limit = q.limit.min(MAX_LIMIT);
        let (clause, mut values) = prediction_filters(q);
        let mut c = self.lock();
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let total: i64 = tx
            .query_one(
                &format!("SELECT COUNT(*) FROM predictions{clause}"),
                &refs(&values),
            )?
            .get(0);
        let mut items = Vec::new();
        if limit > 0 && q.offset < total.max(0) as u64 {
            let n = values.len();
            values.push(Box::new(i64::from(limit)));
            values.push(Box::new(i64::try_from(q.offset).unwrap_or(i64::MAX)));
            let rows = tx.query(
                &format!(
                    "SELECT thing_id, ts, body FROM predictions{clause}
                     ORDER BY ts DESC, thing_id COLLATE \"C\" LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                ),
                &refs(&values),
            )?;
            for row in rows {
                let thing: String = row.get(0);
                let ts: i64 = row.get(1);
                let body: String = row.get(2);
                items.push(decode_prediction(&thing, ts, &body)?);
            }
        }
        tx.commit()?;
        Ok(PredictionPage {
            items,
            total: total.max(0) as u64,
            limit,
            offset: q.offset,
        })
    }

    fn purge_older_than(&mut self, ts_ms: i64) -> Result<usize, StoreError> {
        let mut c = self.lock();
        let mut tx = c.transaction()?;
        let n = tx.execute("DELETE FROM alerts WHERE ts < $1", &[&ts_ms])?;
        tx.execute("DELETE FROM feedback WHERE ts < $1", &[&ts_ms])?;
        tx.execute("DELETE FROM predictions WHERE ts < $1", &[&ts_ms])?;
        tx.commit()?;
        Ok(n as usize)
    }

    fn record_feedback(&mut self, fb: &Feedback) -> Result<FeedbackOutcome, StoreError> {
        let mut c = self.lock();
        let mut tx = c.transaction()?;
        // FOR SHARE keeps the alert from being purged between the check and the write.
        let stored: Option<String> = tx
            .query_opt(
                "SELECT thing_id FROM alerts WHERE alert_id = $1 FOR SHARE",
                &[&fb.alert_id],
            )?
            .map(|r| r.get(0));
        check_feedback_target(fb, stored)?;
        // `xmax = 0` is true for a freshly inserted row and false for one the upsert updated.
        let inserted: bool = tx
            .query_one(
                "INSERT INTO feedback (alert_id, thing_id, verdict, note, ts)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (alert_id) DO UPDATE SET
                   thing_id = EXCLUDED.thing_id, verdict = EXCLUDED.verdict,
                   note = EXCLUDED.note, ts = EXCLUDED.ts
                 RETURNING (xmax = 0)",
                &[
                    &fb.alert_id,
                    &fb.thing_id,
                    &fb.verdict.as_str(),
                    &fb.note,
                    &fb.ts,
                ],
            )?
            .get(0);
        tx.commit()?;
        Ok(if inserted {
            FeedbackOutcome::Created
        } else {
            FeedbackOutcome::Replaced
        })
    }

    fn feedback(&self, q: &FeedbackQuery) -> Result<FeedbackPage, StoreError> {
        let limit = q.limit.min(MAX_LIMIT);
        let mut clauses = Vec::new();
        let mut values: Params = Vec::new();
        if let Some(t) = &q.thing_id {
            values.push(Box::new(t.clone()));
            clauses.push(format!("thing_id = ${}", values.len()));
        }
        if let Some(v) = q.verdict {
            values.push(Box::new(v.as_str().to_string()));
            clauses.push(format!("verdict = ${}", values.len()));
        }
        let clause = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let mut c = self.lock();
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let total: i64 = tx
            .query_one(
                &format!("SELECT COUNT(*) FROM feedback{clause}"),
                &refs(&values),
            )?
            .get(0);
        let mut items = Vec::new();
        if limit > 0 && q.offset < total.max(0) as u64 {
            let n = values.len();
            values.push(Box::new(i64::from(limit)));
            values.push(Box::new(i64::try_from(q.offset).unwrap_or(i64::MAX)));
            let rows = tx.query(
                &format!(
                    "SELECT alert_id, thing_id, verdict, note, ts FROM feedback{clause}
                     ORDER BY ts DESC, alert_id COLLATE \"C\" LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                ),
                &refs(&values),
            )?;
            for row in rows {
                let verdict: String = row.get(2);
                items.push(Feedback {
                    alert_id: row.get(0),
                    thing_id: row.get(1),
                    verdict: verdict.parse().map_err(StoreError::Invalid)?,
                    note: row.get(3),
                    ts: row.get(4),
                });
            }
        }
        tx.commit()?;
        Ok(FeedbackPage {
            items,
            total: total.max(0) as u64,
            limit,
            offset: q.offset,
        })
    }

    fn feedback_counts(&self, thing_id: Option<&str>) -> Result<FeedbackCounts, StoreError> {
        let mut c = self.lock();
        let rows = c.query(
            "SELECT verdict, COUNT(*) FROM feedback
             WHERE $1::TEXT IS NULL OR thing_id = $1 GROUP BY verdict",
            &[&thing_id],
        )?;
        let mut counts = FeedbackCounts::default();
        for row in rows {
            let verdict: String = row.get(0);
            add_count(&mut counts, &verdict, row.get(1))?;
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgresql://egizml:s3cret@db:5432/egizml"),
            "postgresql://egizml:***@db:5432/egizml"
        );
        assert_eq!(
            redact("postgresql://egizml@db/egizml"),
            "postgresql://egizml@db/egizml"
        );
        assert_eq!(
            redact("host=db user=egizml password=s3cret"),
            "host=db user=egizml password=***"
        );
    }
}
