//! Golden-file tests of the WS-Discovery parser, from messages written in the shape of the
//! WS-Discovery and ONVIF specifications' examples.

use std::net::IpAddr;

use edgewasm_discovery_agent::onvif::describe;
use edgewasm_discovery_agent::wsdiscovery::{Body, parse};

const CAMERA: &str = "urn:uuid:98190dc2-0890-4ef8-ac9a-5940995e6119";

#[test]
fn hello() {
    let m = parse(include_bytes!("golden/hello.xml")).unwrap();
    assert_eq!(
        m.action.as_deref(),
        Some("http://schemas.xmlsoap.org/ws/2005/04/discovery/Hello")
    );
    assert_eq!(
        m.message_id.as_deref(),
        Some("urn:uuid:0a6dc791-2be6-4991-9af1-454778a1917a")
    );
    let Body::Hello(ep) = m.body else {
        panic!("not a Hello: {m:?}")
    };
    assert_eq!(ep.address, CAMERA);
    assert!(ep.is_video_transmitter());
    assert_eq!(ep.scopes.len(), 4);
    assert_eq!(ep.xaddrs, ["http://192.0.2.10/onvif/device_service"]);
    assert_eq!(ep.metadata_version, Some(75965));

    let d = describe(
        &ep,
        "192.0.2.10".parse::<IpAddr>().unwrap(),
        Some("00:00:5e:00:53:10".into()),
    );
    assert_eq!(d.identity, CAMERA);
    assert_eq!(d.properties["ip"], "192.0.2.10");
    assert_eq!(
        d.properties["xaddrs"],
        "http://192.0.2.10/onvif/device_service"
    );
    assert_eq!(d.properties["name"], "Lobby");
    assert_eq!(d.properties["model"], "ExampleCam-100");
    assert_eq!(d.properties["mac"], "00:00:5e:00:53:10");
    assert!(d.properties["scopes"].contains("onvif://www.onvif.org/location/building/1"));
}

#[test]
fn bye() {
    let m = parse(include_bytes!("golden/bye.xml")).unwrap();
    let Body::Bye(ep) = m.body else {
        panic!("not a Bye: {m:?}")
    };
    assert_eq!(ep.address, CAMERA);
    assert!(ep.xaddrs.is_empty());
}

#[test]
fn probe() {
    let m = parse(include_bytes!("golden/probe.xml")).unwrap();
    assert_eq!(
        m.message_id.as_deref(),
        Some("uuid:84ede3de-7dec-11d0-c360-f01234567890")
    );
    assert_eq!(
        m.body,
        Body::Probe(vec!["NetworkVideoTransmitter".into(), "Device".into()])
    );
}

#[test]
fn probe_matches() {
    let m = parse(include_bytes!("golden/probe_matches.xml")).unwrap();
    assert_eq!(
        m.relates_to.as_deref(),
        Some("uuid:84ede3de-7dec-11d0-c360-f01234567890")
    );
    let Body::ProbeMatches(eps) = m.body else {
        panic!("not ProbeMatches: {m:?}")
    };
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0].address, CAMERA);
    assert_eq!(eps[0].types, ["NetworkVideoTransmitter", "Device"]);
    assert_eq!(eps[0].xaddrs.len(), 2);
    assert_eq!(eps[1].scopes, ["onvif://www.onvif.org/name/Yard&Gate"]);
    assert_eq!(eps[1].metadata_version, None);

    let d = describe(&eps[0], "192.0.2.10".parse::<IpAddr>().unwrap(), None);
    assert_eq!(d.properties["ip"], "192.0.2.10");
    assert_eq!(d.properties["port"], "8080");
    assert_eq!(
        d.properties["xaddrs"],
        "http://192.0.2.10:8080/onvif/device_service http://[fe80::200:5eff:fe00:5310]/onvif/device_service"
    );
    let d = describe(&eps[1], "192.0.2.11".parse::<IpAddr>().unwrap(), None);
    assert_eq!(d.properties["ip"], "192.0.2.11");
    assert!(!d.properties.contains_key("port"));
}
