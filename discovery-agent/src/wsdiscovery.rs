//! WS-Discovery (SOAP-over-UDP) messages: building Probes and tolerantly parsing Hello, Bye,
//! ProbeMatches and Probe from cameras that do not always follow the specification.
//!
//! The parser matches elements by local name only, so undeclared or unusual namespace prefixes do not
//! matter, caps the message size, nesting depth and number of entries, and never panics.

use std::borrow::Cow;

use quick_xml::events::Event;

/// WS-Discovery multicast group.
pub const MULTICAST_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(239, 255, 255, 250);
/// WS-Discovery port.
pub const PORT: u16 = 3702;
/// Messages larger than this are rejected unread (SOAP-over-UDP datagrams are small).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 32;
/// Most ProbeMatch entries, scopes, types or addresses kept from one message.
const MAX_ENTRIES: usize = 64;
/// Longest text kept for one field.
const MAX_TEXT: usize = 4096;

/// What a message says about one endpoint (a Hello, a Bye, or one ProbeMatch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint reference address, usually `urn:uuid:...`: the camera's stable identity.
    pub address: String,
    /// Types by local name (`NetworkVideoTransmitter`, `Device`).
    pub types: Vec<String>,
    pub scopes: Vec<String>,
    pub xaddrs: Vec<String>,
    pub metadata_version: Option<u64>,
}

impl Endpoint {
    /// Whether the endpoint announces itself as an ONVIF camera.
    pub fn is_video_transmitter(&self) -> bool {
        self.types.iter().any(|t| t == "NetworkVideoTransmitter")
    }
}

/// The body of a WS-Discovery message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Hello(Endpoint),
    Bye(Endpoint),
    ProbeMatches(Vec<Endpoint>),
    /// Another agent's (or our own, looped back) Probe, with the types it asks for.
    Probe(Vec<String>),
    /// A message this handler does not use (Resolve, ResolveMatches, faults).
    Other(String),
}

/// A parsed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub action: Option<String>,
    pub message_id: Option<String>,
    pub relates_to: Option<String>,
    pub body: Body,
}

/// Why a datagram was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("no SOAP Body")]
    NoBody,
    #[error("{0} without an endpoint address")]
    NoAddress(&'static str),
}

impl ParseError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "oversized",
            Self::Xml(_) => "malformed",
            Self::TooDeep => "too-deep",
            Self::NoBody => "no-body",
            Self::NoAddress(_) => "no-address",
        }
    }
}

/// The character an entity or character reference stands for (`&amp;`, `&#x41;`); none for others.
pub(crate) fn entity_char(r: &quick_xml::events::BytesRef<'_>) -> Option<char> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => Some(c),
        _ => match r.as_ref() {
            b"amp" => Some('&'),
            b"lt" => Some('<'),
            b"gt" => Some('>'),
            b"quot" => Some('"'),
            b"apos" => Some('\''),
            _ => None,
        },
    }
}

/// An element's name without its namespace prefix.
pub(crate) fn local(name: &[u8]) -> Cow<'_, str> {
    let name = name.rsplit(|&b| b == b':').next().unwrap_or(name);
    String::from_utf8_lossy(name)
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .take(MAX_ENTRIES)
        .map(str::to_string)
        .collect()
}

