//! JSONL file source.
