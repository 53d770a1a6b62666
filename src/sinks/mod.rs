//! Sinks: JSONL files/stdout, the SQLite anomaly store, dead letters.

pub mod jsonl;
pub mod kafka;
pub mod sqlite;
