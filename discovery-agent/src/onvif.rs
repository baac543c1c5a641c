//! The `onvif` handler: cameras found with WS-Discovery Probes per interface, kept current by their
//! Hello and Bye announcements, with a slow re-probe as the safety net.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, Sender};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{OnvifConfig, cidr_contains, parse_cidr};
use crate::wsdiscovery::{self, Body, Endpoint, MAX_MESSAGE_BYTES, MULTICAST_ADDR, PORT};
use crate::{DeviceEvent, DiscoveredDevice, Handler};

/// Handler name of network cameras.
pub const HANDLER: &str = "onvif";
/// How long replies to a Probe are collected before the round is judged.
const PROBE_WINDOW: Duration = Duration::from_secs(3);
/// Rounds a camera may miss before it counts as gone (a UDP reply can be lost).
const MAX_MISSED_ROUNDS: u32 = 2;
/// Message ids of our own Probes remembered to recognise replies and our own looped-back Probes.
const SENT_IDS: usize = 32;
/// Most cameras tracked; beyond it new announcements are dropped (and counted).
const MAX_CAMERAS: usize = 4096;

/// ONVIF camera discovery.
pub struct OnvifHandler {
    cfg: OnvifConfig,
}

impl OnvifHandler {
    pub fn new(cfg: OnvifConfig) -> Self {
        Self { cfg }
    }
}

/// What the filters accept.
struct Filters {
    scopes: Vec<String>,
    ranges: Vec<(IpAddr, u8)>,
    macs: Vec<String>,
}

impl Filters {
    fn new(cfg: &OnvifConfig) -> anyhow::Result<Self> {
        let ranges = cfg
            .ip_ranges
            .iter()
            .map(|r| parse_cidr(r).with_context(|| format!("onvif ipRanges entry {r:?}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            scopes: cfg.scopes.clone(),
            ranges,
            macs: cfg.macs.iter().map(|m| m.to_ascii_lowercase()).collect(),
        })
    }

    fn accepts(&self, d: &DiscoveredDevice) -> bool {
        let scopes_ok = self.scopes.is_empty()
            || d.properties.get("scopes").is_some_and(|s| {
                s.split(' ')
                    .any(|sc| self.scopes.iter().any(|want| sc.starts_with(want.as_str())))
            });
        let ip = d
            .properties
            .get("ip")
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let ip_ok = self.ranges.is_empty()
            || ip.is_some_and(|ip| self.ranges.iter().any(|&r| cidr_contains(r, ip)));
        let mac_ok = self.macs.is_empty()
            || d.properties
                .get("mac")
                .is_some_and(|m| self.macs.contains(m));
        scopes_ok && ip_ok && mac_ok
    }
}

/// The host of a URL (`http://10.0.0.5:80/onvif` gives `10.0.0.5`, `http://[fe80::1]/` gives `fe80::1`).
pub fn url_host(url: &str) -> Option<(String, Option<u16>)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    (!host.is_empty()).then(|| (host.to_string(), port.and_then(|p| p.parse().ok())))
}

/// The device an endpoint describes; `source` is where the datagram came from.
pub fn describe(ep: &Endpoint, source: IpAddr, mac: Option<String>) -> DiscoveredDevice {
    let mut d = DiscoveredDevice::new(HANDLER, ep.address.clone());
    let p = &mut d.properties;
    if !ep.xaddrs.is_empty() {
        p.insert("xaddrs".into(), ep.xaddrs.join(" "));
    }
    if !ep.scopes.is_empty() {
        p.insert("scopes".into(), ep.scopes.join(" "));
    }
    // The service address is where the XAddr points; prefer the one on the address that answered.
    let hosts: Vec<(String, Option<u16>)> = ep.xaddrs.iter().filter_map(|x| url_host(x)).collect();
    let chosen = hosts
        .iter()
        .find(|(h, _)| h.parse::<IpAddr>().ok() == Some(source))
        .or_else(|| hosts.iter().find(|(h, _)| h.parse::<Ipv4Addr>().is_ok()))
        .cloned();
    match chosen {
        Some((host, port)) => {
            p.insert("ip".into(), host);
            if let Some(port) = port {
                p.insert("port".into(), port.to_string());
            }
        }
        None => {
            p.insert("ip".into(), source.to_string());
        }
    }
    for scope in &ep.scopes {
        for (prefix, key) in [
            ("onvif://www.onvif.org/name/", "name"),
            ("onvif://www.onvif.org/hardware/", "model"),
        ] {
            if let Some(v) = scope.strip_prefix(prefix) {
                p.insert(key.into(), v.to_string());
            }
        }
    }
    if let Some(mac) = mac {
        p.insert("mac".into(), mac);
    }
    d
}

