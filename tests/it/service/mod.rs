//! Service surface against real servers: the store contract on SQLite and PostgreSQL, a Prometheus
//! server scraping /metrics, and the docker/ deployment files.

mod audit;
mod demo_pg;
mod docker;
mod fleet;
mod logs;
pub(crate) mod procs;
mod prometheus;
mod run_api;
mod shutdown;
mod store;
