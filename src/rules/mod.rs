//! YAML rule engine: rules per equipment class, validated fail-fast, hot reloaded.
//!
//! A rules file (see `docs/RULES.md` and `configs/rules.yaml`) lists rules of six kinds: `threshold`,
//! `range`, `rate_of_change`, `spread`, `imbalance` and `compare`. [`RuleSet::parse`] validates it
//! completely and names the file, line and field of the first problem. [`evaluate`] runs the rules that
//! apply to a thing's equipment type against its current reading, keeping `for:` counters in a per-thing
//! [`RuleState`]. [`RulesHandle`] shares the current rules between workers and swaps them when the file
//! changes.

mod config;
mod eval;
mod glob;
mod reload;
#[cfg(test)]
mod tests;

pub use config::{Condition, Direction, FeatureSet, Kind, Op, Rule};
pub use eval::{evaluate, evaluate_shared, RuleCache, RuleState};
pub use glob::Pattern;
pub use reload::RulesHandle;

use crate::config::ConfigError;
use crate::event::{Name, Severity};
use std::path::Path;

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
    /// Calls `f` with every feature name and its current value. Rules with patterns use this on every
    /// reading; the default collects [`Readings::feature_names`], so implementors on the hot path should
    /// override it with an allocation-free loop.
    fn for_each_value<'a>(&'a self, f: &mut dyn FnMut(&'a str, f64)) {
        for name in self.feature_names() {
            if let Some(v) = self.value(name) {
                f(name, v)
            }
        }
    }
    /// Slot-addressed access for hot-path implementors: an id that changes whenever the feature layout
    /// (the names and their order) changes, and the names by slot. When given, [`evaluate`] resolves each
    /// rule's features to slots once per layout and reads them with [`Readings::value_at`],
    /// [`Readings::name_at`] and [`Readings::previous_at`] instead of looking names up per reading.
    fn layout(&self) -> Option<(u64, &[Name])> {
        None
    }
    /// The current value in `slot` of the layout (NaN when there is none).
    fn value_at(&self, _slot: usize) -> f64 {
        f64::NAN
    }
    /// The feature name of `slot`.
    fn name_at(&self, _slot: usize) -> &str {
        ""
    }
    /// [`Readings::previous`] by slot.
    fn previous_at(&self, _slot: usize) -> Option<(f64, i64)> {
        None
    }
}

/// A validated set of rules.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    /// Where the rules came from (file path or `<api>`), for messages.
    pub source: String,
    /// The YAML text the rules were parsed from (served back by `GET /rules`).
    pub text: String,
    /// The rules in file order.
    pub rules: Vec<Rule>,
    /// Stamped by [`RulesHandle`] when it installs the set (0 for a set that was never installed);
    /// [`evaluate`] resets a [`RuleState`] whose generation differs.
    pub generation: u64,
}

impl RuleSet {
    /// No rules.
    pub fn empty() -> Self {
        RuleSet::default()
    }

    /// Reads and validates a rules file.
    pub fn load(path: &Path) -> Result<RuleSet, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        RuleSet::parse(&text, &file)
    }

    /// Validates rules from YAML text; `file` names the source in errors (`file:line:col: rules[i].field:
    /// message`).
    pub fn parse(text: &str, file: &str) -> Result<RuleSet, ConfigError> {
        let rules = config::parse_rules(text, file)?;
        Ok(RuleSet {
            source: file.to_string(),
            text: text.to_string(),
            rules,
            generation: 0,
        })
    }

    /// Number of rules (enabled or not).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
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
