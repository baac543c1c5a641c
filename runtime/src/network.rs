//! Network grants as a policy: which peers a guest may reach through wasi:sockets and outgoing wasi:http.
//!
//! Everything not matched by a rule is denied: the guest gets `access-denied` (sockets) or
//! `HTTP-request-denied` (http), never a connection. A guest cannot listen or accept (a served
//! `wasi:http/proxy` listens through the host, not through wasi:sockets).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use edgewasm_api::{NetworkGrant, Protocol};
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::Error;

/// The parsed `grants.network` of one instance.
#[derive(Clone, Debug, Default)]
pub(crate) struct NetPolicy {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    target: Target,
    port: Option<u16>,
    protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Ip(IpAddr),
    Cidr(IpAddr, u8),
    Name(String),
}

/// The transport a connection attempt uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Udp,
}

impl NetPolicy {
    pub(crate) fn from_grants(grants: &[NetworkGrant]) -> Result<Self, Error> {
        let rules = grants
            .iter()
            .map(|g| {
                let invalid = |reason: &str| Error::InvalidGrant {
                    grant: format!("network host {:?}", g.host),
                    reason: reason.to_string(),
                };
                if g.port == Some(0) {
                    return Err(invalid("port 0 is not a destination port"));
                }
                Ok(Rule {
                    target: parse_target(&g.host).map_err(|r| invalid(&r))?,
                    port: g.port,
                    protocol: g.protocol,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    pub(crate) fn allows_transport(&self, transport: Transport) -> bool {
        self.rules
            .iter()
            .any(|r| proto_matches(r.protocol, transport))
    }

    /// Whether any rule names a host by DNS name (the guest then needs name lookups).
    pub(crate) fn has_names(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.target, Target::Name(_)))
    }

    /// Whether `addr` is a granted peer for `transport`, resolving granted names as needed.
    pub(crate) async fn allows_addr(&self, addr: SocketAddr, transport: Transport) -> bool {
        let ip = addr.ip().to_canonical();
        for rule in &self.rules {
            if !proto_matches(rule.protocol, transport)
                || rule.port.is_some_and(|p| p != addr.port())
            {
                continue;
            }
            let hit = match &rule.target {
                Target::Ip(granted) => *granted == ip,
                Target::Cidr(net, prefix) => in_cidr(ip, *net, *prefix),
                Target::Name(name) => resolve(name, addr.port()).await.contains(&ip),
            };
            if hit {
                return true;
            }
        }
        false
    }

    /// Whether an outgoing HTTP request to `host:port` is granted: a granted name matches by name,
    /// anything else must resolve only to granted addresses.
    pub(crate) async fn allows_http(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = host.to_ascii_lowercase();
        let by_name = self.rules.iter().any(|r| {
            proto_matches(r.protocol, Transport::Tcp)
                && r.port.is_none_or(|p| p == port)
                && r.target == Target::Name(name.clone())
        });
        if by_name {
            return true;
        }
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => resolve(host, port).await,
        };
        if addrs.is_empty() {
            return false;
        }
        for ip in addrs {
            if !self
                .allows_addr(SocketAddr::new(ip, port), Transport::Tcp)
                .await
            {
                return false;
            }
        }
        true
    }

    /// The `wasi:sockets` check: connect/send/receive only to granted peers; binds only the implicit
    /// wildcard bind of an outgoing socket; no listening, no accepting.
    pub(crate) async fn allows_socket_use(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        match use_ {
            SocketAddrUse::TcpBind => {
                self.allows_transport(Transport::Tcp)
                    && addr.ip().is_unspecified()
                    && addr.port() == 0
            }
            SocketAddrUse::UdpBind => {
                self.allows_transport(Transport::Udp)
                    && addr.ip().is_unspecified()
                    && addr.port() == 0
            }
            SocketAddrUse::TcpConnect => self.allows_addr(addr, Transport::Tcp).await,
            SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                self.allows_addr(addr, Transport::Udp).await
            }
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
        }
    }

    /// Installs the policy into a WASI context builder.
    pub(crate) fn apply(self: &Arc<Self>, builder: &mut wasmtime_wasi::WasiCtxBuilder) {
        builder.allow_tcp(self.allows_transport(Transport::Tcp));
        builder.allow_udp(self.allows_transport(Transport::Udp));
        builder.allow_ip_name_lookup(self.has_names());
        let policy = Arc::clone(self);
        builder.socket_addr_check(move |addr, use_| {
            let policy = Arc::clone(&policy);
            Box::pin(async move { policy.allows_socket_use(addr, use_).await })
        });
    }
}

fn proto_matches(granted: Protocol, transport: Transport) -> bool {
    matches!(
        (granted, transport),
        (Protocol::Any, _) | (Protocol::Tcp, Transport::Tcp) | (Protocol::Udp, Transport::Udp)
    )
}

fn parse_target(host: &str) -> Result<Target, String> {
    let host = host.trim();
    if let Some((ip, prefix)) = host.split_once('/') {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max} bits"));
        }
        return Ok(Target::Cidr(ip.to_canonical(), prefix));
    }
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(Target::Ip(ip.to_canonical()));
    }
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid_name {
        Ok(Target::Name(host.to_ascii_lowercase()))
    } else {
        Err("not an IP address, CIDR block or DNS name".to_string())
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The addresses `name` resolves to (in the calling thread's network namespace); empty on failure.
async fn resolve(name: &str, port: u16) -> Vec<IpAddr> {
    match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => addrs.map(|a| a.ip().to_canonical()).collect(),
        Err(e) => {
            tracing::debug!(name, error = %e, "granted name does not resolve");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(grants: &[(&str, Option<u16>, Protocol)]) -> NetPolicy {
        NetPolicy::from_grants(
            &grants
                .iter()
                .map(|(h, p, proto)| NetworkGrant {
                    host: (*h).to_string(),
                    port: *p,
                    protocol: *proto,
                })
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn matches_ip_cidr_port_and_protocol() {
        let p = policy(&[
            ("192.0.2.10", Some(502), Protocol::Tcp),
            ("198.51.100.0/24", None, Protocol::Udp),
            ("2001:db8::/32", Some(80), Protocol::Any),
        ]);
        let cases = [
            ("192.0.2.10:502", Transport::Tcp, true),
            ("192.0.2.10:503", Transport::Tcp, false),
            ("192.0.2.10:502", Transport::Udp, false),
            ("192.0.2.11:502", Transport::Tcp, false),
            ("198.51.100.77:9999", Transport::Udp, true),
            ("198.51.101.1:9999", Transport::Udp, false),
            ("[2001:db8::1]:80", Transport::Tcp, true),
            ("[2001:db8::1]:80", Transport::Udp, true),
            ("[2001:db9::1]:80", Transport::Tcp, false),
            ("[::ffff:192.0.2.10]:502", Transport::Tcp, true),
        ];
        for (a, t, want) in cases {
            assert_eq!(p.allows_addr(addr(a), t).await, want, "{a} {t:?}");
        }
    }

    #[tokio::test]
    async fn sockets_cannot_listen_or_bind_ports() {
        let p = policy(&[("127.0.0.1", None, Protocol::Any)]);
        assert!(
            p.allows_socket_use(addr("0.0.0.0:0"), SocketAddrUse::TcpBind)
                .await
        );
        assert!(
            !p.allows_socket_use(addr("0.0.0.0:8080"), SocketAddrUse::TcpBind)
                .await
        );
        assert!(
            !p.allows_socket_use(addr("127.0.0.1:0"), SocketAddrUse::TcpListen)
                .await
        );
        assert!(
            !p.allows_socket_use(addr("127.0.0.1:5"), SocketAddrUse::TcpAccept)
                .await
        );
        assert!(
            p.allows_socket_use(addr("127.0.0.1:5"), SocketAddrUse::UdpSend)
                .await
        );
        let none = NetPolicy::default();
        assert!(!none.allows_transport(Transport::Tcp));
        assert!(
            !none
                .allows_socket_use(addr("0.0.0.0:0"), SocketAddrUse::TcpBind)
                .await
        );
        assert!(
            !none
                .allows_socket_use(addr("127.0.0.1:1"), SocketAddrUse::TcpConnect)
                .await
        );
    }

    #[tokio::test]
    async fn http_by_name_and_by_address() {
        let p = policy(&[
            ("Sensor.Local", Some(80), Protocol::Tcp),
            ("127.0.0.1", Some(8080), Protocol::Tcp),
        ]);
        assert!(p.allows_http("sensor.local", 80).await);
        assert!(!p.allows_http("sensor.local", 81).await);
        assert!(p.allows_http("127.0.0.1", 8080).await);
        assert!(!p.allows_http("127.0.0.2", 8080).await);
        assert!(!p.allows_http("localhost", 80).await);
    }

    #[test]
    fn rejects_bad_hosts() {
        for bad in [
            "10.0.0.0/33",
            "",
            "a b",
            "x/y",
            "::1/129",
            "under_score.example",
        ] {
            assert!(
                NetPolicy::from_grants(&[NetworkGrant {
                    host: bad.into(),
                    port: None,
                    protocol: Protocol::Tcp
                }])
                .is_err(),
                "{bad:?}"
            );
        }
    }
}
