//! JSONL sinks: alerts, per-reading scores and dead letters as one JSON object per line.

use crate::pipeline::{Output, OutputSink};
use anyhow::Context;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A line writer on a file, or on stdout for the path `-`.
pub struct LineWriter {
    path: PathBuf,
    out: Box<dyn Write + Send>,
}

impl LineWriter {
    pub fn create(path: &Path) -> anyhow::Result<LineWriter> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(BufWriter::new(std::io::stdout()))
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("{}: cannot create folder", dir.display()))?;
            }
            let f =
                File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
            Box::new(BufWriter::with_capacity(1 << 20, f))
        };
        Ok(LineWriter {
            path: path.to_path_buf(),
            out,
        })
    }

    pub fn write_json<T: serde::Serialize>(&mut self, value: &T) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out
            .write_all(b"\n")
            .with_context(|| format!("{}: write failed", self.path.display()))
    }

    pub fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.out.write_all(line.as_bytes())?;
        self.out
            .write_all(b"\n")
            .with_context(|| format!("{}: write failed", self.path.display()))
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out
            .flush()
            .with_context(|| format!("{}: flush failed", self.path.display()))
    }
}

/// Replay's sink: alerts (always), scores and RUL predictions (optional), dead letters (file created
/// on the first one).
pub struct JsonlSink {
    alerts: LineWriter,
    scores: Option<LineWriter>,
    predictions: Option<LineWriter>,
    dead_path: PathBuf,
    dead: Option<LineWriter>,
}

impl JsonlSink {
    pub fn create(
        alerts: &Path,
        scores: Option<&Path>,
        dead_letters: &Path,
    ) -> anyhow::Result<JsonlSink> {
        Ok(JsonlSink {
            alerts: LineWriter::create(alerts)?,
            scores: scores.map(LineWriter::create).transpose()?,
            predictions: None,
            dead_path: dead_letters.to_path_buf(),
            dead: None,
        })
    }

    /// Also writes RUL predictions, one JSON object per line, to `path`.
    pub fn with_predictions(mut self, path: &Path) -> anyhow::Result<JsonlSink> {
        self.predictions = Some(LineWriter::create(path)?);
        Ok(self)
    }
}

impl OutputSink for JsonlSink {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        for (_, o) in outputs {
            match o {
                Output::Alert(a) => self.alerts.write_json(a)?,
                Output::Score(s) => {
                    if let Some(w) = self.scores.as_mut() {
                        w.write_json(s)?;
                    }
                }
                Output::Prediction(p) => {
                    if let Some(w) = self.predictions.as_mut() {
                        w.write_json(p)?;
                    }
                }
                Output::Dead(d) => {
                    if self.dead.is_none() {
                        self.dead = Some(LineWriter::create(&self.dead_path)?);
                    }
                    if let Some(w) = self.dead.as_mut() {
                        w.write_line(&d.to_json_line())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.alerts.flush()?;
        if let Some(w) = self.scores.as_mut() {
            w.flush()?;
        }
        if let Some(w) = self.predictions.as_mut() {
            w.flush()?;
        }
        if let Some(w) = self.dead.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}
