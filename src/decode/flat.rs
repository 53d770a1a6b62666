//! The flat format's `values` object: `{name: number | null, ...}` streamed into `(Name, f64)` pairs.

use super::scan::{non_object_shapes, upsert, BadValue, NameKey, Scalar, Shape};
use super::MalformedReason;
use crate::event::Name;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::fmt;

/// Strings that producers use for non-finite floats (JSON has no literal for them).
pub(crate) fn is_non_finite_word(s: &str) -> bool {
    matches!(
        s,
        "NaN" | "nan" | "inf" | "-inf" | "+inf" | "Infinity" | "-Infinity" | "+Infinity" | "NAN"
    )
}

/// A bucket in 0..64 from a name's length and a few of its bytes (sensor names often differ only at the
/// end: `temp_zone_1`, `temp_zone_2`).
#[inline]
pub(crate) fn name_bucket(name: &str) -> u32 {
    let b = name.as_bytes();
    let (first, mid, last) = match b {
        [] => (0, 0, 0),
        _ => (b[0], b[b.len() / 2], b[b.len() - 1]),
    };
    let h = (b.len() as u64) ^ (first as u64) << 8 ^ (mid as u64) << 16 ^ (last as u64) << 24;
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as u32
}

/// Reads `values`. Numbers are kept, nulls (a dropped-out sensor) skipped; the first value that is not a
/// finite number is recorded in `bad` and the rest is still read, so the JSON is validated to the end.
pub(crate) struct ValuesSeed<'a> {
    pub(crate) out: &'a mut Vec<(Name, f64)>,
    pub(crate) bad: &'a mut Option<BadValue>,
}

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = Shape;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl ValuesSeed<'_> {
    fn record(&mut self, reason: MalformedReason, key: &str, what: String) {
        if self.bad.is_none() {
            *self.bad = Some(BadValue {
                reason,
                detail: format!("values.{key} is {what}"),
            });
        }
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of sensor values")
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Shape, A::Error> {
        // A 64-bit filter of the names seen so far: a repeated key must replace the earlier value, but
        // scanning for it on every push would be quadratic work for nothing in the common case.
        let mut seen = 0u64;
        while let Some(NameKey(name)) = map.next_key()? {
            match map.next_value::<Scalar>()? {
                Scalar::Num(n) => {
                    let bit = 1u64 << name_bucket(&name);
                    if seen & bit == 0 {
                        seen |= bit;
                        self.out.push((name, n.as_f64()));
                    } else {
                        upsert(self.out, name, n.as_f64());
                    }
                }
                Scalar::Null => {}
                Scalar::Str(s) if is_non_finite_word(&s) => self.record(
                    MalformedReason::NonFiniteValue,
                    &name,
                    format!("\"{s}\", not a finite number"),
                ),
                other => {
                    let what = match &other {
                        Scalar::Str(s) if s.len() <= 40 => format!("the string \"{s}\""),
                        _ => other.kind().to_string(),
                    };
                    self.record(
                        MalformedReason::NonNumericValue,
                        &name,
                        format!("{what}, not a number"),
                    )
                }
            }
        }
        Ok(Shape::Object)
    }
    non_object_shapes!();
}
