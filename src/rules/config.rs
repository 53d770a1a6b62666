//! The rules file format, its validation and the compiled rules.
//!
//! Parsing is two-phase. serde checks the shape (unknown fields, types, enum values) and reports the exact
//! line and field itself. The checks serde cannot express (fields required by a kind, `min < max`, unique
//! names, finite numbers) run on the parsed rules; their errors name `rules[i].field`, and the line is
//! found by re-reading the text with a deserializer that stops at that rule's field (see [`locate`]), so
//! the line is right whatever the YAML style (flow mappings, anchors, comments).

use super::glob::Pattern;
use crate::config::{parse_yaml, ConfigError};
use crate::event::{Name, Severity};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;

/// The top level of a rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// The rules, evaluated in file order.
    #[serde(default)]
    rules: Option<Vec<RawRule>>,
}

/// Comparison operator of `threshold` and `compare` rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Op {
    #[serde(rename = ">", alias = "gt")]
    Gt,
    #[serde(rename = ">=", alias = "ge")]
    Ge,
    #[serde(rename = "<", alias = "lt")]
    Lt,
    #[serde(rename = "<=", alias = "le")]
    Le,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }

    /// `x op limit`.
    #[inline]
    pub fn holds(self, x: f64, limit: f64) -> bool {
        match self {
            Op::Gt => x > limit,
            Op::Ge => x >= limit,
            Op::Lt => x < limit,
            Op::Le => x <= limit,
        }
    }

    /// True for `>`/`>=`: the condition is about a value being too high.
    pub fn is_upper(self) -> bool {
        matches!(self, Op::Gt | Op::Ge)
    }
}

/// Which changes a `rate_of_change` rule looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Rising faster than `max_per_s`.
    Up,
    /// Falling faster than `max_per_s`.
    Down,
    /// Either way.
    #[default]
    Both,
}

/// The rule kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Threshold,
    Range,
    RateOfChange,
    Spread,
    Imbalance,
    Compare,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Threshold => "threshold",
            Kind::Range => "range",
            Kind::RateOfChange => "rate_of_change",
            Kind::Spread => "spread",
            Kind::Imbalance => "imbalance",
            Kind::Compare => "compare",
        }
    }

    /// (required fields, optional fields) specific to the kind.
    fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Kind::Threshold => (&["feature", "op", "value"], &[]),
            Kind::Range => (&["feature", "min", "max"], &[]),
            Kind::RateOfChange => (&["feature", "max_per_s"], &["direction"]),
            Kind::Spread => (&["features", "max"], &[]),
            Kind::Imbalance => (&["features", "max_pct"], &["min_mean"]),
            Kind::Compare => (&["left", "op", "right"], &["offset"]),
        }
    }
}

/// A string or a list of strings.
#[derive(Debug)]
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// One rule as written. Kind-specific fields are optional here and checked per kind in [`compile`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "type")]
    alert_type: Option<String>,
    severity: Option<Severity>,
    equipment: Option<OneOrMany>,
    kind: Kind,
    #[serde(rename = "for")]
    for_samples: Option<u32>,
    enabled: Option<bool>,
    description: Option<String>,
    feature: Option<String>,
    features: Option<OneOrMany>,
    op: Option<Op>,
    value: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    max_per_s: Option<f64>,
    direction: Option<Direction>,
    max_pct: Option<f64>,
    min_mean: Option<f64>,
    left: Option<String>,
    right: Option<String>,
    offset: Option<f64>,
}

impl RawRule {
    /// Whether a kind-specific field is present.
    fn has(&self, field: &str) -> bool {
        match field {
            "feature" => self.feature.is_some(),
            "features" => self.features.is_some(),
            "op" => self.op.is_some(),
            "value" => self.value.is_some(),
            "min" => self.min.is_some(),
            "max" => self.max.is_some(),
            "max_per_s" => self.max_per_s.is_some(),
            "direction" => self.direction.is_some(),
            "max_pct" => self.max_pct.is_some(),
            "min_mean" => self.min_mean.is_some(),
            "left" => self.left.is_some(),
            "right" => self.right.is_some(),
            "offset" => self.offset.is_some(),
            _ => false,
        }
    }
}

