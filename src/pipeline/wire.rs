//! How [`Record`] and [`Output`] cross process boundaries in a cluster run.
//!
//! Timely serializes exchanged data with bincode, which is not self-describing: it cannot encode the
//! JSON-oriented serde attributes of our wire types (`#[serde(untagged)]` on [`crate::event::Origin`],
//! `skip_serializing_if` on optional alert fields). So each record is encoded as one CBOR byte string
//! (self-describing, keeps every serde attribute and non-finite floats) inside timely's bincode frame.
//! Within a process timely moves values without serializing, so this costs nothing on one machine.
//! Human-readable formats (JSON, in tests and tools) get the plain enum, as a derive would give.

use super::engine::{Output, Record};
use crate::decode::DeadLetter;
use crate::event::{Alert, Point, ScoreLine};
use crate::rul::predict::Prediction;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize)]
enum RecordRef<'a> {
    Point(&'a Point, u64),
    Dead(&'a DeadLetter),
}

#[derive(Deserialize)]
enum RecordOwned {
    /// The sender's ingest instant, meaningless on this process's clock.
    Point(Point, serde::de::IgnoredAny),
    Dead(DeadLetter),
}

#[derive(Serialize)]
enum OutputRef<'a> {
    Alert(&'a Alert),
    Score(&'a ScoreLine),
    Dead(&'a DeadLetter),
    Prediction(&'a Prediction),
}

#[derive(Deserialize)]
enum OutputOwned {
    Alert(Alert),
    Score(ScoreLine),
    Dead(DeadLetter),
    Prediction(Box<Prediction>),
}

fn to_cbor<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        return value.serialize(s);
    }
    let mut buf = Vec::new();
    ciborium::into_writer(value, &mut buf).map_err(S::Error::custom)?;
    s.serialize_bytes(&buf)
}

fn from_cbor<'de, T: for<'a> Deserialize<'a>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    if d.is_human_readable() {
        return T::deserialize(d);
    }
    let bytes: serde_bytes_buf::ByteBuf = Deserialize::deserialize(d)?;
    ciborium::from_reader(bytes.0.as_slice()).map_err(D::Error::custom)
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = match self {
            Record::Point(p, ns) => RecordRef::Point(p, *ns),
            Record::Dead(d) => RecordRef::Dead(d),
        };
        to_cbor(&r, s)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match from_cbor::<RecordOwned, D>(d)? {
            // The sender's ingest instant is on another process's clock: time from arrival.
            RecordOwned::Point(p, _) => Record::Point(p, super::clock_ns()),
            RecordOwned::Dead(d) => Record::Dead(d),
        })
    }
}

impl Serialize for Output {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let o = match self {
            Output::Alert(a) => OutputRef::Alert(a),
            Output::Score(x) => OutputRef::Score(x),
            Output::Dead(d) => OutputRef::Dead(d),
            Output::Prediction(p) => OutputRef::Prediction(p),
        };
        to_cbor(&o, s)
    }
}

impl<'de> Deserialize<'de> for Output {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match from_cbor::<OutputOwned, D>(d)? {
            OutputOwned::Alert(a) => Output::Alert(a),
            OutputOwned::Score(x) => Output::Score(x),
            OutputOwned::Dead(d) => Output::Dead(d),
            OutputOwned::Prediction(p) => Output::Prediction(p),
        })
    }
}

/// A byte string deserialized from `serialize_bytes` (bincode gives it as a borrowed or owned buffer).
mod serde_bytes_buf {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use std::fmt;

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Name, Origin};

    fn roundtrip<T: Serialize + for<'a> Deserialize<'a>>(v: &T) -> T {
        // The same frame timely uses between processes.
        let bytes = bincode::serialize(&vec![v]).expect("serialize");
        let mut back: Vec<T> = bincode::deserialize(&bytes).expect("deserialize");
        back.pop().expect("one")
    }

    #[test]
    fn records_and_outputs_survive_timelys_bincode_frame() {
        let p = Point {
            thing_id: Name::from("oven-1"),
            equipment_type: Name::from("oven"),
            ts: 1_767_225_600_000,
            values: vec![(Name::from("temp_zone_1"), 185.25)],
            label: None,
            seq: 7,
            origin: Origin::Kafka {
                topic: "t".into(),
                partition: 3,
                offset: 42,
            },
            learn_only: false,
        };
        match roundtrip(&Record::Point(p.clone(), 99)) {
            Record::Point(q, _) => assert_eq!(q, p),
            other => panic!("{other:?}"),
        }
        let line = Origin::Line { line: 5 };
        let d = DeadLetter {
            reason: "invalid_json".into(),
            detail: "x".into(),
            raw: b"{not json".to_vec(),
            seq: 3,
            origin: line,
        };
        match roundtrip(&Output::Dead(d.clone())) {
            Output::Dead(e) => assert_eq!(e, d),
            other => panic!("{other:?}"),
        }
        // JSON keeps the plain externally tagged enum.
        let json = serde_json::to_string(&Output::Dead(d.clone())).expect("json");
        assert!(json.starts_with("{\"Dead\":{"), "{json}");
        match serde_json::from_str::<Output>(&json).expect("from json") {
            Output::Dead(e) => assert_eq!(e, d),
            other => panic!("{other:?}"),
        }
        let s = ScoreLine {
            thing_id: Name::from("oven-1"),
            ts: 1,
            score: f64::NAN,
            anomaly: false,
            label: None,
            model_version: None,
            model_score: Some(0.5),
        };
        match roundtrip(&Output::Score(s.clone())) {
            Output::Score(t) => {
                assert!(t.score.is_nan());
                assert_eq!(t.model_score, s.model_score);
                assert_eq!(t.label, None);
            }
            other => panic!("{other:?}"),
        }
    }
}
