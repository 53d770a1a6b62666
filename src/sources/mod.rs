//! Sources of telemetry: file replay and the built-in simulator.

pub mod file;
pub mod kafka;
pub mod simulator;
