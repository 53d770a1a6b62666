//! The single pass over a message: one serde visitor reads the top-level object, keeps what both formats
//! need, streams `values` (flat) and `features` (EgizCore) straight into vectors, and skips the rest
//! without building a `serde_json::Value`. Problems found inside values are recorded, not returned as
//! serde errors, so every serde error means the JSON itself is bad.

use super::egizcore::{CompiledMapping, FeaturesSeed};
use super::flat::ValuesSeed;
use crate::event::Name;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A JSON number as serde_json reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::U(v) => v as f64,
            Num::I(v) => v as f64,
            Num::F(v) => v,
        }
    }
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::U(v) => write!(f, "{v}"),
            Num::I(v) => write!(f, "{v}"),
            Num::F(v) => write!(f, "{v}"),
        }
    }
}

/// Any JSON value, keeping scalars and only the kind of containers (which are skipped unparsed).
/// Strings borrow from the input unless they contain escapes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar<'de> {
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'de, str>),
    Array,
    Object,
}

impl Scalar<'_> {
    /// "a string", "an array", ... for error details.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Num(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Array => "an array",
            Scalar::Object => "an object",
        }
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(Num::U(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(Num::I(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(Num::F(v)))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// A map key as a [`Name`] (inline up to 24 bytes, so no allocation for ordinary sensor names).
pub(crate) struct NameKey(pub(crate) Name);

impl<'de> de::Deserialize<'de> for NameKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NameKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E>(self, v: &str) -> Result<NameKey, E> {
                Ok(NameKey(Name::from(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Top-level keys that either format uses; everything else is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    ThingId,
    EquipmentType,
    Ts,
    Timestamp,
    Values,
    Label,
    Event,
    Features,
    Other,
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(Field::of_key(v))
            }
        }
        d.deserialize_identifier(V)
    }
}

impl Field {
    /// The field a top-level key names.
    #[inline]
    pub(crate) fn of_key(v: &str) -> Field {
        Field::of_key_bytes(v.as_bytes())
    }

    /// [`Field::of_key`] of a key's bytes (no UTF-8 check needed: the names are ASCII).
    #[inline]
    pub(crate) fn of_key_bytes(v: &[u8]) -> Field {
        match v {
            b"thing_id" | b"thingId" => Field::ThingId,
            b"equipment_type" | b"equipmentType" => Field::EquipmentType,
            b"ts" => Field::Ts,
            b"timestamp" => Field::Timestamp,
            b"values" => Field::Values,
            b"label" => Field::Label,
            b"event" => Field::Event,
            b"features" => Field::Features,
            _ => Field::Other,
        }
    }
}

/// Whether a container field was present and an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Absent,
    Object,
    /// Present but not an object (the kind, for the error detail). `null` counts as this too.
    Other(&'static str),
}

/// The visitor methods of a container that must be an object: every other JSON kind is consumed and
/// reported as [`Shape::Other`] (for the error detail). Shared by the `values` and `features` visitors.
macro_rules! non_object_shapes {
    () => {
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(Shape::Other("an array"))
        }
        fn visit_unit<E>(self) -> Result<Shape, E> {
            Ok(Shape::Other("null"))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
            Ok(Shape::Other("a boolean"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
            Ok(Shape::Other("a number"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
            Ok(Shape::Other("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
            Ok(Shape::Other("a number"))
        }
        fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
            Ok(Shape::Other("a string"))
        }
    };
}
pub(crate) use non_object_shapes;

/// A value in `values` (or a leaf in `features`) that makes the message malformed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BadValue {
    pub(crate) reason: super::MalformedReason,
    pub(crate) detail: String,
}

/// Everything the pass keeps from one message.
pub(crate) struct Scan<'de> {
    pub(crate) thing_id: Option<Scalar<'de>>,
    pub(crate) equipment_type: Option<Scalar<'de>>,
    pub(crate) ts: Option<Scalar<'de>>,
    pub(crate) timestamp: Option<Scalar<'de>>,
    pub(crate) label: Option<Scalar<'de>>,
    pub(crate) event: Option<Scalar<'de>>,
    pub(crate) values_shape: Shape,
    pub(crate) features_shape: Shape,
    /// Flat `values`, in message order.
    pub(crate) values: Vec<(Name, f64)>,
    /// Flattened EgizCore `features`, in message order.
    pub(crate) core: Vec<(Name, f64)>,
    pub(crate) bad_value: Option<BadValue>,
    /// The top-level field being read, so a serde error (a number overflowing f64) can be attributed.
    pub(crate) current: Field,
    /// Capacity to reserve for `values` (the previous message's count), avoiding regrowth.
    pub(crate) values_hint: usize,
    pub(crate) mapping: &'de CompiledMapping,
}

impl<'de> Scan<'de> {
    pub(crate) fn new(mapping: &'de CompiledMapping, values_hint: usize) -> Self {
        Scan {
            thing_id: None,
            equipment_type: None,
            ts: None,
            timestamp: None,
            label: None,
            event: None,
            values_shape: Shape::Absent,
            features_shape: Shape::Absent,
            values: Vec::new(),
            core: Vec::new(),
            bad_value: None,
            current: Field::Other,
            values_hint,
            mapping,
        }
    }
}

impl<'de> DeserializeSeed<'de> for &mut Scan<'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Scan<'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Repeated keys: the last occurrence wins, as in most JSON parsers.
        while let Some(field) = map.next_key::<Field>()? {
            self.current = field;
            match field {
                Field::ThingId => self.thing_id = Some(map.next_value()?),
                Field::EquipmentType => self.equipment_type = Some(map.next_value()?),
                Field::Ts => self.ts = Some(map.next_value()?),
                Field::Timestamp => self.timestamp = Some(map.next_value()?),
                Field::Label => self.label = Some(map.next_value()?),
                Field::Event => self.event = Some(map.next_value()?),
                Field::Values => {
                    self.values.clear();
                    self.bad_value = None;
                    if self.values.capacity() == 0 {
                        self.values.reserve(self.values_hint.max(4));
                    }
                    self.values_shape = map.next_value_seed(ValuesSeed {
                        out: &mut self.values,
                        bad: &mut self.bad_value,
                    })?;
                }
                Field::Features => {
                    self.core.clear();
                    self.features_shape = map.next_value_seed(FeaturesSeed {
                        out: &mut self.core,
                        mapping: self.mapping,
                    })?;
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.current = Field::Other;
        Ok(())
    }
}

/// Sets `name` to `v`: appends it, or replaces the value of an earlier entry of the same name so a
/// reading never carries one feature twice (the last occurrence wins).
#[inline]
pub(crate) fn upsert(out: &mut Vec<(Name, f64)>, name: Name, v: f64) {
    match out.iter_mut().find(|(n, _)| *n == name) {
        Some(e) => e.1 = v,
        None => out.push((name, v)),
    }
}
