//! Sinks: JSONL files/stdout, the SQLite anomaly store, dead letters.

pub mod jsonl;
pub mod sqlite;
pub mod kafka;
