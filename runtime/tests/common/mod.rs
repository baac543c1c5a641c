//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use edgewasm_runtime::{Host, HostConfig};

/// The example components, built once (cargo keeps them up to date across runs).
pub fn examples() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/components");
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("target"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .expect("run cargo to build the example components");
        assert!(status.success(), "building examples/components failed (is the wasm32-wasip2 target installed? run `make deps`)");
        root.join("target/wasm32-wasip2/release")
    })
}

pub fn example(name: &str) -> PathBuf {
    examples().join(format!("{name}.wasm"))
}

/// One host per test binary, with a code cache shared across runs.
pub fn host() -> Arc<Host> {
    static HOST: OnceLock<Arc<Host>> = OnceLock::new();
    Arc::clone(HOST.get_or_init(|| {
        Host::new(HostConfig {
            cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("edgewasm-code-cache")),
            ..HostConfig::default()
        })
        .expect("host")
    }))
}

/// A network namespace with its loopback up, for one test; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `prefix` names the test file, so files that run at once do not collide.
    pub fn create(prefix: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the network namespace tests need root (CI runs as root)"
        );
        let name = format!("{prefix}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("run `ip` (iproute2)");
            assert!(status.success(), "ip {args:?} failed");
        };
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Connects to `addr` from inside the namespace (on a thread that entered it).
    pub fn connect_inside(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<std::net::TcpStream> {
        let path = self.path();
        std::thread::spawn(move || {
            let f = std::fs::File::open(path)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
