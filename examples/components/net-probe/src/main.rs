//! Net probe: tries a TCP connection to each `host:port` argument and prints one JSON line per attempt.
//!
//! With `--read FILE` arguments it also tries to read those files. Exit code 0 when every attempt
//! succeeded, 1 otherwise: the runtime's tests use it to show that only granted peers and paths are
//! reachable.

use std::io::Read;
use std::time::Duration;

fn main() {
    let mut all_ok = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--read" {
            let path = args.next().unwrap_or_default();
            let outcome = std::fs::File::open(&path).and_then(|mut f| {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).map(|_| buf.len())
            });
            all_ok &= outcome.is_ok();
            match outcome {
                Ok(n) => println!(
                    "{{\"read\":\"{}\",\"ok\":true,\"bytes\":{n}}}",
                    path.escape_default()
                ),
                Err(e) => println!(
                    "{{\"read\":\"{}\",\"ok\":false,\"error\":\"{}\"}}",
                    path.escape_default(),
                    e.to_string().escape_default()
                ),
            }
            continue;
        }
        let outcome = arg
            .parse::<std::net::SocketAddr>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            // On wasip2 a refused non-blocking connect can come back as Ok: only a socket with a
            // peer is connected.
            .and_then(|stream| match stream.take_error()? {
                Some(e) => Err(e),
                None => stream.peer_addr().map(|_| stream),
            });
        all_ok &= outcome.is_ok();
        match outcome {
            Ok(_) => println!("{{\"connect\":\"{arg}\",\"ok\":true}}"),
            Err(e) => println!(
                "{{\"connect\":\"{arg}\",\"ok\":false,\"error\":\"{}\"}}",
                e.to_string().escape_default()
            ),
        }
    }
    std::process::exit(i32::from(!all_ok));
}
