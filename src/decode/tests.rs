use super::timestamp::{days_from_civil, format_rfc3339, parse_rfc3339};
use super::*;
use crate::config::EgizCoreMapping;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const FLAT_EXAMPLE: &str = r#"{"thing_id":"oven-00042","equipment_type":"oven","ts":1767225600000,
 "values":{"voltage_a":230.1,"voltage_b":229.8,"voltage_c":230.4,"current_a":15.1,"current_b":14.9,
           "current_c":15.0,"power_factor":0.92,"temp_zone_1":185.2,"temp_zone_2":190.1,"temp_zone_3":188.0},
 "label":0}"#;

const CORE_EXAMPLE: &str = r#"{"event":"StateChanged","thing_id":"factory:oven-001","equipment_type":"oven","timestamp":"2026-01-27T14:30:00Z",
 "features":{"electrical":{"properties":{"voltage":{"a":220.5,"b":219.8,"c":221.0},
                                        "current":{"a":15.2,"b":14.8,"c":15.5},"power_factor":0.92}},
             "thermal":{"properties":{"temperature_zones":[185.0,190.0,188.5]}}}}"#;

fn decoder() -> Decoder {
    Decoder::new(&DecodeConfig::default())
}

fn decode(msg: &str) -> Result<Point, Malformed> {
    decoder().decode(msg.as_bytes())
}

fn reason(msg: &str) -> MalformedReason {
    match decode(msg) {
        Ok(p) => panic!("expected an error for {msg}, got {p:?}"),
        Err(m) => {
            assert!(!m.detail.is_empty(), "empty detail for {msg}");
            m.reason
        }
    }
}

fn names(p: &Point) -> Vec<&str> {
    p.values.iter().map(|(n, _)| n.as_str()).collect()
}

