//! Embedded SQLite anomaly store. STUB: owned by the service helper.
