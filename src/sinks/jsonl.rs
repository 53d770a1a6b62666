//! JSONL sink.
