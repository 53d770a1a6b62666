//! REST API (axum). STUB: owned by the service helper.
