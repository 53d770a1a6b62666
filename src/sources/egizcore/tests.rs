use super::config::{resolve_token, EgizCoreSourceConfig};
use super::{classify, Frame};
use crate::config::parse_yaml;

#[test]
fn endpoint_appends_the_ws_path_and_default_port() {
    let mut c = EgizCoreSourceConfig::new("ws://127.0.0.1:8081", &["oven"]);
    let e = c.endpoint().unwrap();
    assert_eq!(e.addr, "127.0.0.1:8081");
    assert_eq!(e.url, "ws://127.0.0.1:8081/api/v1/ws");
    c.url = "ws://egizcore.plant/core/".into();
    let e = c.endpoint().unwrap();
    assert_eq!(e.addr, "egizcore.plant:80");
    assert_eq!(e.url, "ws://egizcore.plant:80/core/api/v1/ws");
    c.url = "ws://[::1]:9000".into();
    assert_eq!(c.endpoint().unwrap().addr, "[::1]:9000");
    for (bad, why) in [
        ("http://h:1", "must start with ws://"),
        ("wss://h:1", "not supported"),
        ("ws://h:notaport", "bad host or port"),
        ("ws://", "needs a host"),
        ("ws://user@h:1", "needs a host"),
    ] {
        c.url = bad.into();
        let err = c.validate().unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(err.starts_with("egizcore.url"), "{err}");
    }
}

#[test]
fn config_defaults_validation_and_unknown_fields() {
    let c: EgizCoreSourceConfig = parse_yaml(
        "url: ws://127.0.0.1:8080\nequipment_types: [oven, mixer]\n",
        "s.yaml",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.min_reconnect_delay_ms, 100);
    assert_eq!(c.max_reconnect_delay_ms, 30_000);
    assert_eq!(c.ping_interval_s, 20.0);
    assert_eq!(c.equipment_types, ["oven", "mixer"]);

    let mut bad = c.clone();
    bad.equipment_types.clear();
    assert!(bad
        .validate()
        .unwrap_err()
        .contains("egizcore.equipment_types"));
    let mut bad = c.clone();
    bad.max_reconnect_delay_ms = 10;
    assert!(bad
        .validate()
        .unwrap_err()
        .contains("egizcore.max_reconnect_delay_ms"));
    let mut bad = c.clone();
    bad.ping_interval_s = 0.0;
    assert!(bad.validate().unwrap_err().contains("ping_interval_s"));

    let err = parse_yaml::<EgizCoreSourceConfig>(
        "url: ws://h:1\nequipment_types: [oven]\nreconnect: fast\n",
        "s.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("s.yaml:3:"), "{err}");
    assert!(err.contains("reconnect"), "{err}");
}

#[test]
fn token_comes_from_the_file_or_the_environment() {
    assert_eq!(resolve_token(None, None).unwrap(), None);
    assert_eq!(
        resolve_token(Some("abc"), None).unwrap().as_deref(),
        Some("abc")
    );
    assert!(resolve_token(Some("a"), Some("B"))
        .unwrap_err()
        .contains("not both"));
    assert!(resolve_token(Some(" "), None)
        .unwrap_err()
        .contains("egizcore.token"));
    // PATH is set in any test environment; an unset name is an error naming the variable.
    assert!(resolve_token(None, Some("PATH")).unwrap().is_some());
    let err = resolve_token(None, Some("EGIZML_SURELY_UNSET_TOKEN_VAR")).unwrap_err();
    assert!(err.contains("EGIZML_SURELY_UNSET_TOKEN_VAR"), "{err}");
}

#[test]
fn frames_are_data_unless_they_are_control_messages() {
    let state = br#"{"event":"StateChanged","thing_id":"factory:oven-001","timestamp":"2026-01-27T14:30:00Z","features":{}}"#;
    assert_eq!(classify(state), Frame::Data);
    assert_eq!(
        classify(br#"{"type":"subscribed","equipment_types":["oven"]}"#),
        Frame::Subscribed
    );
    assert_eq!(
        classify(br#"{"type":"error","message":"unknown equipment type"}"#),
        Frame::Error("unknown equipment type".into())
    );
    assert_eq!(
        classify(br#"{"type":"heartbeat"}"#),
        Frame::OtherControl("heartbeat".into())
    );
    // Malformed input is data: the decoder dead-letters it with its reason.
    for bad in [&b"{not json"[..], b"[]", b"", b"{\"type\":3}", b"\xff\xfe"] {
        assert_eq!(classify(bad), Frame::Data, "{bad:?}");
    }
    // A control-looking frame that also carries `event` is data (a StateChanged with a `type` field).
    assert_eq!(
        classify(br#"{"type":"subscribed","event":"StateChanged"}"#),
        Frame::Data
    );
}
