//! The records that flow through the dataflow: decoded telemetry points, alerts and per-point scores.
//!
//! The JSON shapes of [`Alert`] and [`ScoreLine`] are wire contracts (see DESIGN.md): extend them, never
//! rename or remove a field.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A short string stored inline (up to 24 bytes) so thing ids and feature names need no heap allocation.
pub type Name = CompactString;

/// Whether two short byte strings (sensor names, thing ids) are equal, without a call to `memcmp`:
/// the hot path compares every reading's sensor names with the ones it saw before, and names are a
/// few to a few tens of bytes, where the call and its length dispatch cost more than the compare.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or([0; 8]));
    let half = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap_or([0; 4]));
    match n {
        // Two loads that overlap in the middle cover every byte.
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        0 => true,
        _ => a == b,
    }
}

/// Where a record came from, so an alert can point back at the exact input that caused it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Origin {
    /// No provenance (simulator, tests).
    #[default]
    None,
    /// Line `line` (1-based) of a replayed file.
    Line { line: u64 },
    /// A Kafka message.
    Kafka {
        /// A [`Name`]: a usual topic name is kept inline, not allocated per message.
        topic: Name,
        partition: i32,
        offset: i64,
    },
}

impl Origin {
    pub fn is_none(&self) -> bool {
        matches!(self, Origin::None)
    }
}

/// One decoded telemetry reading: all sensor values of one thing at one event time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub thing_id: Name,
    pub equipment_type: Name,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// Sensor values by feature name, in message order. Values are finite.
    pub values: Vec<(Name, f64)>,
    /// Optional ground truth (0/1), carried to scores for evaluation, never used for detection.
    pub label: Option<u8>,
    /// Position in the input: orders records deterministically within a dataflow epoch.
    pub seq: u64,
    pub origin: Origin,
    /// Re-read only to rebuild per-thing state (e.g. a Kafka warm start after a restart): the engine
    /// processes it fully, including the alert policy's windows, but emits nothing for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learn_only: bool,
}

impl Point {
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| *v)
    }
}

/// Alert severity, ordered from least to most severe.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity `{other}`, expected info, warning or critical"
            )),
        }
    }
}

/// Sensor families that alerts are explained in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Voltage,
    Current,
    Power,
    Temperature,
    Vibration,
    Speed,
    Other,
}

impl Family {
    pub const ALL: [Family; 7] = [
        Family::Voltage,
        Family::Current,
        Family::Power,
        Family::Temperature,
        Family::Vibration,
        Family::Speed,
        Family::Other,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Family::Voltage => "voltage",
            Family::Current => "current",
            Family::Power => "power",
            Family::Temperature => "temperature",
            Family::Vibration => "vibration",
            Family::Speed => "speed",
            Family::Other => "other",
        }
    }

    /// The family of a feature, from its name (`voltage_a`, `current_imbalance_pct`, `temp_zone_2`, ...).
    pub fn of(feature: &str) -> Family {
        let f = feature.to_ascii_lowercase();
        let starts = |p: &str| f.starts_with(p);
        if starts("volt") {
            Family::Voltage
        } else if starts("current") || starts("amp") {
            Family::Current
        } else if starts("power") || starts("pf") || starts("energy") || starts("kw") {
            Family::Power
        } else if starts("temp") || starts("thermo") {
            Family::Temperature
        } else if starts("vib") || starts("accel") || starts("bearing") {
            Family::Vibration
        } else if starts("speed") || starts("rpm") || starts("rate") || starts("flow") {
            Family::Speed
        } else {
            Family::Other
        }
    }
}

/// One feature's share of an alert's explanation. `contribution` is signed: positive when the value is
/// above what is expected, negative when below; the absolute values of an alert's features sum to 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureContribution {
    pub feature: Name,
    pub contribution: f64,
}

/// An alert, as written to every sink (Kafka value, JSONL, store, API). See DESIGN.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable hash of thing, type and triggering event time: the same input gives the same id.
    pub alert_id: String,
    pub thing_id: Name,
    pub equipment_type: Name,
    /// Event time of the reading that triggered the alert, epoch ms.
    pub ts: i64,
    pub severity: Severity,
    /// `rule`, `ensemble` or `burst`.
    pub source: String,
    /// `phase_imbalance`, `overheat`, `voltage_anomaly`, ... (rule alerts use the rule's type).
    #[serde(rename = "type")]
    pub alert_type: String,
    /// Normalised score in [0, 1].
    pub score: f64,
    pub model_version: String,
    pub top_features: Vec<FeatureContribution>,
    /// Share of the explanation per sensor family; shares sum to 1.
    pub families: std::collections::BTreeMap<String, f64>,
    pub explanation: String,
    #[serde(default, skip_serializing_if = "Origin::is_none")]
    pub input_offsets: Origin,
    /// Ground-truth label of the triggering point, when the input had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<u8>,
    /// Each detector's own attribution behind an ensemble alert (`top_features` above is the ensemble's
    /// combined explanation); absent for other sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<DetectorAttribution>,
}