const KIND_FIELDS: &[&str] = &[
    "feature",
    "features",
    "op",
    "value",
    "min",
    "max",
    "max_per_s",
    "direction",
    "max_pct",
    "min_mean",
    "left",
    "right",
    "offset",
];

/// The features of a `spread`/`imbalance` rule: names and globs, each reading feature counted once.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSet {
    pub patterns: Vec<Pattern>,
    /// Number of literal (non-glob) names; all of them must be present for the rule to apply.
    pub literals: usize,
}

impl FeatureSet {
    pub fn has_glob(&self) -> bool {
        self.literals < self.patterns.len()
    }
}

/// What a rule checks.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// `feature op value`; with a glob, fires when any matching feature satisfies it.
    Threshold {
        feature: Pattern,
        op: Op,
        value: f64,
    },
    /// Fires when `feature` is outside `[min, max]` (the bounds themselves are in range).
    Range {
        feature: Pattern,
        min: f64,
        max: f64,
    },
    /// Fires when |d feature / dt| in units per second against the previous reading exceeds `max_per_s`.
    RateOfChange {
        feature: Pattern,
        max_per_s: f64,
        direction: Direction,
    },
    /// Fires when max - min over `features` exceeds `max`.
    Spread { features: FeatureSet, max: f64 },
    /// Fires when (max - min) / mean * 100 over `features` exceeds `max_pct` (and mean > `min_mean`).
    Imbalance {
        features: FeatureSet,
        max_pct: f64,
        min_mean: f64,
    },
    /// Fires when `left op right + offset`.
    Compare {
        left: Name,
        op: Op,
        right: Name,
        offset: f64,
    },
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Alert type of its alerts (defaults to the name).
    pub alert_type: String,
    pub severity: Severity,
    /// Equipment types it applies to; empty means all.
    pub equipment: Vec<Name>,
    pub condition: Condition,
    /// Consecutive readings the condition must hold before the rule fires (>= 1).
    pub for_samples: u32,
    pub enabled: bool,
    pub description: Option<String>,
}

impl Rule {
    /// Whether the rule applies to things of `equipment_type`.
    pub fn applies_to(&self, equipment_type: &str) -> bool {
        self.equipment.is_empty() || self.equipment.iter().any(|e| e == equipment_type)
    }
}

/// A validation error before its line is known.
struct Bad {
    index: usize,
    /// The field at fault; `None` points at the rule itself.
    field: Option<&'static str>,
    message: String,
}

/// Parses and validates a rules file.
pub(crate) fn parse_rules(text: &str, file: &str) -> Result<Vec<Rule>, ConfigError> {
    // An empty file (or one with only comments) is an empty rule set, not an error.
    let raw: RawFile = if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        RawFile { rules: None }
    } else {
        parse_yaml(text, file)?
    };
    let raw = raw.rules.unwrap_or_default();
    let mut rules = Vec::with_capacity(raw.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, r) in raw.iter().enumerate() {
        let result = compile(index, r).and_then(|rule| {
            if let Some(&first) = seen.get(r.name.as_str()) {
                let (line, _) = locate(text, first, None).unwrap_or((0, 0));
                return Err(Bad {
                    index,
                    field: Some("name"),
                    message: format!(
                        "duplicate rule name `{}` (first used by rules[{first}] at line {line})",
                        r.name
                    ),
                });
            }
            seen.insert(r.name.as_str(), index);
            Ok(rule)
        });
        match result {
            Ok(rule) => rules.push(rule),
            Err(bad) => {
                let (line, column) = locate(text, bad.index, bad.field)
                    .or_else(|| locate(text, bad.index, None))
                    .unwrap_or((0, 0));
                let path = match bad.field {
                    Some(f) => format!("rules[{}].{f}", bad.index),
                    None => format!("rules[{}]", bad.index),
                };
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    line,
                    column,
                    message: format!("{path}: {}", bad.message),
                });
            }
        }
    }
    Ok(rules)
}

fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "`{s}` may only contain letters, digits, `_`, `-` and `.` (found {c:?})"
        ));
    }
    Ok(())
}

