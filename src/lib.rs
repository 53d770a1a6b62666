//! EgizML: streaming anomaly detection and predictive maintenance for industrial telemetry.
//!
//! Data path: [`sources`] -> [`decode`] -> [`pipeline`] (timely dataflow: per-thing [`features`],
//! [`rules`], [`detectors`], ensemble, [`explain`], [`policy`]) -> [`sinks`].

pub mod api;
pub mod backoff;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod decode;
pub mod detectors;
pub mod eval;
pub mod event;
pub mod explain;
pub mod features;
pub mod fleet;
pub mod history;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod policy;
pub mod registry;
pub mod rul;
pub mod rules;
pub mod sinks;
pub mod sources;
pub mod sql_features;
pub mod testkit;
pub mod training;
