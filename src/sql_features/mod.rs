//! Feature sets defined in SQL (`sql/*.sql`), computed two ways from one definition:
//!
//! - [`batch`]: DataFusion runs the file over history (Arrow record batches with the columns `thing_id`,
//!   `ts` and one per sensor) and returns a feature matrix, for training.
//! - [`stream`]: the same file, planned once by DataFusion at start-up, is compiled into an expression
//!   tree plus per-thing window state (ring buffers) and evaluated per reading in the dataflow.
//!
//! Why a compiled tree rather than DataFusion physical expressions on one-row Arrow batches: a reading
//! would cost one Arrow array per input column plus a record batch per evaluation (allocations and
//! dynamic dispatch per column), about 100x the arithmetic itself on the hot path. The tree is derived
//! from DataFusion's *analyzed* logical plan (type coercion applied, names resolved), so the semantics
//! come from DataFusion, and the parity test (`tests.rs`) checks every shipped file against DataFusion's
//! own batch result.
//!
//! The accepted SQL shape is one `SELECT` over the table `telemetry`: row expressions over sensor
//! columns, and window functions `OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN n PRECEDING AND
//! CURRENT ROW)` (aggregates avg, sum, count, min, max, stddev, stddev_pop, var, var_pop; `lag`).
//! Anything else (WHERE, GROUP BY, joins, other frames, unknown functions) fails at start-up with an
//! error naming the file and the construct.

pub mod batch;
mod compile;
pub mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};

pub use batch::{FeatureMatrix, HistoryColumns};
pub use stream::{StreamEvaluator, ThingWindows};

/// The table name feature files select from.
pub const TABLE: &str = "telemetry";
/// Partition column of the history table and of every window.
pub const THING_ID: &str = "thing_id";
/// Order column (epoch milliseconds) of the history table and of every window.
pub const TS: &str = "ts";

/// A feature file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SqlFeatureError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: SQL error: {message}")]
    Plan { file: String, message: String },
    #[error("{file}: unsupported in a feature set: {construct}")]
    Unsupported { file: String, construct: String },
    #[error("{file}: running the feature set: {message}")]
    Execute { file: String, message: String },
}

/// One feature set: its SQL text, its input sensor columns and its output feature columns.
#[derive(Clone, Debug)]
pub struct FeatureSet {
    /// File name (or a label) used in errors.
    pub name: String,
    /// The SQL text, as written.
    pub sql: String,
    /// Sensor columns the SQL reads, in the order [`StreamEvaluator::evaluate`] takes them.
    pub inputs: Vec<String>,
    /// Output feature columns (every select item except `thing_id` and `ts`), in order.
    pub outputs: Vec<String>,
    pub(crate) program: Arc<compile::Program>,
}

impl FeatureSet {
    /// Reads, plans and compiles a feature file.
    pub fn from_file(path: &Path) -> Result<FeatureSet, SqlFeatureError> {
        let sql = std::fs::read_to_string(path).map_err(|source| SqlFeatureError::Read {
            file: path.display().to_string(),
            source,
        })?;
        FeatureSet::from_sql(&path.display().to_string(), &sql)
    }

    /// Plans and compiles SQL text; `name` labels errors.
    pub fn from_sql(name: &str, sql: &str) -> Result<FeatureSet, SqlFeatureError> {
        let columns = candidate_columns(name, sql)?;
        let program = compile::compile(name, sql, &columns)?;
        Ok(FeatureSet {
            name: name.to_string(),
            sql: sql.to_string(),
            inputs: program.inputs.clone(),
            outputs: program.outputs.clone(),
            program: Arc::new(program),
        })
    }

    /// A stream evaluator of this set (cheap: shares the compiled program).
    pub fn evaluator(&self) -> StreamEvaluator {
        StreamEvaluator::new(Arc::clone(&self.program))
    }

    /// xxh3 of the SQL text (model metadata records which features a model was trained on).
    pub fn sql_hash(&self) -> String {
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(self.sql.as_bytes()))
    }
}

/// The shipped feature files (`sql/*.sql` next to the crate), for tests and docs.
pub fn shipped_feature_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every identifier in the SQL becomes a nullable Float64 column of the planning schema (besides
/// `thing_id` and `ts`): the sensor set is not known when a file is planned, and unused columns cost
/// nothing. The columns the plan actually reads are the feature set's inputs.
fn candidate_columns(name: &str, sql: &str) -> Result<Vec<String>, SqlFeatureError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| SqlFeatureError::Plan {
            file: name.to_string(),
            message: e.to_string(),
        })?;
    let mut out: Vec<String> = Vec::new();
    for t in tokens {
        if let Token::Word(w) = t {
            // Unquoted identifiers are case-insensitive (DataFusion lower-cases them).
            let id = if w.quote_style.is_some() {
                w.value
            } else {
                w.value.to_lowercase()
            };
            if id != THING_ID && id != TS && id != TABLE && !out.contains(&id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// The Arrow schema of the history table for the given sensor columns.
pub fn history_schema(sensors: &[String]) -> Schema {
    let mut fields = vec![
        Field::new(THING_ID, DataType::Utf8, false),
        Field::new(TS, DataType::Int64, false),
    ];
    fields.extend(
        sensors
            .iter()
            .map(|s| Field::new(s.as_str(), DataType::Float64, true)),
    );
    Schema::new(fields)
}

#[cfg(test)]
mod tests;
