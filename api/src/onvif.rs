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
