//! `egizml eval <dataset>`: benchmark evaluations. Each dataset is one variant of [`EvalCommand`], so
//! further datasets (skab, nab) are added as variants without touching the others.

use super::eval_cmapss;

/// The datasets `egizml eval` knows.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// NASA C-MAPSS remaining useful life: train on train_FDxxx, score the last cycle of each test unit.
    Cmapss(eval_cmapss::CmapssArgs),
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
    }
    Ok(())
}
