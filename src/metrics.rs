//! Prometheus metrics. STUB: owned by the service helper.
