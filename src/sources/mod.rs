//! Sources of telemetry: file replay, the built-in simulator, Kafka and MQTT.

pub mod file;
pub mod kafka;
pub mod mqtt;
pub mod simulator;
