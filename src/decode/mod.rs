//! Decoding of telemetry messages (flat JSON and EgizCore `StateChanged`) into [`Point`]s.
//!
//! The format is detected per message: an object with an `event` or a `features` key is EgizCore,
//! anything else is flat. Both are read in one serde pass that borrows from the input and streams sensor
//! values straight into the point's vector (see `scan`), so a typical flat message costs one allocation:
//! the point's `values`. A plain flat message (no escapes, no nested containers outside `values`, the
//! common case) is first tried by a specialised pass (`fast`) that fills the same scan several times
//! faster; whatever it does not handle, including every malformed message, goes through the serde pass.
//!
//! Flat: `{"thing_id","equipment_type"?,"ts","values":{name:number|null,...},"label"?}`.
//! EgizCore: `{"event":"StateChanged","thing_id","equipment_type"?,"timestamp","features":{...}}`, numeric
//! leaves under `features.<feature>.properties` named per [`crate::config::EgizCoreMapping`].
//!
//! Leniencies, so producers need not be byte-exact: `thingId` / `equipmentType` are accepted for
//! `thing_id` / `equipment_type` and `ts` / `timestamp` for each other in both formats (the format's own
//! key wins when both are present); a missing, null, empty or non-string `equipment_type` means
//! [`DecodeConfig::default_equipment_type`]; unknown keys are ignored; a key repeated in `values` (or a
//! flattened name produced twice) keeps its last value at its first position. `label` is `0`/`1` (also
//! `0.0`/`1.0`, `false`/`true`, or `null` = none); anything else is [`MalformedReason::BadLabel`].

mod egizcore;
mod fast;
mod flat;
mod scan;
#[cfg(test)]
mod tests;
pub mod timestamp;

pub use egizcore::CompiledMapping;

use crate::config::DecodeConfig;
use crate::event::{Name, Origin, Point};
use scan::{Field, Num, Scalar, Scan, Shape};
use serde::de::DeserializeSeed;
use serde::Serialize;

/// Why a message was rejected. `as_str` is the `reason` label in metrics and dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MalformedReason {
    /// Longer than `max_message_bytes` (not parsed).
    Oversize,
    /// Not UTF-8, not JSON, or not a JSON object.
    BadJson,
    /// `thing_id` missing, null, empty or not a string.
    MissingThingId,
    /// No `ts` (flat) / `timestamp` (EgizCore), or null.
    MissingTimestamp,
    /// A timestamp that is neither epoch milliseconds nor an RFC 3339 date-time with an offset.
    BadTimestamp,
    /// A timestamp outside `[min_ts_ms, max_ts_ms]` — typically epoch seconds sent as milliseconds.
    AbsurdTimestamp,
    /// A flat value that is a string, boolean, array or object.
    NonNumericValue,
    /// A value that is not finite: `"NaN"`/`"Infinity"`-style strings, or a number overflowing f64.
    NonFiniteValue,
    /// No numeric value at all: `values` / `features` missing, not an object, or only nulls.
    NoValues,
    /// `label` present but not 0/1.
    BadLabel,
    /// An EgizCore event other than `StateChanged`.
    UnsupportedEvent,
    /// Older than its thing's newest event time by more than the allowed lateness (set by the pipeline).
    Late,
    /// Same thing and event time as a reading already processed (set by the pipeline).
    DuplicateTimestamp,
}

impl MalformedReason {
    pub const ALL: [MalformedReason; 13] = [
        MalformedReason::Oversize,
        MalformedReason::BadJson,
        MalformedReason::MissingThingId,
        MalformedReason::MissingTimestamp,
        MalformedReason::BadTimestamp,
        MalformedReason::AbsurdTimestamp,
        MalformedReason::NonNumericValue,
        MalformedReason::NonFiniteValue,
        MalformedReason::NoValues,
        MalformedReason::BadLabel,
        MalformedReason::UnsupportedEvent,
        MalformedReason::Late,
        MalformedReason::DuplicateTimestamp,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            MalformedReason::Oversize => "oversize",
            MalformedReason::BadJson => "bad_json",
            MalformedReason::MissingThingId => "missing_thing_id",
            MalformedReason::MissingTimestamp => "missing_timestamp",
            MalformedReason::BadTimestamp => "bad_timestamp",
            MalformedReason::AbsurdTimestamp => "absurd_timestamp",
            MalformedReason::NonNumericValue => "non_numeric_value",
            MalformedReason::NonFiniteValue => "non_finite_value",
            MalformedReason::NoValues => "no_values",
            MalformedReason::BadLabel => "bad_label",
            MalformedReason::UnsupportedEvent => "unsupported_event",
            MalformedReason::Late => "late",
            MalformedReason::DuplicateTimestamp => "duplicate_timestamp",
        }
    }
}