fn compile(index: usize, r: &RawRule) -> Result<Rule, Bad> {
    let bad = |field: Option<&'static str>, message: String| Bad {
        index,
        field,
        message,
    };
    check_name(&r.name).map_err(|m| bad(Some("name"), m))?;
    let alert_type = match &r.alert_type {
        Some(t) => {
            check_name(t).map_err(|m| bad(Some("type"), m))?;
            t.clone()
        }
        None => r.name.clone(),
    };

    let (required, optional) = r.kind.fields();
    for &f in KIND_FIELDS {
        if r.has(f) && !required.contains(&f) && !optional.contains(&f) {
            let mut allowed: Vec<&str> = required.to_vec();
            allowed.extend_from_slice(optional);
            return Err(bad(
                Some(f),
                format!(
                    "field `{f}` does not apply to kind `{}` (its fields: {})",
                    r.kind.as_str(),
                    allowed.join(", ")
                ),
            ));
        }
    }
    if let Some(f) = required.iter().find(|f| !r.has(f)) {
        return Err(bad(
            None,
            format!(
                "missing field `{f}` (required by kind `{}`)",
                r.kind.as_str()
            ),
        ));
    }

    // Every number must be finite: YAML accepts `.nan` and `.inf`, which would make a rule never (or
    // always) fire without any error.
    for (f, v) in [
        ("value", r.value),
        ("min", r.min),
        ("max", r.max),
        ("max_per_s", r.max_per_s),
        ("max_pct", r.max_pct),
        ("min_mean", r.min_mean),
        ("offset", r.offset),
    ] {
        if let Some(v) = v {
            if !v.is_finite() {
                return Err(bad(Some(f), format!("must be a finite number, got {v}")));
            }
        }
    }

    let for_samples = r.for_samples.unwrap_or(1);
    if for_samples < 1 {
        return Err(bad(
            Some("for"),
            "must be >= 1 (consecutive samples)".into(),
        ));
    }

    let mut equipment = Vec::new();
    if let Some(OneOrMany(list)) = &r.equipment {
        if list.is_empty() {
            return Err(bad(
                Some("equipment"),
                "must not be an empty list (omit it or use \"*\" for all equipment)".into(),
            ));
        }
        for e in list {
            if e == "*" {
                equipment.clear();
                break;
            }
            if e.trim().is_empty() {
                return Err(bad(
                    Some("equipment"),
                    "equipment type must not be empty".into(),
                ));
            }
            equipment.push(Name::new(e));
        }
    }

    let pattern = |field: &'static str, s: &str| Pattern::new(s).map_err(|m| bad(Some(field), m));
    let positive = |field: &'static str, v: f64| {
        if v > 0.0 {
            Ok(v)
        } else {
            Err(bad(Some(field), format!("must be > 0, got {v}")))
        }
    };
    let non_negative = |field: &'static str, v: f64| {
        if v >= 0.0 {
            Ok(v)
        } else {
            Err(bad(Some(field), format!("must be >= 0, got {v}")))
        }
    };
    let feature_set = |list: &OneOrMany| -> Result<FeatureSet, Bad> {
        let mut literal = Vec::new();
        let mut globs = Vec::new();
        for s in &list.0 {
            let p = pattern("features", s)?;
            if literal
                .iter()
                .chain(globs.iter())
                .any(|q: &Pattern| q == &p)
            {
                return Err(bad(Some("features"), format!("`{s}` is listed twice")));
            }
            if p.is_glob() {
                globs.push(p);
            } else {
                literal.push(p);
            }
        }
        // A glob may match many features at run time; plain names must already make two.
        if globs.is_empty() && literal.len() < 2 {
            return Err(bad(
                Some("features"),
                format!(
                    "needs at least 2 features (or a pattern such as `temp_zone_*`), got {}",
                    literal.len()
                ),
            ));
        }
        let literals = literal.len();
        literal.extend(globs);
        Ok(FeatureSet {
            patterns: literal,
            literals,
        })
    };

    // `unwrap_or_default` below never applies: the required fields were checked above.
    let condition = match r.kind {
        Kind::Threshold => Condition::Threshold {
            feature: pattern("feature", r.feature.as_deref().unwrap_or_default())?,
            op: r.op.unwrap_or(Op::Gt),
            value: r.value.unwrap_or_default(),
        },
        Kind::Range => {
            let (min, max) = (r.min.unwrap_or_default(), r.max.unwrap_or_default());
            if min >= max {
                return Err(bad(
                    Some("max"),
                    format!("must be greater than `min` ({min}), got {max}"),
                ));
            }
            Condition::Range {
                feature: pattern("feature", r.feature.as_deref().unwrap_or_default())?,
                min,
                max,
            }
        }
        Kind::RateOfChange => Condition::RateOfChange {
            feature: pattern("feature", r.feature.as_deref().unwrap_or_default())?,
            max_per_s: positive("max_per_s", r.max_per_s.unwrap_or_default())?,
            direction: r.direction.unwrap_or_default(),
        },
        Kind::Spread => Condition::Spread {
            features: feature_set(r.features.as_ref().unwrap_or(&OneOrMany(Vec::new())))?,
            max: non_negative("max", r.max.unwrap_or_default())?,
        },
        Kind::Imbalance => Condition::Imbalance {
            features: feature_set(r.features.as_ref().unwrap_or(&OneOrMany(Vec::new())))?,
            max_pct: positive("max_pct", r.max_pct.unwrap_or_default())?,
            min_mean: non_negative("min_mean", r.min_mean.unwrap_or(0.0))?,
        },
        Kind::Compare => {
            let left = r.left.as_deref().unwrap_or_default();
            let right = r.right.as_deref().unwrap_or_default();
            for (f, s) in [("left", left), ("right", right)] {
                if pattern(f, s)?.is_glob() {
                    return Err(bad(
                        Some(f),
                        format!("must name one feature, not a pattern (`{s}`)"),
                    ));
                }
            }
            if left == right {
                return Err(bad(
                    Some("right"),
                    format!("must differ from `left` (both are `{left}`)"),
                ));
            }
            Condition::Compare {
                left: Name::new(left),
                op: r.op.unwrap_or(Op::Gt),
                right: Name::new(right),
                offset: r.offset.unwrap_or(0.0),
            }
        }
    };

    Ok(Rule {
        name: r.name.clone(),
        alert_type,
        severity: r.severity.unwrap_or_default(),
        equipment,
        condition,
        for_samples,
        enabled: r.enabled.unwrap_or(true),
        description: r.description.clone(),
    })
}

