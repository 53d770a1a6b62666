//! EgizCore `StateChanged` features: numeric leaves under `features.<feature>.properties.<path...>`
//! streamed into `(Name, f64)` pairs, named per [`EgizCoreMapping`].
//!
//! Streaming (rather than going through `serde_json::Value`) keeps the leaves in message order, which
//! `Value`'s sorted map would lose.

use super::scan::{non_object_shapes, upsert, NameKey, Shape};
use crate::config::EgizCoreMapping;
use crate::event::Name;
use rustc_hash::FxHashMap;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// [`EgizCoreMapping`] prepared for lookups.
///
/// Rename precedence: a dotted full-path key (exact, then `path.N...` array elements), then an exact
/// flattened name, then `x` matching `x_N...` (N a digit; the longest such `x` wins). Array elements in a
/// dotted path are written with their 1-based index: `features.thermal.properties.temperature_zones.2`.
/// With `keep_feature_prefix`, the flattened name that rules match includes the feature prefix.
#[derive(Clone, Debug, Default)]
pub struct CompiledMapping {
    exact: FxHashMap<String, String>,
    prefix: Vec<(String, String)>,
    dotted: FxHashMap<String, String>,
    dotted_prefix: Vec<(String, String)>,
    keep_feature_prefix: bool,
}

impl CompiledMapping {
    pub fn new(m: &EgizCoreMapping) -> Self {
        let mut c = CompiledMapping {
            keep_feature_prefix: m.keep_feature_prefix,
            ..Default::default()
        };
        for (from, to) in &m.rename {
            if from.contains('.') {
                c.dotted.insert(from.clone(), to.clone());
                c.dotted_prefix.push((from.clone(), to.clone()));
            } else {
                c.exact.insert(from.clone(), to.clone());
                c.prefix.push((from.clone(), to.clone()));
            }
        }
        c.prefix.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        c.dotted_prefix
            .sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        c
    }

    /// The feature name of a leaf whose flattened name is `flat` and full dotted path is `dotted`.
    pub fn name_of(&self, flat: &str, dotted: &str) -> Name {
        if let Some(to) = self.dotted.get(dotted) {
            return Name::from(to.as_str());
        }
        for (from, to) in &self.dotted_prefix {
            if let Some(rest) = indexed_suffix(dotted, from, b'.') {
                let mut n = Name::from(to.as_str());
                for c in rest.chars() {
                    n.push(if c == '.' { '_' } else { c });
                }
                return n;
            }
        }
        if let Some(to) = self.exact.get(flat) {
            return Name::from(to.as_str());
        }
        for (from, to) in &self.prefix {
            if let Some(rest) = indexed_suffix(flat, from, b'_') {
                let mut n = Name::from(to.as_str());
                n.push_str(rest);
                return n;
            }
        }
        Name::from(flat)
    }
}

/// When `s` is `prefix` + `sep` + a digit + anything, the part from `sep` on.
fn indexed_suffix<'s>(s: &'s str, prefix: &str, sep: u8) -> Option<&'s str> {
    let rest = s.strip_prefix(prefix)?;
    let b = rest.as_bytes();
    (b.len() >= 2 && b[0] == sep && b[1].is_ascii_digit()).then_some(rest)
}

/// Reads `features`: an object of features, each possibly with `properties`.
pub(crate) struct FeaturesSeed<'a> {
    pub(crate) out: &'a mut Vec<(Name, f64)>,
    pub(crate) mapping: &'a CompiledMapping,
}

impl<'de> DeserializeSeed<'de> for FeaturesSeed<'_> {
    type Value = Shape;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FeaturesSeed<'_> {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of features")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut ctx = Ctx {
            out: self.out,
            mapping: self.mapping,
            feature: Name::default(),
            name: String::with_capacity(64),
            dotted: String::with_capacity(96),
        };
        while let Some(NameKey(feature)) = map.next_key()? {
            ctx.feature = feature;
            map.next_value_seed(FeatureSeed { ctx: &mut ctx })?;
        }
        Ok(Shape::Object)
    }
    non_object_shapes!();
}

struct Ctx<'a> {
    out: &'a mut Vec<(Name, f64)>,
    mapping: &'a CompiledMapping,
    feature: Name,
    /// Flattened name of the current node (`voltage_a`, or `electrical_voltage_a` with the prefix).
    name: String,
    /// Full dotted path of the current node (`features.electrical.properties.voltage.a`).
    dotted: String,
}

impl Ctx<'_> {
    fn leaf(&mut self, v: f64) {
        let flat = if self.name.is_empty() {
            // `properties` itself is a number: name it after its feature.
            self.feature.as_str()
        } else {
            self.name.as_str()
        };
        let name = self.mapping.name_of(flat, &self.dotted);
        upsert(self.out, name, v);
    }

    fn push_segment(&mut self, seg: &str) {
        if !self.name.is_empty() {
            self.name.push('_');
        }
        self.name.push_str(seg);
        self.dotted.push('.');
        self.dotted.push_str(seg);
    }
}

/// One feature object: only its `properties` are read.
struct FeatureSeed<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
}

impl<'de> DeserializeSeed<'de> for FeatureSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FeatureSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a feature object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(NameKey(key)) = map.next_key()? {
            if key == "properties" {
                let ctx = &mut *self.ctx;
                ctx.name.clear();
                if ctx.mapping.keep_feature_prefix {
                    ctx.name.push_str(&ctx.feature);
                }
                ctx.dotted.clear();
                ctx.dotted.push_str("features.");
                ctx.dotted.push_str(&ctx.feature);
                ctx.dotted.push_str(".properties");
                map.next_value_seed(NodeSeed { ctx })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

/// A node under `properties`: numbers are leaves, objects and arrays recurse (serde_json's recursion
/// limit bounds the depth), strings, booleans and nulls are ignored — EgizCore carries status strings.
struct NodeSeed<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a property value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(NameKey(key)) = map.next_key()? {
            let (nl, dl) = (self.ctx.name.len(), self.ctx.dotted.len());
            self.ctx.push_segment(&key);
            map.next_value_seed(NodeSeed {
                ctx: &mut *self.ctx,
            })?;
            self.ctx.name.truncate(nl);
            self.ctx.dotted.truncate(dl);
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 1u64;
        loop {
            let (nl, dl) = (self.ctx.name.len(), self.ctx.dotted.len());
            self.ctx.push_segment(&itoa_buf(i));
            let more = seq
                .next_element_seed(NodeSeed {
                    ctx: &mut *self.ctx,
                })?
                .is_some();
            self.ctx.name.truncate(nl);
            self.ctx.dotted.truncate(dl);
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.ctx.leaf(v as f64);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.ctx.leaf(v as f64);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.ctx.leaf(v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

fn itoa_buf(i: u64) -> Name {
    use std::fmt::Write;
    let mut n = Name::default();
    let _ = write!(n, "{i}");
    n
}