impl std::fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message: the reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq)]
pub struct Malformed {
    pub reason: MalformedReason,
    pub detail: String,
}

impl Malformed {
    pub fn new(reason: MalformedReason, detail: impl Into<String>) -> Self {
        Malformed {
            reason,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

impl std::error::Error for Malformed {}

/// A dead letter: a rejected message with its raw bytes and where it came from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    pub detail: String,
    pub raw: Vec<u8>,
    pub seq: u64,
    pub origin: Origin,
}

impl DeadLetter {
    pub fn new(malformed: &Malformed, raw: &[u8], seq: u64, origin: Origin) -> Self {
        DeadLetter {
            reason: malformed.reason.as_str().to_string(),
            detail: malformed.detail.clone(),
            raw: raw.to_vec(),
            seq,
            origin,
        }
    }

    /// One JSON line (no trailing newline):
    /// `{"reason","detail","seq","origin"?,"raw"|"raw_base64"}`. `raw` is the message text when it is
    /// valid UTF-8, otherwise `raw_base64` carries the bytes (standard alphabet, padded).
    pub fn to_json_line(&self) -> String {
        use base64::Engine as _;
        #[derive(Serialize)]
        struct Line<'a> {
            reason: &'a str,
            detail: &'a str,
            seq: u64,
            #[serde(skip_serializing_if = "Origin::is_none")]
            origin: &'a Origin,
            #[serde(skip_serializing_if = "Option::is_none")]
            raw: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            raw_base64: Option<String>,
        }
        let text = std::str::from_utf8(&self.raw).ok();
        let line = Line {
            reason: &self.reason,
            detail: &self.detail,
            seq: self.seq,
            origin: &self.origin,
            raw: text,
            raw_base64: match text {
                Some(_) => None,
                None => Some(base64::engine::general_purpose::STANDARD.encode(&self.raw)),
            },
        };
        // Serialising plain strings and numbers to a String cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// Decodes raw messages. Holds reusable scratch state; one per worker.
pub struct Decoder {
    cfg: DecodeConfig,
    mapping: CompiledMapping,
    default_equipment_type: Name,
    /// Values in the previous flat message: the capacity to reserve for the next one.
    values_hint: usize,
    /// Whether plain flat messages take the specialised pass (`fast`); off only in tests that
    /// compare it with the general serde pass.
    fast: bool,
    /// The sensor names of the last message of each equipment type the specialised pass read (see
    /// `fast`).
    names: fast::NameCache,
}

impl Decoder {
    pub fn new(cfg: &DecodeConfig) -> Self {
        Decoder {
            cfg: cfg.clone(),
            mapping: CompiledMapping::new(&cfg.egizcore),
            default_equipment_type: Name::from(cfg.default_equipment_type.as_str()),
            values_hint: 8,
            fast: true,
            names: fast::NameCache::default(),
        }
    }

    /// This decoder without the specialised flat pass: every message goes through the serde pass.
    #[cfg(test)]
    pub(crate) fn serde_only(mut self) -> Self {
        self.fast = false;
        self
    }

    /// Decodes one message (flat or EgizCore, detected from its keys). `seq` is 0 and `origin` is
    /// `Origin::None` in the result: the caller sets them. Trailing whitespace (a line's `\n` or `\r\n`)
    /// is accepted.
    pub fn decode(&mut self, raw: &[u8]) -> Result<Point, Malformed> {
        if raw.len() > self.cfg.max_message_bytes {
            return Err(Malformed::new(
                MalformedReason::Oversize,
                format!(
                    "message of {} bytes exceeds max_message_bytes {}",
                    raw.len(),
                    self.cfg.max_message_bytes
                ),
            ));
        }
        let mut scan = Scan::new(&self.mapping, self.values_hint);
        if !(self.fast && fast::scan_flat(raw, &mut scan, &mut self.names)) {
            // Not a plain flat message (or a malformed one): the general pass, which also gives the
            // error details.
            scan = Scan::new(&self.mapping, self.values_hint);
            let mut de = serde_json::Deserializer::from_slice(raw);
            if let Err(e) = (&mut scan).deserialize(&mut de).and_then(|()| de.end()) {
                return Err(json_error(&e, scan.current));
            }
        }
        let is_core = scan.event.is_some() || scan.features_shape != Shape::Absent;

        let thing_id = match &scan.thing_id {
            Some(Scalar::Str(s)) if !s.trim().is_empty() => Name::from(&**s),
            Some(Scalar::Str(_)) => return Err(missing_thing("thing_id is empty")),
            Some(other) => {
                return Err(missing_thing(&format!(
                    "thing_id is {}, not a string",
                    other.kind()
                )))
            }
            None => return Err(missing_thing("thing_id is missing")),
        };

        if is_core {
            match &scan.event {
                None => {}
                Some(Scalar::Str(s)) if s == "StateChanged" => {}
                Some(Scalar::Str(s)) => {
                    return Err(Malformed::new(
                        MalformedReason::UnsupportedEvent,
                        format!("event \"{}\" is not StateChanged", clip(s)),
                    ))
                }
                Some(other) => {
                    return Err(Malformed::new(
                        MalformedReason::UnsupportedEvent,
                        format!("event is {}, not \"StateChanged\"", other.kind()),
                    ))
                }
            }
        }

        // Each format's own key wins; the other is accepted as an alias.
        let (own, alias) = if is_core {
            (("timestamp", &scan.timestamp), ("ts", &scan.ts))
        } else {
            (("ts", &scan.ts), ("timestamp", &scan.timestamp))
        };
        let (ts_key, ts_val) = match (own.1, alias.1) {
            (Some(v), _) => (own.0, Some(v)),
            (None, Some(v)) => (alias.0, Some(v)),
            (None, None) => (own.0, None),
        };
        let ts = self.event_time(ts_key, ts_val)?;

        let values = if is_core {
            match scan.features_shape {
                Shape::Absent => return Err(no_values("features is missing".into())),
                Shape::Other(kind) => {
                    return Err(no_values(format!("features is {kind}, not an object")))
                }
                Shape::Object if scan.core.is_empty() => {
                    return Err(no_values(
                        "no numeric leaf under features.<feature>.properties".into(),
                    ))
                }
                Shape::Object => std::mem::take(&mut scan.core),
            }
        } else {
            if let Some(bad) = scan.bad_value.take() {
                return Err(Malformed::new(bad.reason, bad.detail));
            }
            match scan.values_shape {
                Shape::Absent => return Err(no_values("values is missing".into())),
                Shape::Other(kind) => {
                    return Err(no_values(format!("values is {kind}, not an object")))
                }
                Shape::Object if scan.values.is_empty() => {
                    return Err(no_values("values has no non-null number".into()))
                }
                Shape::Object => std::mem::take(&mut scan.values),
            }
        };

        let label = match &scan.label {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Bool(b)) => Some(*b as u8),
            Some(Scalar::Num(Num::U(v @ (0 | 1)))) => Some(*v as u8),
            Some(Scalar::Num(Num::I(v @ (0 | 1)))) => Some(*v as u8),
            Some(Scalar::Num(Num::F(v))) if *v == 0.0 || *v == 1.0 => Some(*v as u8),
            Some(Scalar::Num(n)) => {
                return Err(Malformed::new(
                    MalformedReason::BadLabel,
                    format!("label {n} is not 0 or 1"),
                ))
            }
            Some(other) => {
                return Err(Malformed::new(
                    MalformedReason::BadLabel,
                    format!("label is {}, not 0 or 1", other.kind()),
                ))
            }
        };

        let equipment_type = match &scan.equipment_type {
            Some(Scalar::Str(s)) if !s.is_empty() => Name::from(&**s),
            _ => self.default_equipment_type.clone(),
        };

        if !is_core {
            self.values_hint = values.len();
        }
        Ok(Point {
            thing_id,
            equipment_type,
            ts,
            values,
            label,
            seq: 0,
            origin: Origin::None,
            learn_only: false,
        })
    }

    /// Epoch milliseconds of the message's timestamp, checked against the plausible range.
    fn event_time(&self, key: &str, v: Option<&Scalar>) -> Result<i64, Malformed> {
        let ms = match v {
            None => {
                return Err(Malformed::new(
                    MalformedReason::MissingTimestamp,
                    format!("{key} is missing"),
                ))
            }
            Some(Scalar::Null) => {
                return Err(Malformed::new(
                    MalformedReason::MissingTimestamp,
                    format!("{key} is null"),
                ))
            }
            Some(Scalar::Num(Num::U(v))) => timestamp::ms_from_u64(*v),
            Some(Scalar::Num(Num::I(v))) => *v,
            Some(Scalar::Num(Num::F(v))) => timestamp::ms_from_f64(*v),
            Some(Scalar::Str(s)) => timestamp::parse_rfc3339(s).ok_or_else(|| {
                Malformed::new(
                    MalformedReason::BadTimestamp,
                    format!(
                        "{key} \"{}\" is not an RFC 3339 date-time with offset (or epoch ms)",
                        clip(s)
                    ),
                )
            })?,
            Some(other) => {
                return Err(Malformed::new(
                    MalformedReason::BadTimestamp,
                    format!(
                        "{key} is {}, not epoch milliseconds or an RFC 3339 string",
                        other.kind()
                    ),
                ))
            }
        };
        let (lo, hi) = (self.cfg.min_ts_ms, self.cfg.max_ts_ms);
        if ms < lo || ms > hi {
            let hint = match ms.checked_mul(1000) {
                Some(x) if (lo..=hi).contains(&x) => " (epoch seconds instead of milliseconds?)",
                _ => "",
            };
            return Err(Malformed::new(
                MalformedReason::AbsurdTimestamp,
                format!(
                    "{key} {ms} ({}) is outside [{}, {}]{hint}",
                    timestamp::format_rfc3339(ms),
                    timestamp::format_rfc3339(lo),
                    timestamp::format_rfc3339(hi)
                ),
            ));
        }
        Ok(ms)
    }
}

fn missing_thing(detail: &str) -> Malformed {
    Malformed::new(MalformedReason::MissingThingId, detail)
}

fn no_values(detail: String) -> Malformed {
    Malformed::new(MalformedReason::NoValues, detail)
}

/// At most 60 characters of `s`, for error details.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(60) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Classifies a serde_json error. serde_json refuses numbers that overflow f64 (`1e999`) with a parse
/// error; that is a bad value, not bad JSON, so it is attributed to the field being read.
fn json_error(e: &serde_json::Error, field: Field) -> Malformed {
    let msg = e.to_string();
    if msg.starts_with("number out of range") {
        let (reason, what) = match field {
            Field::ThingId => (MalformedReason::MissingThingId, "thing_id"),
            Field::Ts | Field::Timestamp => (MalformedReason::AbsurdTimestamp, "the timestamp"),
            Field::Label => (MalformedReason::BadLabel, "label"),
            Field::Event => (MalformedReason::UnsupportedEvent, "event"),
            Field::Values => (MalformedReason::NonFiniteValue, "a value"),
            Field::Features => (MalformedReason::NonFiniteValue, "a feature property"),
            Field::EquipmentType | Field::Other => (MalformedReason::NonFiniteValue, "a number"),
        };
        return Malformed::new(reason, format!("{what} overflows a 64-bit float ({msg})"));
    }
    Malformed::new(MalformedReason::BadJson, msg)
}
