//! Integration tests, linked into one binary (one link instead of one per file).

mod accuracy;
mod backpressure;
mod bench;
mod bench_models;
mod checkpoint;
mod cli;
mod cluster;
mod common;
mod demo;
mod egizcore;
mod engine;
mod fake_egizcore;
mod influx;
mod kafka;
mod loadgen;
mod mlflow;
mod models;
mod mqtt;
mod regimes;
mod replay;
mod rul;
mod service;
mod skab;
mod training;
