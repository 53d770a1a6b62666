//! Alert explanations: top contributing features, sensor-family shares, and the alert type they imply.

use crate::event::{Family, FeatureContribution, Name};
use crate::features::{CURRENT_IMBALANCE, VOLTAGE_IMBALANCE, ZONE_SPREAD};
use std::collections::BTreeMap;

/// Features shown per alert.
pub const TOP_FEATURES: usize = 3;

/// Top features and family shares of one alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The largest contributions by absolute value, signed, as shares of the whole explanation.
    pub top_features: Vec<FeatureContribution>,
    /// Share per family over all features; sums to 1 (empty when nothing contributed).
    pub families: BTreeMap<String, f64>,
}

/// Builds an explanation from signed per-feature contributions of any scale.
pub fn explain<'a>(contributions: impl IntoIterator<Item = (&'a Name, f64)>) -> Explanation {
    let mut items: Vec<(&Name, f64)> = contributions
        .into_iter()
        .filter(|(_, c)| c.is_finite() && *c != 0.0)
        .collect();
    let total: f64 = items.iter().map(|(_, c)| c.abs()).sum();
    let mut families = BTreeMap::new();
    if total <= 0.0 {
        return Explanation {
            top_features: Vec::new(),
            families,
        };
    }
    for (name, c) in &items {
        *families
            .entry(Family::of(name).as_str().to_string())
            .or_insert(0.0) += c.abs() / total;
    }
    // Ties break by name so explanations are deterministic.
    items.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(b.0)));
    let top_features = items
        .iter()
        .take(TOP_FEATURES)
        .map(|(name, c)| FeatureContribution {
            feature: (*name).clone(),
            contribution: round4(c / total),
        })
        .collect();
    for share in families.values_mut() {
        *share = round4(*share);
    }
    Explanation {
        top_features,
        families,
    }
}

/// The [`TOP_FEATURES`] largest raw contributions by absolute value, in the detector's own units (a
/// z-score, a SHAP value, a squared error), rounded to 4 decimals; ties break by name.
pub fn top_contributions<'a>(
    contributions: impl IntoIterator<Item = (&'a Name, f64)>,
) -> Vec<FeatureContribution> {
    let mut items: Vec<(&Name, f64)> = contributions
        .into_iter()
        .filter(|(_, c)| c.is_finite() && *c != 0.0)
        .collect();
    items.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(b.0)));
    items
        .into_iter()
        .take(TOP_FEATURES)
        .map(|(name, c)| FeatureContribution {
            feature: name.clone(),
            contribution: round4(c),
        })
        .collect()
}

/// Rounds to 4 decimals: explanations are read by people, and fixed precision keeps outputs stable.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The alert type an ensemble anomaly gets from its leading feature.
pub fn alert_type_for(feature: &str) -> &'static str {
    if feature == CURRENT_IMBALANCE || feature == VOLTAGE_IMBALANCE {
        return "phase_imbalance";
    }
    if feature == ZONE_SPREAD {
        return "zone_spread";
    }
    if feature.starts_with("power_factor") || feature == "pf" {
        return "power_factor_degradation";
    }
    match Family::of(feature) {
        Family::Voltage => "voltage_anomaly",
        Family::Current => "current_anomaly",
        Family::Power => "power_anomaly",
        Family::Temperature => "temperature_anomaly",
        Family::Vibration => "vibration_anomaly",
        Family::Speed => "speed_anomaly",
        Family::Other => "multivariate_anomaly",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_order() {
        let names: Vec<Name> = ["current_b", "voltage_a", "temp_zone_1", "current_a"]
            .iter()
            .map(|s| Name::from(*s))
            .collect();
        let e = explain(names.iter().zip([-4.0, 2.0, 1.0, 1.0]));
        let top: Vec<(&str, f64)> = e
            .top_features
            .iter()
            .map(|f| (f.feature.as_str(), f.contribution))
            .collect();
        assert_eq!(
            top,
            vec![
                ("current_b", -0.5),
                ("voltage_a", 0.25),
                ("current_a", 0.125)
            ]
        );
        assert_eq!(e.families["current"], 0.625);
        assert_eq!(e.families["voltage"], 0.25);
        assert_eq!(e.families["temperature"], 0.125);
        assert!((e.families.values().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn empty_when_nothing_contributes() {
        let n = Name::from("x");
        let e = explain([(&n, 0.0), (&n, f64::NAN)]);
        assert!(e.top_features.is_empty() && e.families.is_empty());
    }

    #[test]
    fn types_from_features() {
        assert_eq!(alert_type_for("current_imbalance_pct"), "phase_imbalance");
        assert_eq!(alert_type_for("power_factor"), "power_factor_degradation");
        assert_eq!(alert_type_for("temp_zone_2"), "temperature_anomaly");
        assert_eq!(alert_type_for("vibration_rms"), "vibration_anomaly");
        assert_eq!(alert_type_for("voltage_c"), "voltage_anomaly");
    }
}
