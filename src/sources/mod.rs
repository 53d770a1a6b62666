//! Sources of telemetry: file replay, the built-in simulator, Kafka, MQTT and the EgizCore WebSocket.

pub mod egizcore;
pub mod file;
pub mod kafka;
pub mod mqtt;
pub mod simulator;
