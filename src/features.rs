//! Derived per-reading features: phase imbalances and zone spread.
//!
//! They are computed from the raw slots of a thing after every reading and then treated like any other
//! feature (rolling statistics, detectors, rules, explanations).

use crate::config::FeatureConfig;
use crate::event::Name;

/// max - min of `voltage_a/b/c`, volts.
pub const VOLTAGE_IMBALANCE: &str = "voltage_imbalance";
/// (max - min) / mean * 100 of `current_a/b/c`, percent.
pub const CURRENT_IMBALANCE: &str = "current_imbalance_pct";
/// max - min over `temp_zone_*`, degrees.
pub const ZONE_SPREAD: &str = "temp_zone_spread";

/// Which derived features a thing gets, and the raw slots they read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DerivedPlan {
    voltage: Option<[usize; 3]>,
    current: Option<[usize; 3]>,
    zones: Vec<usize>,
}

fn slot(names: &[Name], name: &str) -> Option<usize> {
    names.iter().position(|n| n.as_str() == name)
}

fn phases(names: &[Name], prefix: &str) -> Option<[usize; 3]> {
    Some([
        slot(names, &format!("{prefix}_a"))?,
        slot(names, &format!("{prefix}_b"))?,
        slot(names, &format!("{prefix}_c"))?,
    ])
}

impl DerivedPlan {
    /// Plans derived features for a thing whose raw features are `raw`; returns the plan and the names
    /// of the derived features, in the order [`DerivedPlan::compute`] writes them.
    pub fn new(raw: &[Name], cfg: &FeatureConfig) -> (DerivedPlan, Vec<Name>) {
        let mut names = Vec::new();
        let voltage = phases(raw, "voltage").filter(|_| cfg.voltage_imbalance);
        if voltage.is_some() {
            names.push(Name::from(VOLTAGE_IMBALANCE));
        }
        let current = phases(raw, "current").filter(|_| cfg.current_imbalance);
        if current.is_some() {
            names.push(Name::from(CURRENT_IMBALANCE));
        }
        let mut zones: Vec<usize> = Vec::new();
        if cfg.zone_spread {
            zones = raw
                .iter()
                .enumerate()
                .filter(|(_, n)| n.starts_with("temp_zone_") && n.as_str() != ZONE_SPREAD)
                .map(|(i, _)| i)
                .collect();
            if zones.len() >= 2 {
                names.push(Name::from(ZONE_SPREAD));
            } else {
                zones.clear();
            }
        }
        (
            DerivedPlan {
                voltage,
                current,
                zones,
            },
            names,
        )
    }

    /// Number of derived features.
    pub fn len(&self) -> usize {
        self.voltage.is_some() as usize
            + self.current.is_some() as usize
            + !self.zones.is_empty() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Computes the derived features from raw slot values into `out` (length [`DerivedPlan::len`]).
    pub fn compute(&self, raw: &[f64], out: &mut [f64]) {
        let mut i = 0;
        if let Some(v) = self.voltage {
            let (lo, hi) = min_max(v.iter().map(|&s| raw[s]));
            out[i] = hi - lo;
            i += 1;
        }
        if let Some(c) = self.current {
            let (lo, hi) = min_max(c.iter().map(|&s| raw[s]));
            let mean = c.iter().map(|&s| raw[s]).sum::<f64>() / 3.0;
            // An idle machine (no current) is balanced, not infinitely imbalanced.
            out[i] = if mean.abs() > 1e-9 {
                (hi - lo) / mean.abs() * 100.0
            } else {
                0.0
            };
            i += 1;
        }
        if !self.zones.is_empty() {
            let (lo, hi) = min_max(self.zones.iter().map(|&s| raw[s]));
            out[i] = hi - lo;
        }
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Name> {
        list.iter().map(|s| Name::from(*s)).collect()
    }

    #[test]
    fn derives_imbalances_and_spread() {
        let raw = names(&[
            "voltage_a",
            "voltage_b",
            "voltage_c",
            "current_a",
            "current_b",
            "current_c",
            "temp_zone_1",
            "temp_zone_2",
        ]);
        let (plan, derived) = DerivedPlan::new(&raw, &FeatureConfig::default());
        assert_eq!(
            derived,
            names(&[VOLTAGE_IMBALANCE, CURRENT_IMBALANCE, ZONE_SPREAD])
        );
        let mut out = vec![0.0; plan.len()];
        plan.compute(
            &[230.0, 226.0, 231.0, 10.0, 8.0, 12.0, 180.0, 195.5],
            &mut out,
        );
        assert!((out[0] - 5.0).abs() < 1e-12);
        assert!((out[1] - 40.0).abs() < 1e-12);
        assert!((out[2] - 15.5).abs() < 1e-12);
    }

    #[test]
    fn skips_incomplete_groups_and_idle_current() {
        let raw = names(&[
            "voltage_a",
            "voltage_b",
            "current_a",
            "current_b",
            "current_c",
            "temp_zone_1",
        ]);
        let (plan, derived) = DerivedPlan::new(&raw, &FeatureConfig::default());
        assert_eq!(derived, names(&[CURRENT_IMBALANCE]));
        let mut out = vec![1.0; 1];
        plan.compute(&[230.0, 230.0, 0.0, 0.0, 0.0, 20.0], &mut out);
        assert_eq!(out[0], 0.0);
    }
}