/// Parse one datagram.
pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
    if datagram.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge);
    }
    let text = String::from_utf8_lossy(datagram);
    let mut reader = quick_xml::Reader::from_str(&text);
    reader.config_mut().check_end_names = false;

    let mut path: Vec<String> = Vec::new();
    let mut text_buf = String::new();
    let mut msg = Message {
        action: None,
        message_id: None,
        relates_to: None,
        body: Body::Other(String::new()),
    };
    let mut body_kind: Option<String> = None;
    let mut current = Endpoint::default();
    let mut matches: Vec<Endpoint> = Vec::new();
    let mut probe_types = Vec::new();

    loop {
        let event = reader
            .read_event()
            .map_err(|e| ParseError::Xml(e.to_string()))?;
        match event {
            Event::Start(e) => {
                if path.len() >= MAX_DEPTH {
                    return Err(ParseError::TooDeep);
                }
                let name = local(e.name().as_ref()).into_owned();
                if path.last().is_some_and(|p| p == "Body") && body_kind.is_none() {
                    body_kind = Some(name.clone());
                }
                if name == "ProbeMatch" {
                    current = Endpoint::default();
                }
                path.push(name);
                text_buf.clear();
            }
            Event::Empty(e) => {
                let name = local(e.name().as_ref()).into_owned();
                if path.last().is_some_and(|p| p == "Body") && body_kind.is_none() {
                    body_kind = Some(name);
                }
            }
            Event::Text(t) => push_text(
                &mut text_buf,
                &t.xml_content()
                    .map_err(|e| ParseError::Xml(e.to_string()))?,
            ),
            Event::CData(t) => push_text(&mut text_buf, &String::from_utf8_lossy(&t)),
            Event::GeneralRef(r) => {
                if let Some(c) = entity_char(&r) {
                    push_text(&mut text_buf, c.encode_utf8(&mut [0; 4]));
                }
            }
            Event::End(_) => {
                let Some(name) = path.pop() else {
                    return Err(ParseError::Xml("unbalanced end tag".into()));
                };
                let field = std::mem::take(&mut text_buf);
                let field = field.trim();
                let parent = path.last().map(String::as_str);
                let in_header = path.iter().any(|p| p == "Header");
                match name.as_str() {
                    "Action" if in_header => msg.action = Some(field.to_string()),
                    "MessageID" if in_header => msg.message_id = Some(field.to_string()),
                    "RelatesTo" if in_header => msg.relates_to = Some(field.to_string()),
                    "Address" if parent == Some("EndpointReference") => {
                        current.address = field.to_string();
                    }
                    "Types" if body_kind.as_deref() == Some("Probe") => {
                        probe_types = words(field)
                            .iter()
                            .map(|t| local(t.as_bytes()).into_owned())
                            .collect();
                    }
                    "Types" => {
                        current.types = words(field)
                            .iter()
                            .map(|t| local(t.as_bytes()).into_owned())
                            .collect();
                    }
                    "Scopes" => current.scopes = words(field),
                    "XAddrs" => current.xaddrs = words(field),
                    "MetadataVersion" => current.metadata_version = field.parse().ok(),
                    "ProbeMatch" => {
                        let m = std::mem::take(&mut current);
                        if m.address.is_empty() {
                            return Err(ParseError::NoAddress("ProbeMatch"));
                        }
                        if matches.len() < MAX_ENTRIES {
                            matches.push(m);
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let kind = body_kind.ok_or(ParseError::NoBody)?;
    msg.body = match kind.as_str() {
        "Hello" | "Bye" if current.address.is_empty() => {
            return Err(ParseError::NoAddress(if kind == "Hello" {
                "Hello"
            } else {
                "Bye"
            }));
        }
        "Hello" => Body::Hello(current),
        "Bye" => Body::Bye(current),
        "ProbeMatches" => Body::ProbeMatches(matches),
        "Probe" => Body::Probe(probe_types),
        _ => Body::Other(kind),
    };
    Ok(msg)
}

fn push_text(buf: &mut String, s: &str) {
    if buf.len() + s.len() <= MAX_TEXT {
        buf.push_str(s);
    }
}

/// A Probe for ONVIF cameras (`NetworkVideoTransmitter`) with the given message id (`urn:uuid:...`).
pub fn probe(message_id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl">
  <s:Header>
    <a:Action s:mustUnderstand="1">http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action>
    <a:MessageID>{message_id}</a:MessageID>
    <a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>
    <a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>
  </s:Header>
  <s:Body>
    <d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe>
  </s:Body>
</s:Envelope>"#
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn our_probe_parses_as_a_probe() {
        let m = parse(probe("urn:uuid:1").as_bytes()).unwrap();
        assert_eq!(m.message_id.as_deref(), Some("urn:uuid:1"));
        assert_eq!(m.body, Body::Probe(vec!["NetworkVideoTransmitter".into()]));
    }

    #[test]
    fn tolerates_unbound_prefixes_and_missing_app_sequence() {
        let m = parse(
            b"<e:Envelope><e:Body><d:Hello><a:EndpointReference><a:Address>urn:uuid:x</a:Address></a:EndpointReference>\
              <d:Types>netwsdl:NetworkVideoTransmitter</d:Types><d:XAddrs>http://10.0.0.2/onvif/device_service\n  http://[fe80::1]/onvif</d:XAddrs>\
              </d:Hello></e:Body></e:Envelope>",
        )
        .unwrap();
        let Body::Hello(ep) = m.body else {
            panic!("{m:?}")
        };
        assert!(ep.is_video_transmitter());
        assert_eq!(ep.xaddrs.len(), 2);
    }

    #[test]
    fn rejects_hostile_input() {
        assert_eq!(
            parse(&vec![b' '; MAX_MESSAGE_BYTES + 1]),
            Err(ParseError::TooLarge)
        );
        assert_eq!(parse(b""), Err(ParseError::NoBody));
        assert!(parse(b"<Envelope><Body><Bye></Bye></Body></Envelope>").is_err());
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(ParseError::TooDeep));
        assert!(parse(b"<Envelope><Body><Hello>&bogus;<<</Hello>").is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&data);
        }

        #[test]
        fn never_panics_on_mangled_messages(cut in 0usize..1200, junk in "[<>/&;:a-zA-Z ]{0,40}") {
            let mut m = probe("urn:uuid:2");
            let cut = cut.min(m.len());
            let cut = (0..=cut).rev().find(|&i| m.is_char_boundary(i)).unwrap_or(0);
            m.insert_str(cut, &junk);
            let _ = parse(m.as_bytes());
            let _ = parse(&m.as_bytes()[..cut]);
        }
    }
}
