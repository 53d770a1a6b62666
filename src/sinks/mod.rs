//! Sinks: JSONL files/stdout, Kafka, EgizCore REST, the anomaly store (SQLite embedded, PostgreSQL for
//! production), dead letters, retention.

pub mod egizcore;
pub mod jsonl;
pub mod kafka;
pub mod postgres;
pub mod retention;
pub mod sqlite;
