//! The `egizml` commands, callable from the binary, tests and benches.

pub mod bench;
pub mod bench_models;
pub mod bench_train;
pub mod demo;
pub mod eval;
pub mod eval_cmapss;
pub mod eval_nab;
pub mod eval_skab;
pub mod loadgen;
pub mod models;
pub mod replay;
pub mod run;
pub mod serve;
pub mod simulate;
pub mod train;

use crate::config::DataflowConfig;
use crate::rules::{RuleSet, RulesHandle};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// The rules shipped in `configs/rules.yaml`, embedded so the binary runs with no files around it.
pub const DEFAULT_RULES: &str = include_str!("../../configs/rules.yaml");

/// Loads the dataflow (or the embedded default) and its rules (hot reloaded when they come from a file).
pub fn load_dataflow(config: Option<&Path>) -> anyhow::Result<(Arc<DataflowConfig>, RulesHandle)> {
    match config {
        Some(path) => {
            let cfg = DataflowConfig::load(path)?;
            let rules = match &cfg.rules {
                Some(rules) => RulesHandle::watch(Some(rules), cfg.rules_reload_s)?,
                None => RulesHandle::fixed(RuleSet::empty()),
            };
            Ok((Arc::new(cfg), rules))
        }
        None => {
            let rules = RuleSet::parse(DEFAULT_RULES, "<embedded configs/rules.yaml>")
                .context("embedded default rules are invalid")?;
            Ok((
                Arc::new(DataflowConfig::default()),
                RulesHandle::fixed(rules),
            ))
        }
    }
}

/// Worker count when none is given: the machine's cores.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets `stop` on Ctrl-C or SIGTERM.
pub fn stop_on_signal(stop: Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut term) = signal(SignalKind::terminate()) else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
}
