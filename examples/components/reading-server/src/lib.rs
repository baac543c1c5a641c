//! Reading server: a wasi:http/proxy component that serves the last sensor reading as JSON.
//!
//! Every request reads the file named by `READING_PATH` (default `/data/last-reading.json`, written by
//! `sensor-logger`; the host grants it read-only) and answers `200` with its content, or `404` with a JSON
//! error when there is no reading yet. `GET /healthz` answers `ok`.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(ReadingServer);

struct ReadingServer;

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), content_type.as_bytes().to_vec()),
        (
            "content-length".to_string(),
            body.len().to_string().into_bytes(),
        ),
    ])
    .expect("valid headers");
    let resp = OutgoingResponse::new(headers);
    resp.set_status_code(status).expect("valid status");
    let outgoing = resp.body().expect("body once");
    ResponseOutparam::set(out, Ok(resp));
    let mut stream = outgoing.write().expect("stream once");
    // Chunks of at most 4 KiB keep each blocking write within what the host accepts at once.
    for chunk in body.chunks(4096) {
        stream.write_all(chunk).expect("write body");
    }
    stream.flush().expect("flush body");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

impl wasip2::exports::http::incoming_handler::Guest for ReadingServer {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if !matches!(request.method(), Method::Get | Method::Head) {
            return respond(
                out,
                405,
                "application/json",
                b"{\"error\":\"method not allowed\"}\n",
            );
        }
        if path == "/healthz" {
            return respond(out, 200, "text/plain", b"ok\n");
        }
        let file =
            std::env::var("READING_PATH").unwrap_or_else(|_| "/data/last-reading.json".to_string());
        match std::fs::read(&file) {
            Ok(body) if !body.is_empty() => respond(out, 200, "application/json", &body),
            Ok(_) => respond(
                out,
                404,
                "application/json",
                b"{\"error\":\"no reading yet\"}\n",
            ),
            Err(e) => {
                let msg = format!(
                    "{{\"error\":\"no reading yet\",\"detail\":\"{}\"}}\n",
                    e.to_string().escape_default()
                );
                respond(out, 404, "application/json", msg.as_bytes());
            }
        }
    }
}