/// Line and column (1-based) of `rules[index]` or of its `field`'s value.
///
/// serde_norway stamps an error with the position of the node being deserialised when the error is
/// raised, so a deserializer that fails on purpose exactly there reveals the node's position.
pub(crate) fn locate(text: &str, index: usize, field: Option<&str>) -> Option<(usize, usize)> {
    const HERE: &str = "\u{0}here";
    let de = serde_norway::Deserializer::from_str(text);
    match (TopSeed { index, field }).deserialize(de) {
        Ok(()) => None,
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        Err(_) => None,
    }
}

struct TopSeed<'f> {
    index: usize,
    field: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a rules file")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "rules" {
                map.next_value_seed(ListSeed {
                    index: self.index,
                    field: self.field,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct ListSeed<'f> {
    index: usize,
    field: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of rules")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            if i == self.index {
                seq.next_element_seed(RuleSeed { field: self.field })?;
                return Ok(());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

struct RuleSeed<'f> {
    field: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for RuleSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RuleSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a rule")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some(field) = self.field {
            while let Some(key) = map.next_key::<String>()? {
                if key == field {
                    map.next_value_seed(FailSeed)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // The field was not found (or none was asked for): point at the rule.
        Err(de::Error::custom("\u{0}here"))
    }
}

/// Fails on whatever value it is given, at that value's position.
struct FailSeed;

impl<'de> DeserializeSeed<'de> for FailSeed {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(FailSeed)
    }
}

impl<'de> Visitor<'de> for FailSeed {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\u{0}here")
    }
}
