//! `egizml eval <dataset>`: benchmark evaluations. Each dataset is one variant of [`EvalCommand`], so
//! further datasets (skab, nab) are added as variants without touching the others.

use super::{eval_cmapss, eval_nab, eval_skab};

/// The datasets `egizml eval` knows.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// NASA C-MAPSS remaining useful life: train on train_FDxxx, score the last cycle of each test unit.
    Cmapss(eval_cmapss::CmapssArgs),
    /// SKAB protocol: first 400 rows of each file learn-only; point-wise F1/FAR/MAR and SKAB's NAB.
    Skab(eval_skab::EvalSkabArgs),
    /// Numenta Anomaly Benchmark scoring (windows, probation, scaled sigmoid, three profiles).
    Nab(eval_nab::EvalNabArgs),
}

/// Runs an evaluation and prints its table; the last printed line is the JSON summary (DESIGN.md).
pub fn run(cmd: &EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Cmapss(args) => {
            let report = eval_cmapss::eval_cmapss(args)?;
            for line in eval_cmapss::describe(&report) {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&report.summary)?);
        }
        EvalCommand::Skab(args) => {
            let (summary, report) = eval_skab::eval_skab(args)?;
            for line in eval_skab::describe(&summary, &report) {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&summary)?);
        }
        EvalCommand::Nab(args) => {
            let (summary, files) = eval_nab::eval_nab(args)?;
            for line in eval_nab::describe(&summary, &files) {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&summary)?);
        }
    }
    Ok(())
}
