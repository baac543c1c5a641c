//! ONVIF conventions shared by the discovery agent (GetDeviceInformation) and the runtime (a camera's
//! snapshot URI): the SOAP 1.2 envelope and the WS-Security UsernameToken with a PasswordDigest.

use base64::Engine as _;
use sha1::Digest as _;

/// WS-Security PasswordDigest: `Base64(SHA-1(nonce + created + password))`.
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(nonce);
    h.update(created.as_bytes());
    h.update(password.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The `<s:Header>` carrying a UsernameToken for `username`/`password`; `created` is the request
/// time as `YYYY-MM-DDThh:mm:ssZ`, `nonce` fresh random bytes.
pub fn security_header(username: &str, password: &str, nonce: &[u8], created: &str) -> String {
    format!(
        concat!(
            r#"<s:Header><wsse:Security s:mustUnderstand="1" "#,
            r#"xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" "#,
            r#"xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">"#,
            "<wsse:UsernameToken><wsse:Username>{user}</wsse:Username>",
            r#"<wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{digest}</wsse:Password>"#,
            r#"<wsse:Nonce EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary">{nonce}</wsse:Nonce>"#,
            "<wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security></s:Header>"
        ),
        user = escape(username),
        digest = password_digest(nonce, created, password),
        nonce = base64::engine::general_purpose::STANDARD.encode(nonce),
        created = escape(created),
    )
}

/// A SOAP 1.2 envelope around `body`, with `header` (empty, or [`security_header`]) and extra
/// namespace declarations (`xmlns:tds="..."`) on the envelope.
pub fn envelope(namespaces: &str, header: &str, body: &str) -> String {
    let sep = if namespaces.is_empty() { "" } else { " " };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"{sep}{namespaces}>{header}<s:Body>{body}</s:Body></s:Envelope>"#
    )
}

/// The SOAP action of GetSystemDateAndTime. Cameras answer it without credentials; clients sign with
/// the camera's clock, because cameras at the edge often run without NTP and refuse a digest whose
/// `Created` is far from their own time.
pub const GET_SYSTEM_DATE_AND_TIME_ACTION: &str =
    "http://www.onvif.org/ver10/device/wsdl/GetSystemDateAndTime";
/// The body of GetSystemDateAndTime.
pub const GET_SYSTEM_DATE_AND_TIME: &str =
    r#"<GetSystemDateAndTime xmlns="http://www.onvif.org/ver10/device/wsdl"/>"#;

/// The camera's clock (UTC, seconds since the epoch) from a GetSystemDateAndTime answer.
pub fn camera_utc(answer: &str) -> Option<i64> {
    let start = answer.find("UTCDateTime>")?;
    let section = &answer[start..];
    let section = &section[..section[1..]
        .find("UTCDateTime>")
        .map_or(section.len(), |e| e + 1)];
    let num = |name: &str| element_text(section, name)?.trim().parse::<i64>().ok();
    let date = jiff::civil::Date::new(
        i16::try_from(num("Year")?).ok()?,
        i8::try_from(num("Month")?).ok()?,
        i8::try_from(num("Day")?).ok()?,
    )
    .ok()?;
    let time = jiff::civil::Time::new(
        i8::try_from(num("Hour")?).ok()?,
        i8::try_from(num("Minute")?).ok()?,
        i8::try_from(num("Second")?).ok()?,
        0,
    )
    .ok()?;
    let at = date
        .to_datetime(time)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()?;
    Some(at.timestamp().as_second())
}

/// `Created` for a UsernameToken: `unix_secs` as `YYYY-MM-DDThh:mm:ssZ`.
pub fn created(unix_secs: i64) -> String {
    jiff::Timestamp::from_second(unix_secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The text of the first element with this local name (`<tt:Year>2026</tt:Year>` for `Year`).
fn element_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    xml.match_indices('<').find_map(|(i, _)| {
        let tag = &xml[i + 1..];
        let end = tag.find(['>', ' ', '/'])?;
        if tag[..end].rsplit(':').next()? != name {
            return None;
        }
        let text = &tag[tag.find('>')? + 1..];
        Some(&text[..text.find('<')?])
    })
}

/// Escapes text for an XML element or attribute value.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_ws_security_example() {
        // From the ONVIF Application Programmer's Guide (5.12.2.1).
        let nonce = base64::engine::general_purpose::STANDARD
            .decode("LKqI6G/AikKCQrN0zqZFlg==")
            .unwrap();
        assert_eq!(
            password_digest(&nonce, "2010-09-16T07:50:45Z", "userpassword"),
            "tuOSpGlFlIXsozq4HFNeeGeFLEI="
        );
    }

    #[test]
    fn the_cameras_clock_is_read_from_its_utc_date_and_time() {
        let answer = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><env:Body><tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>Manual</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>CET-1</tt:TZ></tt:TimeZone><tt:UTCDateTime><tt:Time><tt:Hour>19</tt:Hour><tt:Minute>13</tt:Minute><tt:Second>12</tt:Second></tt:Time><tt:Date><tt:Year>2026</tt:Year><tt:Month>11</tt:Month><tt:Day>26</tt:Day></tt:Date></tt:UTCDateTime><tt:LocalDateTime><tt:Time><tt:Hour>20</tt:Hour><tt:Minute>13</tt:Minute><tt:Second>12</tt:Second></tt:Time><tt:Date><tt:Year>2026</tt:Year><tt:Month>11</tt:Month><tt:Day>26</tt:Day></tt:Date></tt:LocalDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></env:Body></env:Envelope>"#;
        assert_eq!(camera_utc(answer), Some(1_795_720_392));
        assert_eq!(created(1_795_720_392), "2026-11-26T19:13:12Z");
        assert_eq!(created(0), "1970-01-01T00:00:00Z");
        // Only local time, out-of-range fields or garbage: no clock.
        assert_eq!(camera_utc(&answer.replace("UTCDateTime", "Other")), None);
        assert_eq!(
            camera_utc(&answer.replacen("<tt:Month>11</tt:Month>", "<tt:Month>13</tt:Month>", 1)),
            None
        );
        assert_eq!(camera_utc("not xml"), None);
    }

    #[test]
    fn header_escapes_the_username_and_carries_the_token() {
        let h = security_header("a<b", "pw", b"0123456789abcdef", "2026-01-01T00:00:00Z");
        assert!(h.contains("<wsse:Username>a&lt;b</wsse:Username>"), "{h}");
        assert!(
            h.contains("<wsu:Created>2026-01-01T00:00:00Z</wsu:Created>"),
            "{h}"
        );
        assert!(h.contains(&password_digest(
            b"0123456789abcdef",
            "2026-01-01T00:00:00Z",
            "pw"
        )));
        assert!(!h.contains("pw<"), "the password itself never goes out");
        let e = envelope(r#"xmlns:tds="urn:x""#, &h, "<tds:Get/>");
        assert!(e.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="urn:x"><s:Header>"#), "{e}");
        assert!(
            e.ends_with("<s:Body><tds:Get/></s:Body></s:Envelope>"),
            "{e}"
        );
    }
}
