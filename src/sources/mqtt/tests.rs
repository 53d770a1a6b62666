use super::config::{valid_filter, MqttSourceConfig};
use crate::config::parse_yaml;

#[test]
fn topic_filters_follow_mqtt_rules() {
    for ok in ["factory/+/telemetry", "plant/#", "#", "+", "a/b/c", "+/+/x"] {
        assert!(valid_filter(ok), "{ok}");
    }
    for bad in ["", "plant/#/x", "a+/b", "a/#b", "factory/l+ine"] {
        assert!(!valid_filter(bad), "{bad}");
    }
}

#[test]
fn broker_address_parses_with_default_port() {
    let mut c = MqttSourceConfig::new("127.0.0.1:1884", "t");
    assert_eq!(c.host_port().unwrap(), ("127.0.0.1".into(), 1884));
    c.broker = "mqtt://broker.local".into();
    assert_eq!(c.host_port().unwrap(), ("broker.local".into(), 1883));
    c.broker = "host:notaport".into();
    assert!(c.validate().unwrap_err().contains("bad port"));
}

#[test]
fn config_defaults_and_validation() {
    let c: MqttSourceConfig = parse_yaml(
        "broker: 127.0.0.1:1883\ntopics: [factory/+/telemetry]\n",
        "s.yaml",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.client_id, "egizml");
    assert!(!c.clean_session);
    assert_eq!(c.max_packet_bytes, 1 << 20);

    let bad: MqttSourceConfig = parse_yaml("broker: h:1\ntopics: [a/#/b]\n", "s.yaml").unwrap();
    assert!(bad.validate().unwrap_err().contains("a/#/b"));

    let err = parse_yaml::<MqttSourceConfig>("broker: h:1\ntopics: [a]\nqos: 2\n", "s.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("s.yaml:3:"), "{err}");
    assert!(err.contains("qos"), "{err}");
}
