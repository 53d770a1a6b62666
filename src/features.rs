//! Per-reading derived features.