fn flat_with_values(values: &str) -> String {
    format!(r#"{{"thing_id":"t1","ts":1767225600000,"values":{values}}}"#)
}

fn flat_with_ts(ts: &str) -> String {
    format!(r#"{{"thing_id":"t1","ts":{ts},"values":{{"x":1}}}}"#)
}

fn core_with_features(features: &str) -> String {
    format!(
        r#"{{"event":"StateChanged","thing_id":"t1","timestamp":"2026-01-27T14:30:00Z","features":{features}}}"#
    )
}

// ---- flat format ----

#[test]
fn flat_design_example() {
    let p = decode(FLAT_EXAMPLE).unwrap();
    assert_eq!(p.thing_id, "oven-00042");
    assert_eq!(p.equipment_type, "oven");
    assert_eq!(p.ts, 1_767_225_600_000);
    assert_eq!(p.label, Some(0));
    assert_eq!(p.seq, 0);
    assert_eq!(p.origin, Origin::None);
    assert_eq!(
        names(&p),
        [
            "voltage_a",
            "voltage_b",
            "voltage_c",
            "current_a",
            "current_b",
            "current_c",
            "power_factor",
            "temp_zone_1",
            "temp_zone_2",
            "temp_zone_3"
        ]
    );
    assert_eq!(p.value("voltage_b"), Some(229.8));
    assert_eq!(p.value("current_c"), Some(15.0));
    assert_eq!(p.value("temp_zone_3"), Some(188.0));
}

#[test]
fn flat_defaults_and_optional_fields() {
    let p = decode(r#"{"thing_id":"m-1","ts":1767225600000,"values":{"speed_rpm":1200}}"#).unwrap();
    assert_eq!(p.equipment_type, "unknown");
    assert_eq!(p.label, None);
    assert_eq!(p.values, vec![(Name::from("speed_rpm"), 1200.0)]);

    let cfg = DecodeConfig {
        default_equipment_type: "mixer".into(),
        ..DecodeConfig::default()
    };
    let p = Decoder::new(&cfg)
        .decode(br#"{"thing_id":"m-1","equipment_type":null,"ts":1767225600000,"values":{"a":1}}"#)
        .unwrap();
    assert_eq!(p.equipment_type, "mixer");
}

#[test]
fn flat_null_values_are_skipped() {
    let p = decode(&flat_with_values(r#"{"a":1.5,"b":null,"c":-2}"#)).unwrap();
    assert_eq!(
        p.values,
        vec![(Name::from("a"), 1.5), (Name::from("c"), -2.0)]
    );
    let p = decode(r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1},"label":null}"#).unwrap();
    assert_eq!(p.label, None);
}

#[test]
fn flat_number_forms() {
    let p = decode(&flat_with_values(
        r#"{"i":-3,"u":18446744073709551615,"e":1.5e3,"z":-0.0,"tiny":1e-999}"#,
    ))
    .unwrap();
    assert_eq!(p.value("i"), Some(-3.0));
    assert_eq!(p.value("u"), Some(18446744073709551615u64 as f64));
    assert_eq!(p.value("e"), Some(1500.0));
    assert_eq!(p.value("z"), Some(0.0));
    assert_eq!(p.value("tiny"), Some(0.0));
    assert!(p.values.iter().all(|(_, v)| v.is_finite()));
}

#[test]
fn flat_labels() {
    for (label, want) in [
        ("0", 0),
        ("1", 1),
        ("0.0", 0),
        ("1.0", 1),
        ("true", 1),
        ("false", 0),
    ] {
        let msg =
            format!(r#"{{"thing_id":"t","ts":1767225600000,"values":{{"a":1}},"label":{label}}}"#);
        assert_eq!(decode(&msg).unwrap().label, Some(want), "{label}");
    }
}

#[test]
fn flat_unknown_keys_ignored_and_key_order_free() {
    let p = decode(
        r#"{"values":{"a":1},"extra":{"deep":[1,{"x":"y"}],"big":1e999},"ts":1767225600000,"n":null,"thing_id":"t"}"#,
    )
    .unwrap();
    assert_eq!(p.thing_id, "t");
    assert_eq!(p.values, vec![(Name::from("a"), 1.0)]);
}

#[test]
fn flat_duplicate_value_keys_last_wins_at_first_position() {
    let p = decode(&flat_with_values(r#"{"a":1,"b":2,"a":3}"#)).unwrap();
    assert_eq!(
        p.values,
        vec![(Name::from("a"), 3.0), (Name::from("b"), 2.0)]
    );
}

#[test]
fn many_values_with_colliding_buckets_are_all_kept_and_deduplicated() {
    let keys: Vec<String> = (0..300).map(|i| format!("sensor_{i}")).collect();
    let first: Vec<String> = keys.iter().map(|k| format!("\"{k}\":1")).collect();
    let second: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("\"{k}\":{}", i + 2))
        .collect();
    let p = decode(&flat_with_values(&format!("{{{}}}", first.join(",")))).unwrap();
    assert_eq!(names(&p), keys);
    let all = format!("{{{},{}}}", first.join(","), second.join(","));
    let p = decode(&flat_with_values(&all)).unwrap();
    assert_eq!(names(&p), keys);
    for (i, (_, v)) in p.values.iter().enumerate() {
        assert_eq!(*v, (i + 2) as f64);
    }
}

#[test]
fn escaped_strings_are_decoded() {
    let p = decode(
        r#"{"thing_id":"oven\u002d1","equipment_type":"o\"v","ts":1767225600000,"values":{"temp\u005fzone_1":5}}"#,
    )
    .unwrap();
    assert_eq!(p.thing_id, "oven-1");
    assert_eq!(p.equipment_type, "o\"v");
    assert_eq!(p.value("temp_zone_1"), Some(5.0));
}

#[test]
fn aliases_thing_id_and_timestamp() {
    let p =
        decode(r#"{"thingId":"t9","timestamp":"2026-01-27T14:30:00Z","values":{"a":1}}"#).unwrap();
    assert_eq!(p.thing_id, "t9");
    assert_eq!(p.ts, 1_769_524_200_000);
    // Flat: `ts` wins over `timestamp`.
    let p = decode(
        r#"{"thing_id":"t","timestamp":"2026-01-27T14:30:00Z","ts":1767225600000,"values":{"a":1}}"#,
    )
    .unwrap();
    assert_eq!(p.ts, 1_767_225_600_000);
}

#[test]
fn trailing_and_leading_whitespace_accepted() {
    for msg in [
        format!("{FLAT_EXAMPLE}\n"),
        format!("{FLAT_EXAMPLE}\r\n"),
        format!("  \t{FLAT_EXAMPLE} \r\n"),
        format!("{CORE_EXAMPLE}\n"),
    ] {
        decode(&msg).unwrap();
    }
    assert_eq!(
        reason(&format!("{FLAT_EXAMPLE}\nx")),
        MalformedReason::BadJson
    );
    assert_eq!(
        reason(&format!("{FLAT_EXAMPLE}{{}}")),
        MalformedReason::BadJson
    );
}

#[test]
fn decoder_reuse_does_not_leak_state() {
    let mut d = decoder();
    let a = d.decode(FLAT_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(a.values.len(), 10);
    assert!(d.decode(b"{\"thing_id\":\"x\"}").is_err());
    let b = d
        .decode(br#"{"thing_id":"small","ts":1767225600000,"values":{"q":2}}"#)
        .unwrap();
    assert_eq!(b.values, vec![(Name::from("q"), 2.0)]);
    assert_eq!(b.label, None);
    let c = d.decode(CORE_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(c.values.len(), 10);
    assert_eq!(d.decode(FLAT_EXAMPLE.as_bytes()).unwrap(), a);
}

// ---- timestamps ----

#[test]
fn ts_variants() {
    let base = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    for (ts, want) in [
        ("1767225600000", base),
        ("1767225600000.0", base),
        ("1767225600123.9", base + 123),
        ("1.7672256e12", base),
        (r#""2026-01-01T00:00:00Z""#, base),
        (r#""2026-01-01T00:00:00.250Z""#, base + 250),
        (r#""2026-01-01 00:00:00Z""#, base),
        (r#""2026-01-01t00:00:00z""#, base),
        (r#""2026-01-01T02:00:00+02:00""#, base),
        (r#""2025-12-31T19:00:00-05:00""#, base),
        (r#""2026-01-01T05:30:00.5+05:30""#, base + 500),
    ] {
        assert_eq!(decode(&flat_with_ts(ts)).unwrap().ts, want, "{ts}");
    }
}

#[test]
fn rfc3339_parser() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_rfc3339("2000-01-01T00:00:00Z"), Some(946_684_800_000));
    assert_eq!(
        parse_rfc3339("2100-01-01T00:00:00Z"),
        Some(4_102_444_800_000)
    );
    assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999Z"), Some(-1));
    assert_eq!(
        parse_rfc3339("2026-01-27T14:30:00Z"),
        Some(1_769_524_200_000)
    );
    // Fractions: 1 to many digits, truncated to ms.
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00.1Z"), Some(100));
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00.12Z"), Some(120));
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00.123456789Z"), Some(123));
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00.999999Z"), Some(999));
    // Offsets.
    assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
    assert_eq!(parse_rfc3339("1969-12-31T23:00:00-01:00"), Some(0));
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00-00:00"), Some(0));
    assert_eq!(parse_rfc3339("1970-01-01T23:59:00+23:59"), Some(0));
    // Leap years and month lengths.
    assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
    assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_some());
    assert_eq!(
        parse_rfc3339("2024-03-01T00:00:00Z").unwrap()
            - parse_rfc3339("2024-02-28T00:00:00Z").unwrap(),
        2 * 86_400_000
    );
    assert_eq!(
        parse_rfc3339("2023-03-01T00:00:00Z").unwrap()
            - parse_rfc3339("2023-02-28T00:00:00Z").unwrap(),
        86_400_000
    );
    // A leap second is the first second of the next minute.
    assert_eq!(
        parse_rfc3339("2016-12-31T23:59:60Z"),
        parse_rfc3339("2017-01-01T00:00:00Z")
    );
    for bad in [
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-01-32T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:60:00Z",
        "2026-01-01T00:00:61Z",
        "2026-01-01T00:00:00",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00,5Z",
        "2026-01-01T00:00:00+0100",
        "2026-01-01T00:00:00+1:00",
        "2026-01-01T00:00:00+24:00",
        "2026-01-01T00:00:00+01:60",
        "2026-01-01T00:00:00Zjunk",
        "2026-01-01T00:00:00Z ",
        "2026-01-01X00:00:00Z",
        "2026/01/01T00:00:00Z",
        "26-01-01T00:00:00Z",
        "2026-1-01T00:00:00Z",
        "+2026-01-01T00:00:00Z",
        "2026-01-01",
        "2026-01-01T00:00Z",
        "",
        "Z",
        "2026-01-01T00:00:00\u{e9}",
        "２０２６-01-01T00:00:00Z",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}

#[test]
fn civil_conversions_round_trip() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(1969, 12, 31), -1);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    // Every day from 1600 to 2400 formats and parses back to itself.
    let mut ms = days_from_civil(1600, 1, 1) * 86_400_000 + 45_296_789;
    let end = days_from_civil(2400, 12, 31) * 86_400_000;
    let mut prev_day = None;
    while ms < end {
        let s = format_rfc3339(ms);
        assert_eq!(parse_rfc3339(&s), Some(ms), "{s}");
        let day = days_from_civil(
            s[0..4].parse().unwrap(),
            s[5..7].parse().unwrap(),
            s[8..10].parse().unwrap(),
        );
        if let Some(p) = prev_day {
            assert_eq!(day, p + 1, "{s}");
        }
        prev_day = Some(day);
        ms += 86_400_000;
    }
}

// ---- one test per malformed reason ----

#[test]
fn reason_oversize() {
    let cfg = DecodeConfig {
        max_message_bytes: 64,
        ..DecodeConfig::default()
    };
    let mut d = Decoder::new(&cfg);
    let err = d.decode(FLAT_EXAMPLE.as_bytes()).unwrap_err();
    assert_eq!(err.reason, MalformedReason::Oversize);
    assert!(err.detail.contains("64"), "{}", err.detail);
    // Not parsed: even garbage of the same size is oversize, not bad JSON.
    assert_eq!(
        d.decode(&[0xff; 65]).unwrap_err().reason,
        MalformedReason::Oversize
    );
    let exact = r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1}}"#;
    let cfg = DecodeConfig {
        max_message_bytes: exact.len(),
        ..DecodeConfig::default()
    };
    Decoder::new(&cfg).decode(exact.as_bytes()).unwrap();
}

#[test]
fn reason_bad_json() {
    for msg in [
        "",
        "   ",
        "{",
        "not json",
        "[1,2]",
        "\"a string\"",
        "42",
        "null",
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1},}"#,
        r#"{"thing_id":'t'}"#,
        r#"{"values":{"a":NaN},"thing_id":"t","ts":1767225600000}"#,
    ] {
        assert_eq!(reason(msg), MalformedReason::BadJson, "{msg:?}");
    }
    let mut raw = br#"{"thing_id":"t"#.to_vec();
    raw.extend_from_slice(&[0xc3, 0x28]);
    raw.extend_from_slice(br#"","ts":1767225600000,"values":{"a":1}}"#);
    assert_eq!(
        decoder().decode(&raw).unwrap_err().reason,
        MalformedReason::BadJson
    );
    assert_eq!(
        decoder()
            .decode(&[0xff, 0xfe, b'{', b'}'])
            .unwrap_err()
            .reason,
        MalformedReason::BadJson
    );
}

#[test]
fn reason_missing_thing_id() {
    for msg in [
        r#"{"ts":1767225600000,"values":{"a":1}}"#,
        r#"{"thing_id":"","ts":1767225600000,"values":{"a":1}}"#,
        r#"{"thing_id":"  ","ts":1767225600000,"values":{"a":1}}"#,
        r#"{"thing_id":null,"ts":1767225600000,"values":{"a":1}}"#,
        r#"{"thing_id":42,"ts":1767225600000,"values":{"a":1}}"#,
        r#"{"thing_id":["t"],"ts":1767225600000,"values":{"a":1}}"#,
        r#"{"thing_id":1e999,"ts":1767225600000,"values":{"a":1}}"#,
        r#"{"event":"StateChanged","timestamp":"2026-01-27T14:30:00Z","features":{}}"#,
    ] {
        assert_eq!(reason(msg), MalformedReason::MissingThingId, "{msg}");
    }
}

#[test]
fn reason_missing_timestamp() {
    assert_eq!(
        reason(r#"{"thing_id":"t","values":{"a":1}}"#),
        MalformedReason::MissingTimestamp
    );
    assert_eq!(
        reason(&flat_with_ts("null")),
        MalformedReason::MissingTimestamp
    );
    assert_eq!(
        reason(
            &core_with_features(r#"{"e":{"properties":{"v":1}}}"#)
                .replace(r#""timestamp":"2026-01-27T14:30:00Z","#, "")
        ),
        MalformedReason::MissingTimestamp
    );
}

#[test]
fn reason_bad_timestamp() {
    for ts in [
        r#""yesterday""#,
        r#""2026-02-30T00:00:00Z""#,
        r#""2026-01-01T00:00:00""#,
        r#""1767225600000""#,
        "true",
        "[1767225600000]",
        r#"{"ms":1767225600000}"#,
    ] {
        assert_eq!(
            reason(&flat_with_ts(ts)),
            MalformedReason::BadTimestamp,
            "{ts}"
        );
    }
}

#[test]
fn reason_absurd_timestamp() {
    let err = decode(&flat_with_ts("1767225600")).unwrap_err();
    assert_eq!(err.reason, MalformedReason::AbsurdTimestamp);
    assert!(err.detail.contains("seconds"), "{}", err.detail);
    for ts in [
        "0",
        "-1",
        "4102444800001",
        "18446744073709551615",
        "-9223372036854775808",
        "1e300",
        "-1e300",
        "1e999",
        r#""1999-12-31T23:59:59.999Z""#,
        r#""2100-01-01T00:00:00.001Z""#,
    ] {
        assert_eq!(
            reason(&flat_with_ts(ts)),
            MalformedReason::AbsurdTimestamp,
            "{ts}"
        );
    }
    // The bounds themselves are plausible.
    decode(&flat_with_ts("946684800000")).unwrap();
    decode(&flat_with_ts("4102444800000")).unwrap();
    let cfg = DecodeConfig {
        min_ts_ms: 0,
        ..DecodeConfig::default()
    };
    let p = Decoder::new(&cfg)
        .decode(flat_with_ts("1767225600").as_bytes())
        .unwrap();
    assert_eq!(p.ts, 1_767_225_600);
}

#[test]
fn reason_non_numeric_value() {
    for values in [
        r#"{"a":"12.5"}"#,
        r#"{"a":true}"#,
        r#"{"a":[1,2]}"#,
        r#"{"a":{"b":1}}"#,
        r#"{"ok":1,"a":"x"}"#,
        r#"{"a":""}"#,
    ] {
        let err = decode(&flat_with_values(values)).unwrap_err();
        assert_eq!(err.reason, MalformedReason::NonNumericValue, "{values}");
        assert!(err.detail.contains("values.a"), "{}", err.detail);
    }
}

#[test]
fn reason_non_finite_value() {
    for word in ["NaN", "nan", "inf", "-inf", "Infinity", "-Infinity"] {
        let err = decode(&flat_with_values(&format!(r#"{{"x":1,"a":"{word}"}}"#))).unwrap_err();
        assert_eq!(err.reason, MalformedReason::NonFiniteValue, "{word}");
        assert!(err.detail.contains("values.a"), "{}", err.detail);
    }
    for num in ["1e999", "-1e999", "123456789e400"] {
        let msg = flat_with_values(&format!(r#"{{"x":1,"a":{num}}}"#));
        assert_eq!(reason(&msg), MalformedReason::NonFiniteValue, "{num}");
    }
    // The first bad value decides the reason.
    assert_eq!(
        reason(&flat_with_values(r#"{"a":"NaN","b":"x"}"#)),
        MalformedReason::NonFiniteValue
    );
    assert_eq!(
        reason(&flat_with_values(r#"{"b":"x","a":"NaN"}"#)),
        MalformedReason::NonNumericValue
    );
    assert_eq!(
        reason(&core_with_features(r#"{"e":{"properties":{"v":1e999}}}"#)),
        MalformedReason::NonFiniteValue
    );
}

#[test]
fn reason_no_values() {
    for msg in [
        r#"{"thing_id":"t","ts":1767225600000}"#.to_string(),
        flat_with_values("{}"),
        flat_with_values(r#"{"a":null,"b":null}"#),
        flat_with_values("null"),
        flat_with_values("[1,2]"),
        flat_with_values("5"),
        flat_with_values(r#""a""#),
        core_with_features("{}"),
        core_with_features(r#"{"e":{"properties":{"status":"running","on":true,"x":null}}}"#),
        core_with_features(r#"{"e":{"definition":["x:y:1"]}}"#),
        core_with_features("[1]"),
        core_with_features("null"),
        r#"{"event":"StateChanged","thing_id":"t","timestamp":"2026-01-27T14:30:00Z"}"#.to_string(),
    ] {
        assert_eq!(reason(&msg), MalformedReason::NoValues, "{msg}");
    }
}

#[test]
fn reason_bad_label() {
    for label in ["2", "-1", "0.5", r#""1""#, "[0]", "{}", "1e999"] {
        let msg =
            format!(r#"{{"thing_id":"t","ts":1767225600000,"values":{{"a":1}},"label":{label}}}"#);
        assert_eq!(reason(&msg), MalformedReason::BadLabel, "{label}");
    }
}

#[test]
fn reason_unsupported_event() {
    for event in [r#""ThingCreated""#, r#""statechanged""#, "1", "null"] {
        let msg = CORE_EXAMPLE.replace(r#""StateChanged""#, event);
        assert_eq!(reason(&msg), MalformedReason::UnsupportedEvent, "{event}");
    }
}

#[test]
fn reasons_are_listed_and_distinct() {
    let labels: std::collections::BTreeSet<_> =
        MalformedReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), MalformedReason::ALL.len());
    for r in MalformedReason::ALL {
        assert!(r
            .as_str()
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_'));
        assert_eq!(r.to_string(), r.as_str());
    }
    assert!(MalformedReason::ALL.contains(&MalformedReason::BadLabel));
    assert!(MalformedReason::ALL.contains(&MalformedReason::UnsupportedEvent));
}

// ---- EgizCore ----

#[test]
fn core_design_example() {
    let p = decode(CORE_EXAMPLE).unwrap();
    assert_eq!(p.thing_id, "factory:oven-001");
    assert_eq!(p.equipment_type, "oven");
    assert_eq!(p.ts, 1_769_524_200_000);
    assert_eq!(p.label, None);
    assert_eq!(
        names(&p),
        [
            "voltage_a",
            "voltage_b",
            "voltage_c",
            "current_a",
            "current_b",
            "current_c",
            "power_factor",
            "temp_zone_1",
            "temp_zone_2",
            "temp_zone_3"
        ]
    );
    assert_eq!(p.value("voltage_a"), Some(220.5));
    assert_eq!(p.value("current_c"), Some(15.5));
    assert_eq!(p.value("power_factor"), Some(0.92));
    assert_eq!(p.value("temp_zone_2"), Some(190.0));
    assert_eq!(p.value("temp_zone_3"), Some(188.5));
}

#[test]
fn core_detection_and_aliases() {
    // `features` alone makes a message EgizCore; `thingId` and `ts` are accepted.
    let p = decode(
        r#"{"thingId":"ns:m1","ts":1767225600000,"features":{"drive":{"properties":{"speed_rpm":900}}}}"#,
    )
    .unwrap();
    assert_eq!(p.thing_id, "ns:m1");
    assert_eq!(p.ts, 1_767_225_600_000);
    assert_eq!(p.values, vec![(Name::from("speed_rpm"), 900.0)]);
    // EgizCore: `timestamp` wins over `ts`; a flat `values` key is not used.
    let p = decode(
        r#"{"event":"StateChanged","thing_id":"t","ts":1767225600000,"timestamp":"2026-01-27T14:30:00Z","values":{"z":1},"features":{"d":{"properties":{"s":1}}}}"#,
    )
    .unwrap();
    assert_eq!(p.ts, 1_769_524_200_000);
    assert_eq!(names(&p), ["s"]);
    // An `event` key makes a message EgizCore even when it also carries `values`.
    assert_eq!(
        reason(r#"{"event":"StateChanged","thing_id":"t","ts":1767225600000,"values":{"a":1}}"#),
        MalformedReason::NoValues
    );
}

#[test]
fn core_ignores_non_numeric_leaves_and_other_keys() {
    let p = decode(&core_with_features(
        r#"{"status":{"properties":{"state":"running","ok":true,"err":null,"code":"NaN","load":0.5},"definition":["a:b:1"]},
            "meta":{"desiredProperties":{"x":1}},"weird":5,"arr":[1,2]}"#,
    ))
    .unwrap();
    assert_eq!(p.values, vec![(Name::from("load"), 0.5)]);
}

#[test]
fn core_arrays_nested_paths_and_defaults() {
    let p = decode(&core_with_features(
        r#"{"vib":{"properties":{"axes":[[1,2],[3]],"bearings":[{"temp":40},{"temp":41,"rms":null}],"a":{"b":{"c":7}}}},
            "pump":{"properties":3}}"#,
    ))
    .unwrap();
    assert_eq!(
        names(&p),
        [
            "axes_1_1",
            "axes_1_2",
            "axes_2_1",
            "bearings_1_temp",
            "bearings_2_temp",
            "a_b_c",
            "pump"
        ]
    );
    assert_eq!(p.value("axes_2_1"), Some(3.0));
    assert_eq!(p.value("bearings_2_temp"), Some(41.0));
    assert_eq!(p.value("pump"), Some(3.0));
}

fn core_decoder(rename: &[(&str, &str)], keep_feature_prefix: bool) -> Decoder {
    let cfg = DecodeConfig {
        egizcore: EgizCoreMapping {
            rename: rename
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            keep_feature_prefix,
        },
        ..DecodeConfig::default()
    };
    Decoder::new(&cfg)
}

#[test]
fn core_rename_rules() {
    let mut d = core_decoder(
        &[
            ("power_factor", "pf"),
            ("features.electrical.properties.voltage.a", "v_l1"),
            ("features.thermal.properties.temperature_zones", "zone"),
            ("current", "amps"),
            ("current_c", "amps_c_exact"),
        ],
        false,
    );
    let p = d.decode(CORE_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(
        names(&p),
        [
            "v_l1",
            "voltage_b",
            "voltage_c",
            // `current` maps only `current_<digit>...`, not `current_a`.
            "current_a",
            "current_b",
            "amps_c_exact",
            "pf",
            "zone_1",
            "zone_2",
            "zone_3"
        ]
    );
    assert_eq!(p.value("v_l1"), Some(220.5));
    assert_eq!(p.value("zone_3"), Some(188.5));
}

#[test]
fn core_rename_suffix_rule_and_precedence() {
    let mut d = core_decoder(
        &[
            ("zones", "z"),
            ("zones_2", "second"),
            ("zones_1_hot", "longest"),
            ("features.f.properties.zones.3", "dotted"),
        ],
        false,
    );
    let p = d
        .decode(
            core_with_features(
                r#"{"f":{"properties":{"zones":[{"hot":1,"cold":2},5,6,7],"zonesx":8}}}"#,
            )
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(
        names(&p),
        ["longest", "z_1_cold", "second", "dotted", "z_4", "zonesx"]
    );
}

#[test]
fn core_keep_feature_prefix() {
    let mut d = core_decoder(&[("thermal_temperature_zones", "tz")], true);
    let p = d.decode(CORE_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(
        names(&p),
        [
            "electrical_voltage_a",
            "electrical_voltage_b",
            "electrical_voltage_c",
            "electrical_current_a",
            "electrical_current_b",
            "electrical_current_c",
            "electrical_power_factor",
            "tz_1",
            "tz_2",
            "tz_3"
        ]
    );
    // Default mapping without the prefix: `temperature_zones` -> `temp_zone`.
    let p = core_decoder(&[], false)
        .decode(CORE_EXAMPLE.as_bytes())
        .unwrap();
    assert!(p.value("temperature_zones_1").is_some());
}

#[test]
fn core_name_collisions_keep_last_value() {
    let p = decode(&core_with_features(
        r#"{"a":{"properties":{"temp":1,"x":0}},"b":{"properties":{"temp":2}}}"#,
    ))
    .unwrap();
    assert_eq!(
        p.values,
        vec![(Name::from("temp"), 2.0), (Name::from("x"), 0.0)]
    );
}

// ---- dead letters ----

#[test]
fn dead_letter_utf8() {
    let raw = "{\"thing_id\":\"é\",\"ts\":5}";
    let m = decode(raw).unwrap_err();
    let dl = DeadLetter::new(&m, raw.as_bytes(), 7, Origin::Line { line: 3 });
    let line = dl.to_json_line();
    assert!(!line.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["reason"], m.reason.as_str());
    assert_eq!(v["detail"], m.detail.as_str());
    assert_eq!(v["seq"], 7);
    assert_eq!(v["origin"], serde_json::json!({"line": 3}));
    assert_eq!(v["raw"], raw);
    assert!(v.get("raw_base64").is_none());
}

#[test]
fn dead_letter_non_utf8_and_no_origin() {
    use base64::Engine as _;
    let raw = [b'{', 0xff, 0xfe, b'}', b'\n'];
    let m = decoder().decode(&raw).unwrap_err();
    assert_eq!(m.reason, MalformedReason::BadJson);
    let line = DeadLetter::new(&m, &raw, 0, Origin::None).to_json_line();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["reason"], "bad_json");
    assert!(v.get("origin").is_none());
    assert!(v.get("raw").is_none());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["raw_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, raw);

    let kafka = Origin::Kafka {
        topic: "telemetry".into(),
        partition: 3,
        offset: 123_456,
    };
    let line = DeadLetter::new(&m, b"x", 9, kafka).to_json_line();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["origin"],
        serde_json::json!({"topic":"telemetry","partition":3,"offset":123456})
    );
    assert_eq!(v["raw"], "x");
}

// ---- robustness ----

/// Decodes `raw`, checking the result is well formed either way; it must not panic.
fn check_total(d: &mut Decoder, raw: &[u8]) {
    match d.decode(raw) {
        Ok(p) => {
            assert!(!p.values.is_empty());
            assert!(p.values.iter().all(|(_, v)| v.is_finite()));
            assert!(!p.thing_id.trim().is_empty());
        }
        Err(m) => assert!(!m.detail.is_empty()),
    }
}

/// Calls `check(message, None)` with every prefix of each seed, then `check(message, Some(seed))`
/// with 3000 mutations of it: one to three random edits each (a byte replaced by a random one, a byte
/// removed, or a byte of `alphabet` inserted).
fn prefixes_and_mutations(
    seeds: &[&str],
    alphabet: &[u8],
    rng: &mut SmallRng,
    mut check: impl FnMut(&[u8], Option<&[u8]>),
) {
    for seed in seeds {
        let b = seed.as_bytes();
        for n in 0..=b.len() {
            check(&b[..n], None);
        }
        for _ in 0..3000 {
            let mut m = b.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..m.len());
                match rng.random_range(0..3) {
                    0 => m[i] = rng.random(),
                    1 => {
                        m.remove(i);
                    }
                    _ => m.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            check(&m, Some(b));
        }
    }
}

#[test]
fn no_panic_on_prefixes_mutations_and_noise() {
    let mut d = decoder();
    let seeds = [
        FLAT_EXAMPLE,
        CORE_EXAMPLE,
        r#"{"thing_id":"a\u00e9\"b","ts":"2026-01-01T00:00:00.5+01:00","values":{"x":null,"y":-1e-5},"label":1}"#,
    ];
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    prefixes_and_mutations(&seeds, b"{}[]\":,0e-.nul\\", &mut rng, |m, _| {
        check_total(&mut d, m)
    });
    for _ in 0..3000 {
        let len = rng.random_range(0..64);
        let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        check_total(&mut d, &noise);
    }
}

#[test]
fn no_panic_on_deep_nesting() {
    let mut d = decoder();
    let deep = 100_000;
    let arrays = "[".repeat(deep);
    let objects = "{\"a\":".repeat(deep);
    for nest in [&arrays, &objects] {
        for msg in [
            nest.clone(),
            flat_with_values(nest),
            format!(r#"{{"thing_id":"t","ts":1767225600000,"values":{{"a":1}},"x":{nest}}}"#),
            format!(r#"{{"thing_id":"t","ts":1767225600000,"values":{{"a":{nest}}}}}"#),
            core_with_features(nest),
            core_with_features(&format!(r#"{{"f":{{"properties":{nest}}}}}"#)),
        ] {
            let cfg = DecodeConfig {
                max_message_bytes: usize::MAX,
                ..DecodeConfig::default()
            };
            let mut big = Decoder::new(&cfg);
            check_total(&mut big, msg.as_bytes());
            check_total(&mut d, msg.as_bytes());
        }
    }
    // Nesting within serde_json's limit is fine for EgizCore properties.
    let p = decode(&core_with_features(&format!(
        r#"{{"f":{{"properties":{}1{}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    )))
    .unwrap();
    assert_eq!(p.values.len(), 1);
    assert!(p.values[0].0.starts_with("1_1_1"));
}

// ---- the specialised flat pass ----

/// `a` and `b` are the same outcome, comparing values bit for bit (`-0.0` is not `0.0` here).
fn assert_same(a: &Result<Point, Malformed>, b: &Result<Point, Malformed>, msg: &[u8]) {
    assert_eq!(a, b, "{}", String::from_utf8_lossy(msg));
    if let (Ok(a), Ok(b)) = (a, b) {
        let bits = |p: &Point| -> Vec<u64> { p.values.iter().map(|(_, v)| v.to_bits()).collect() };
        assert_eq!(bits(a), bits(b), "{}", String::from_utf8_lossy(msg));
    }
}

#[test]
fn fast_pass_takes_plain_flat_messages_only() {
    let mapping = CompiledMapping::default();
    let takes = |msg: &str| {
        let mut scan = Scan::new(&mapping, 8);
        fast::scan_flat(msg.as_bytes(), &mut scan, &mut Default::default())
    };
    assert!(takes(FLAT_EXAMPLE));
    assert!(takes(&format!("  {FLAT_EXAMPLE}\r\n")));
    assert!(takes(
        r#"{"thing_id":"t","ts":"2026-01-01T00:00:00Z","values":{"a":null,"b":-0},"x":true}"#
    ));
    for msg in [
        CORE_EXAMPLE,
        r#"{"thing_id":"t\u0031","ts":1767225600000,"values":{"a":1}}"#,
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":"NaN"}}"#,
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1},"extra":[1]}"#,
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1.00000000000000000001}}"#,
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1e23}}"#,
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":01}}"#,
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1,}}"#,
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1}} x"#,
    ] {
        assert!(!takes(msg), "{msg}");
    }
}

#[test]
fn fast_pass_agrees_with_serde_pass() {
    let mut fast = decoder();
    let mut slow = decoder().serde_only();
    let mut check = |msg: &[u8]| {
        let (a, b) = (fast.decode(msg), slow.decode(msg));
        assert_same(&a, &b, msg);
    };
    let mut rng = SmallRng::seed_from_u64(0xfa57);
    // Numbers: the fast path's forms and its edges (more digits, larger exponents, -0, integers
    // beyond i64), as values, timestamps and labels.
    let mut numbers: Vec<String> = [
        "0",
        "-0",
        "0.0",
        "-0.0",
        "1",
        "-1",
        "0.1",
        "1e0",
        "1E+2",
        "1e-2",
        "-1.5e-7",
        "9007199254740992",
        "9007199254740993",
        "9007199254740993.0",
        "123456789012345678",
        "1234567890123456789",
        "12345678901234567890",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "1e22",
        "1e23",
        "1.7976931348623157e308",
        "1e309",
        "4.9e-324",
        "1e-999",
        "0e9999",
        "1.",
        "-",
        "1e",
        "1e+",
        ".5",
        "00",
        "-01",
        "1.5e3",
        "230.0339",
        "0.9215",
        "1767225600000",
        "1767225600000.0",
        "1.7672256e12",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for _ in 0..3000 {
        let v: f64 = rng.random_range(-1e4..1e4);
        numbers.push(match rng.random_range(0..4) {
            0 => format!("{v}"),
            1 => format!("{v:.4}"),
            2 => format!("{v:e}"),
            _ => format!(
                "{}e{}",
                rng.random_range(0..1u64 << 54),
                rng.random_range(-25..25)
            ),
        });
    }
    for n in &numbers {
        check(flat_with_values(&format!(r#"{{"a":{n},"b":2}}"#)).as_bytes());
        check(flat_with_ts(n).as_bytes());
        check(
            format!(r#"{{"thing_id":"t","ts":1767225600000,"values":{{"a":1}},"label":{n}}}"#)
                .as_bytes(),
        );
    }
    // Keys and strings that are not UTF-8 are the serde pass's to reject.
    check(b"{\"thing_id\":\"t\",\"ts\":1767225600000,\"values\":{\"a\":1},\"\xff\":1}");
    check(b"{\"thing_id\":\"t\",\"ts\":1767225600000,\"values\":{\"\xc3\":1}}");
    check(b"{\"thing_id\":\"\xe9\",\"ts\":1767225600000,\"values\":{\"a\":1}}");
    // Messages, their prefixes and mutations, decoded in sequence so the remembered sensor names of
    // one message meet the next one's keys.
    let seeds = [
        FLAT_EXAMPLE,
        CORE_EXAMPLE,
        r#"{"thing_id":"oven-00000","equipment_type":"oven","ts":1767225600000,"values":{"voltage_a":230.0339,"power_factor":0.9215,"temp_zone_1":189.6486},"label":0}"#,
        r#"{"thingId":"t","timestamp":"2026-01-01T00:00:00Z","ts":1767225600001,"values":{"a":1,"b":null,"a":3},"values":{"c":4}}"#,
        r#"{"thing_id":"a\u00e9\"b","ts":"2026-01-01T00:00:00.5+01:00","values":{"x":null,"y":-1e-5},"label":1}"#,
        r#"{"thing_id":" ","ts":1767225600000,"values":{}}"#,
        r#"{"thing_id":"t","ts":1767225600000,"values":{"a":1},"equipment_type":null,"label":true}"#,
        "{\"thing_id\":\"\u{e9}t\",\"ts\":1767225600000,\"values\":{\"\u{e9}\":1}}",
    ];
    prefixes_and_mutations(&seeds, b"{}[]\":,0e-.nul\\ \t", &mut rng, |m, seed| {
        check(m);
        if let Some(seed) = seed {
            check(seed);
        }
    });
}

#[test]
fn fast_pass_names_follow_the_equipment_type() {
    let mut fast = decoder();
    let mut slow = decoder().serde_only();
    let msg = |thing: &str, etype: Option<&str>, values: &str| {
        let etype = etype.map_or(String::new(), |e| format!(r#""equipment_type":"{e}","#));
        format!(r#"{{"thing_id":"{thing}",{etype}"ts":1767225600000,"values":{{{values}}}}}"#)
    };
    let mut msgs = vec![
        msg(
            "o1",
            Some("oven"),
            r#""v":1,"temp_zone_1":2,"temp_zone_2":3"#,
        ),
        msg(
            "m1",
            Some("mixer"),
            r#""v":4,"vibration_rms":5,"speed_rpm":6"#,
        ),
        msg(
            "o2",
            Some("oven"),
            r#""v":7,"temp_zone_2":8,"temp_zone_1":9"#,
        ),
        msg("x", None, r#""v":10,"speed_rpm":11"#),
        msg(
            "m2",
            Some("mixer"),
            r#""v":12,"vibration_rms":13,"torque":14"#,
        ),
        msg("e", Some("\u{e9}t\u{e9}"), "\"\u{e9}\":15,\"v\":16"),
        msg(
            "m3",
            Some("mixer"),
            r#""v":17,"vibration_rms":18,"torque":19,"extra":20"#,
        ),
    ];
    // More types than the cache keeps templates for.
    for t in 0..40 {
        msgs.push(msg(
            &format!("t{t}"),
            Some(&format!("type{t}")),
            &format!(r#""v":{t},"s{t}":1,"u":2"#),
        ));
    }
    for _ in 0..3 {
        for m in &msgs {
            let (a, b) = (fast.decode(m.as_bytes()), slow.decode(m.as_bytes()));
            assert!(a.is_ok(), "{m}");
            assert_same(&a, &b, m.as_bytes());
        }
    }
    let p = fast.decode(msgs[2].as_bytes()).unwrap();
    assert_eq!(names(&p), ["v", "temp_zone_2", "temp_zone_1"]);
    assert_eq!(p.equipment_type, "oven");
}

/// Repeated keys are merged (the last value at the first position) whether they first appear in a
/// message whose other keys follow the remembered names or in one whose names are all remembered,
/// and a message after them with distinct keys again keeps every value.
#[test]
fn fast_pass_repeated_keys_against_remembered_names() {
    let mut fast = decoder();
    let mut slow = decoder().serde_only();
    let msg = |values: &str| {
        format!(
            r#"{{"thing_id":"t","equipment_type":"oven","ts":1767225600000,"values":{{{values}}}}}"#
        )
    };
    let msgs = [
        msg(r#""a":1,"b":2,"c":3"#),
        msg(r#""a":1,"b":2,"c":3"#),
        msg(r#""a":4,"b":5,"a":6"#),
        msg(r#""a":4,"b":5,"a":6"#),
        msg(r#""a":7,"b":null,"a":8,"c":9"#),
        msg(r#""a":1,"b":2,"c":3"#),
        msg(r#""a":1,"b":2,"c":3,"b":4"#),
        msg(r#""a":1,"b":2,"c":3"#),
    ];
    for m in &msgs {
        let (a, b) = (fast.decode(m.as_bytes()), slow.decode(m.as_bytes()));
        assert!(a.is_ok(), "{m}");
        assert_same(&a, &b, m.as_bytes());
    }
    let p = fast.decode(msgs[3].as_bytes()).unwrap();
    assert_eq!(names(&p), ["a", "b"]);
    assert_eq!(p.value("a"), Some(6.0));
    let p = fast.decode(msgs[6].as_bytes()).unwrap();
    assert_eq!(names(&p), ["a", "b", "c"]);
    assert_eq!(p.value("b"), Some(4.0));
    let p = fast.decode(msgs[7].as_bytes()).unwrap();
    assert_eq!(names(&p), ["a", "b", "c"]);
}