/// One detector's view of an ensemble alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorAttribution {
    /// `statistics`, `online_mahalanobis`, `isolation_forest` or `autoencoder`.
    pub detector: String,
    /// The model version, for a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The detector's normalised score in [0, 1] (0.8 at its threshold).
    pub score: f64,
    /// Its largest per-feature contributions in its own units: z-scores for the statistics, exact
    /// TreeSHAP values (negated expected path length: positive = more isolated) for an Isolation
    /// Forest, squared standardised reconstruction errors for an autoencoder, per-feature terms of T^2
    /// for the online model. Empty when the model's explanation is off (`models.explain: false`).
    pub top_features: Vec<FeatureContribution>,
    /// The operating regime the online model scored the reading in (dataflows with
    /// `detectors.regimes`, once the thing's regimes are fitted and the reading has settled in one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regime: Option<RegimeAttribution>,
}

/// The operating regime (production phase) behind an online model's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegimeAttribution {
    /// The regime, 1..=`count`; regimes are numbered by their centre (first `by` feature ascending).
    pub id: usize,
    /// The thing's number of regimes.
    pub count: usize,
    /// The regime's centre: the current mean of each regime feature (`detectors.regimes.by`).
    pub centre: std::collections::BTreeMap<String, f64>,
    /// The reading's distance from the regime, normalised like a detector score (0.8 at the model's
    /// threshold): high when the reading is far from every learned regime.
    pub distance_score: f64,
    /// The reading's score within the regime (the regime's own model), normalised.
    pub within_score: f64,
}

/// Per-point score line (`replay --scores`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreLine {
    pub thing_id: Name,
    pub ts: i64,
    pub score: f64,
    pub anomaly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<u8>,
    /// The registry model that scored the reading (dataflows with a `models` section), and its
    /// normalised score (0.8 at the model's threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_score: Option<f64>,
}

/// Stable alert id: xxh3-128 of thing, type and event time, hex encoded.
pub fn alert_id(thing_id: &str, alert_type: &str, ts: i64) -> String {
    let mut buf = Vec::with_capacity(thing_id.len() + alert_type.len() + 24);
    buf.extend_from_slice(thing_id.as_bytes());
    buf.push(0);
    buf.extend_from_slice(alert_type.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&ts.to_le_bytes());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_agrees_with_slice_equality() {
        // Every length up to past the word-wide cases, equal and differing at each position.
        for n in 0..40usize {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_bytes(&a, &a.clone()), "equal, length {n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same_bytes(&a, &b), "length {n}, differs at {at}");
            }
            let mut longer = a.clone();
            longer.push(b'z');
            assert!(!same_bytes(&a, &longer), "lengths {n} and {}", n + 1);
        }
    }

    #[test]
    fn families_from_names() {
        assert_eq!(Family::of("voltage_a"), Family::Voltage);
        assert_eq!(Family::of("voltage_imbalance"), Family::Voltage);
        assert_eq!(Family::of("current_imbalance_pct"), Family::Current);
        assert_eq!(Family::of("power_factor"), Family::Power);
        assert_eq!(Family::of("temp_zone_3"), Family::Temperature);
        assert_eq!(Family::of("vibration_rms"), Family::Vibration);
        assert_eq!(Family::of("speed_rpm"), Family::Speed);
        assert_eq!(Family::of("humidity"), Family::Other);
    }

    #[test]
    fn alert_id_is_stable_and_distinct() {
        let a = alert_id("oven-1", "overheat", 1_767_225_600_000);
        assert_eq!(a, alert_id("oven-1", "overheat", 1_767_225_600_000));
        assert_eq!(a.len(), 32);
        assert_ne!(a, alert_id("oven-1", "overheat", 1_767_225_600_001));
        assert_ne!(a, alert_id("oven-2", "overheat", 1_767_225_600_000));
    }
}
