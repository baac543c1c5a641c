//! The benchmark guest: prints a line and exits, or with `SLEEP_SECONDS` set idles that long (an idle
//! running instance for the memory figure). `benches/hello.c` is the same program for runc.

fn main() {
    println!("hello from edgewasm-bench");
    if let Some(secs) = std::env::var("SLEEP_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}
