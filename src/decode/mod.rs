//! Decoding of telemetry messages (flat JSON and EgizCore `StateChanged`) into [`Point`]s.
//! STUB: owned by the decode helper.

use crate::config::DecodeConfig;
use crate::event::{Origin, Point};

/// Why a message was rejected. `as_str` is the `reason` label in metrics and dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MalformedReason {
    Oversize,
    BadJson,
    MissingThingId,
    MissingTimestamp,
    BadTimestamp,
    AbsurdTimestamp,
    NonNumericValue,
    NonFiniteValue,
    NoValues,
    /// Older than its thing's newest event time by more than the allowed lateness (set by the pipeline).
    Late,
    /// Same thing and event time as a reading already processed (set by the pipeline).
    DuplicateTimestamp,
}

impl MalformedReason {
    pub const ALL: [MalformedReason; 11] = [
        MalformedReason::Oversize,
        MalformedReason::BadJson,
        MalformedReason::MissingThingId,
        MalformedReason::MissingTimestamp,
        MalformedReason::BadTimestamp,
        MalformedReason::AbsurdTimestamp,
        MalformedReason::NonNumericValue,
        MalformedReason::NonFiniteValue,
        MalformedReason::NoValues,
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
            MalformedReason::Late => "late",
            MalformedReason::DuplicateTimestamp => "duplicate_timestamp",
        }
    }
}

/// A rejected message: the reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq)]
pub struct Malformed {
    pub reason: MalformedReason,
    pub detail: String,
}

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
    /// One JSON line: `{"reason","detail","origin"?,"raw"|"raw_base64"}`.
    pub fn to_json_line(&self) -> String {
        todo!()
    }
}

/// Decodes raw messages. Holds reusable scratch state; one per worker.
pub struct Decoder {
    _cfg: DecodeConfig,
}

impl Decoder {
    pub fn new(cfg: &DecodeConfig) -> Self {
        Decoder { _cfg: cfg.clone() }
    }

    /// Decodes one message (flat or EgizCore, detected from its keys). `seq` is 0 and `origin` is
    /// `Origin::None` in the result: the caller sets them.
    pub fn decode(&mut self, _raw: &[u8]) -> Result<Point, Malformed> {
        todo!()
    }
}
