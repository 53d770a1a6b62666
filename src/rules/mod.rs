//! YAML rule engine: rules per equipment class, validated fail-fast, hot reloaded. STUB: owned by the
//! rules helper.

use crate::config::ConfigError;
use crate::event::{Name, Severity};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The readings of one thing that a rule looks at.
pub trait Readings {
    /// Event time of the current reading, epoch ms.
    fn ts(&self) -> i64;
    /// Current value of a feature (raw or derived), if the thing has it.
    fn value(&self, feature: &str) -> Option<f64>;
    /// The previous reading's value of a feature and its event time, if any.
    fn previous(&self, feature: &str) -> Option<(f64, i64)>;
    /// All feature names of the thing (for patterns such as `temp_zone_*`).
    fn feature_names(&self) -> Vec<&str>;
}

/// A validated set of rules.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    /// Where the rules came from (file path or `<api>`), for messages.
    pub source: String,
}

impl RuleSet {
    pub fn empty() -> Self {
        RuleSet::default()
    }
    pub fn load(_path: &Path) -> Result<RuleSet, ConfigError> {
        todo!()
    }
    pub fn parse(_text: &str, _file: &str) -> Result<RuleSet, ConfigError> {
        todo!()
    }
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A rule that fired on a reading.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleHit {
    pub rule: String,
    pub alert_type: String,
    pub severity: Severity,
    /// Signed contributions of the features involved (absolute values sum to 1).
    pub contributions: Vec<(Name, f64)>,
    /// A sentence an operator can act on, e.g. "temp_zone_2 = 262.1 above limit 250".
    pub message: String,
}

/// Per-thing evaluation state (consecutive-sample counters for `for:`). Reset when rules change.
#[derive(Clone, Debug, Default)]
pub struct RuleState {
    pub generation: u64,
}

/// Evaluates every rule that applies to `equipment_type` against the current reading.
pub fn evaluate(
    _rules: &RuleSet,
    _equipment_type: &str,
    _readings: &dyn Readings,
    _state: &mut RuleState,
) -> Vec<RuleHit> {
    todo!()
}

/// Shared, hot-reloadable rules: a watcher thread re-reads the file when it changes; an invalid file is
/// logged and ignored (the previous rules stay).
#[derive(Clone)]
pub struct RulesHandle {
    _path: Option<PathBuf>,
}

impl RulesHandle {
    /// Loads `path` (fail fast on error) and starts watching it every `interval_s` seconds.
    pub fn watch(_path: Option<&Path>, _interval_s: f64) -> Result<RulesHandle, ConfigError> {
        todo!()
    }
    /// A handle over fixed rules (no file, no watcher).
    pub fn fixed(_rules: RuleSet) -> RulesHandle {
        todo!()
    }
    /// Current rules and their generation (bumped on every successful reload).
    pub fn current(&self) -> (Arc<RuleSet>, u64) {
        todo!()
    }
}