/// The MAC address of a neighbour from the kernel's ARP table.
fn neighbour_mac(ip: IpAddr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    let ip = ip.to_string();
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.first() == Some(&ip.as_str())
            && cols.get(3).is_some_and(|m| *m != "00:00:00:00:00:00"))
        .then(|| cols[3].to_ascii_lowercase())
    })
}

/// The IPv4 addresses of the interfaces to serve: the named ones, or all up multicast ones but loopback.
pub fn interface_addresses(names: &[String]) -> anyhow::Result<Vec<(String, Ipv4Addr)>> {
    use nix::net::if_::InterfaceFlags;
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing network interfaces")? {
        let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let wanted = if names.is_empty() {
            ifa.flags
                .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_MULTICAST)
                && !ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        } else {
            names.contains(&ifa.interface_name)
        };
        if wanted {
            out.push((ifa.interface_name.clone(), addr.ip()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn probe_socket(addr: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Multicast leaves by route otherwise: pin each Probe to its interface.
    s.set_multicast_if_v4(&addr)?;
    s.set_multicast_ttl_v4(1)?;
    s.set_multicast_loop_v4(false)?;
    s.bind(&SocketAddrV4::new(addr, 0).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

fn listen_socket(port: u16, addrs: &[Ipv4Addr]) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    // Otherwise the socket also receives groups other sockets on the host joined.
    s.set_multicast_all_v4(false)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    for a in addrs {
        s.join_multicast_v4(&MULTICAST_ADDR, a)?;
    }
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Where a datagram arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Announcement,
    ProbeReply,
}

struct Camera {
    device: DiscoveredDevice,
    missed: u32,
    answered_this_round: bool,
}

struct State {
    filters: Filters,
    cameras: BTreeMap<String, Camera>,
    sent_ids: VecDeque<String>,
}

impl State {
    fn handle(&mut self, buf: &[u8], from: SocketAddr, via: Via) -> Vec<DeviceEvent> {
        let msg = match wsdiscovery::parse(buf) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%from, error = %e, "ignoring WS-Discovery datagram");
                crate::metrics::bad_input(HANDLER, e.reason());
                return Vec::new();
            }
        };
        if msg
            .message_id
            .as_ref()
            .is_some_and(|id| self.sent_ids.contains(id))
        {
            return Vec::new();
        }
        let source = from.ip();
        match (msg.body, via) {
            (Body::Hello(ep), _) => self.seen(&ep, source, false).into_iter().collect(),
            (Body::ProbeMatches(eps), Via::ProbeReply) => {
                if !msg
                    .relates_to
                    .as_ref()
                    .is_some_and(|r| self.sent_ids.contains(r))
                {
                    crate::metrics::bad_input(HANDLER, "unsolicited");
                    return Vec::new();
                }
                eps.iter()
                    .filter_map(|ep| self.seen(ep, source, true))
                    .collect()
            }
            (Body::Bye(ep), _) => {
                if self.cameras.remove(&ep.address).is_some() {
                    vec![DeviceEvent::Gone {
                        handler: HANDLER.into(),
                        identity: ep.address,
                    }]
                } else {
                    // A Bye for a camera we do not know: spoofed, or filtered out. Nothing to do.
                    crate::metrics::bad_input(HANDLER, "unknown-bye");
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    fn seen(&mut self, ep: &Endpoint, source: IpAddr, probe_reply: bool) -> Option<DeviceEvent> {
        if !(ep.is_video_transmitter() || probe_reply && ep.types.is_empty()) {
            return None;
        }
        let device = describe(ep, source, neighbour_mac(source));
        if !self.filters.accepts(&device) {
            return None;
        }
        if !self.cameras.contains_key(&ep.address) && self.cameras.len() >= MAX_CAMERAS {
            crate::metrics::bad_input(HANDLER, "too-many-cameras");
            return None;
        }
        let entry = self
            .cameras
            .entry(ep.address.clone())
            .or_insert_with(|| Camera {
                device: DiscoveredDevice::new(HANDLER, ""),
                missed: 0,
                answered_this_round: false,
            });
        entry.missed = 0;
        entry.answered_this_round |= probe_reply;
        if entry.device == device {
            return None;
        }
        entry.device = device.clone();
        Some(DeviceEvent::Seen(device))
    }

    /// Close a probe round: cameras that missed too many rounds are gone.
    fn finish_round(&mut self) -> Vec<DiscoveredDevice> {
        self.cameras.retain(|address, c| {
            if !c.answered_this_round {
                c.missed += 1;
            }
            c.answered_this_round = false;
            let keep = c.missed < MAX_MISSED_ROUNDS;
            if !keep {
                tracing::info!(camera = %address, "camera stopped answering probes");
            }
            keep
        });
        self.cameras.values().map(|c| c.device.clone()).collect()
    }
}

#[async_trait]
impl Handler for OnvifHandler {
    fn name(&self) -> &str {
        HANDLER
    }

    async fn run(
        self: Box<Self>,
        events: Sender<DeviceEvent>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let filters = Filters::new(&self.cfg)?;
        let mut state = State {
            filters,
            cameras: BTreeMap::new(),
            sent_ids: VecDeque::new(),
        };
        let interfaces = interface_addresses(&self.cfg.interfaces)?;
        anyhow::ensure!(
            !interfaces.is_empty(),
            "no usable IPv4 interface for ONVIF discovery (configured: {:?})",
            self.cfg.interfaces
        );
        let addrs: Vec<Ipv4Addr> = interfaces.iter().map(|(_, a)| *a).collect();
        tracing::info!(?interfaces, "ONVIF discovery on interfaces");

        let readers = shutdown.child_token();
        let _stop_readers = readers.clone().drop_guard();
        let (tx, mut rx) = mpsc::channel::<(Vec<u8>, SocketAddr, Via)>(256);
        let listener = listen_socket(PORT, &addrs)
            .with_context(|| format!("listening for WS-Discovery announcements on port {PORT}"))?;
        spawn_reader(
            Arc::new(listener),
            Via::Announcement,
            tx.clone(),
            readers.clone(),
        );
        let mut probers = Vec::new();
        for (name, addr) in &interfaces {
            let s = Arc::new(
                probe_socket(*addr).with_context(|| format!("probe socket on {name} ({addr})"))?,
            );
            spawn_reader(s.clone(), Via::ProbeReply, tx.clone(), readers.clone());
            probers.push((name.clone(), s));
        }
        drop(tx);

        let period = Duration::from_secs(self.cfg.probe_interval_seconds.max(5));
        let mut next_probe = Instant::now();
        let mut round_end: Option<Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(next_probe), if round_end.is_none() => {
                    let id = format!("urn:uuid:{}", uuid::Uuid::new_v4());
                    let probe = wsdiscovery::probe(&id);
                    state.sent_ids.push_back(id);
                    if state.sent_ids.len() > SENT_IDS {
                        state.sent_ids.pop_front();
                    }
                    for (name, s) in &probers {
                        if let Err(e) = s.send_to(probe.as_bytes(), (MULTICAST_ADDR, PORT)).await {
                            tracing::warn!(interface = %name, error = %e, "sending WS-Discovery Probe failed");
                        }
                    }
                    round_end = Some(Instant::now() + PROBE_WINDOW);
                }
                () = async { tokio::time::sleep_until(round_end.unwrap_or_else(Instant::now)).await }, if round_end.is_some() => {
                    round_end = None;
                    next_probe = Instant::now() + period;
                    let devices = state.finish_round();
                    if events.send(DeviceEvent::Resync { handler: HANDLER.into(), devices }).await.is_err() {
                        return Ok(());
                    }
                }
                msg = rx.recv() => {
                    let Some((buf, from, via)) = msg else {
                        // The readers stop with `shutdown` (their token is its child).
                        anyhow::ensure!(shutdown.is_cancelled(), "WS-Discovery sockets closed");
                        return Ok(());
                    };
                    for ev in state.handle(&buf, from, via) {
                        tracing::info!(event = ?ev, %from, "ONVIF camera change");
                        if events.send(ev).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

fn spawn_reader(
    socket: Arc<UdpSocket>,
    via: Via,
    tx: mpsc::Sender<(Vec<u8>, SocketAddr, Via)>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        // One byte more than the limit so oversized datagrams are recognised as such.
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
        loop {
            let (n, from) = tokio::select! {
                () = stop.cancelled() => return,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "WS-Discovery receive failed");
                        continue;
                    }
                },
            };
            if tx.send((buf[..n].to_vec(), from, via)).await.is_err() {
                return;
            }
        }
    });
}
