//! A network namespace joined to the host by a veth pair, for simulated cameras. Needs root and `ip`.

use std::net::Ipv4Addr;
use std::process::Command;

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (iproute2 must be installed; the test needs root)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespace `<prefix>-<pid>`, host side `169.254.<subnet>.1` on `<prefix>h<pid>`, camera side
/// `169.254.<subnet>.2`; removed on drop, even when the test fails.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    pub camera_addr: Ipv4Addr,
}

impl Netns {
    /// `prefix` (three letters) and `subnet_base` keep test files that run at once apart.
    pub fn create(prefix: &str, subnet_base: u8) -> Self {
        let pid = std::process::id();
        let subnet = subnet_base + (pid % 50) as u8;
        let ns = Self {
            name: format!("{prefix}-{pid}"),
            host_if: format!("{prefix}h{pid}"),
            host_addr: Ipv4Addr::new(169, 254, subnet, 1),
            camera_addr: Ipv4Addr::new(169, 254, subnet, 2),
        };
        let peer = format!("{prefix}c{pid}");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        let host = format!("{}/24", ns.host_addr);
        ip(&["addr", "add", &host, "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let cam = format!("{}/24", ns.camera_addr);
        ip(&["-n", &ns.name, "addr", "add", &cam, "dev", &peer]);
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// A socket created inside the namespace (setns affects only the calling thread).
    pub fn socket<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("opening the namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the namespace");
            f().expect("camera socket")
        })
        .join()
        .unwrap()
    }
}

impl Netns {
    /// The camera's WS-Discovery socket: port 3702, joined to the multicast group on its address.
    pub fn wsdiscovery_socket(&self) -> std::net::UdpSocket {
        use edgewasm_discovery_agent::wsdiscovery;
        use socket2::{Domain, Protocol, Socket, Type};
        let addr = self.camera_addr;
        self.socket(move || {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_address(true)?;
            s.bind(&std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, wsdiscovery::PORT).into())?;
            s.join_multicast_v4(&wsdiscovery::MULTICAST_ADDR, &addr)?;
            s.set_multicast_if_v4(&addr)?;
            s.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
            Ok(s.into())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
