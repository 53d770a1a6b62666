//! Simulator of ovens, mixers and conveyors with labelled fault injection. STUB: owned by the simulator
//! helper.

use crate::event::{Name, Point};

/// Injected fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    VoltageSpike,
    PhaseImbalance,
    OverheatDrift,
    PowerFactorDegradation,
    BearingWear,
}

/// One injected fault: readings of `thing_id` with start_ts <= ts <= end_ts carry label 1.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultEpisode {
    pub thing_id: Name,
    pub kind: FaultKind,
    pub start_ts: i64,
    pub end_ts: i64,
}

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    pub things: usize,
    pub seed: u64,
    /// Event-time interval between two readings of one thing.
    pub interval_ms: i64,
    pub start_ts: i64,
    /// Expected fault episodes per thing per 1,000 readings (0 = none).
    pub faults_per_1000: f64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            things: 100,
            seed: 42,
            interval_ms: 1000,
            start_ts: 1_767_225_600_000,
            faults_per_1000: 2.0,
        }
    }
}

/// Deterministic generator: readings round-robin over things, event time advancing by `interval_ms`
/// each round. The same config gives the same points.
pub struct Simulator {
    _cfg: SimulatorConfig,
}

impl Simulator {
    pub fn new(cfg: SimulatorConfig) -> Self {
        Simulator { _cfg: cfg }
    }
    /// The next reading (never ends).
    pub fn next_point(&mut self) -> Point {
        todo!()
    }
    /// Fault episodes started so far.
    pub fn episodes(&self) -> &[FaultEpisode] {
        todo!()
    }
}

/// Writes `points` readings as flat JSON lines; returns the fault episodes injected.
pub fn write_jsonl(
    _cfg: SimulatorConfig,
    _points: usize,
    _out: impl std::io::Write,
) -> std::io::Result<Vec<FaultEpisode>> {
    todo!()
}
