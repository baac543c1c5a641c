//! The `onvif` handler: cameras found with WS-Discovery Probes per interface, kept current by their
//! Hello and Bye announcements, with a slow re-probe as the safety net, and described by their
//! GetDeviceInformation answer when they give one.

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
use crate::onvif_info::DeviceInfoClient;
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
/// Most GetDeviceInformation calls in flight at once.
const MAX_INFO_CALLS: usize = 8;

/// A GetDeviceInformation answer: endpoint address, XAddr asked, what the camera said.
type InfoAnswer = (
    String,
    String,
    Result<BTreeMap<String, String>, crate::onvif_info::InfoError>,
);

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
    /// What GetDeviceInformation told, once it answered.
    info: Option<BTreeMap<String, String>>,
    /// GetDeviceInformation was asked this round (it is asked again next round when it failed).
    info_asked: bool,
}

/// The XAddr to ask GetDeviceInformation at: on the camera's address, HTTP before HTTPS.
pub fn info_xaddr(d: &DiscoveredDevice) -> Option<String> {
    let ip = d.properties.get("ip");
    let xaddrs: Vec<&str> = d
        .properties
        .get("xaddrs")
        .map(|x| x.split_whitespace().collect())
        .unwrap_or_default();
    let on_ip = |x: &&str| url_host(x).is_some_and(|(h, _)| Some(&h) == ip);
    let scheme = |s: &'static str| move |x: &&str| x.starts_with(s);
    let find = |pred: &dyn Fn(&&str) -> bool| xaddrs.iter().copied().find(|x| pred(x));
    find(&|x| on_ip(x) && scheme("http://")(x))
        .or_else(|| find(&|x| on_ip(x) && scheme("https://")(x)))
        .or_else(|| find(&scheme("http://")))
        .or_else(|| find(&scheme("https://")))
        .map(str::to_string)
}

struct State {
    filters: Filters,
    cameras: BTreeMap<String, Camera>,
    sent_ids: VecDeque<String>,
    /// Whether to ask cameras for GetDeviceInformation.
    ask_info: bool,
    /// GetDeviceInformation calls to start: (endpoint address, XAddr).
    info_wanted: Vec<(String, String)>,
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
        let mut device = describe(ep, source, neighbour_mac(source));
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
                info: None,
                info_asked: false,
            });
        entry.missed = 0;
        entry.answered_this_round |= probe_reply;
        match &entry.info {
            // What the camera says about itself beats what its scopes suggest (`model`).
            Some(info) => device.properties.extend(info.clone()),
            None if self.ask_info && !entry.info_asked => {
                if let Some(xaddr) = info_xaddr(&device) {
                    entry.info_asked = true;
                    self.info_wanted.push((ep.address.clone(), xaddr));
                }
            }
            None => {}
        }
        if entry.device == device {
            return None;
        }
        entry.device = device.clone();
        Some(DeviceEvent::Seen(device))
    }

    /// GetDeviceInformation answered: the camera's device with those properties, when it changed.
    fn info_arrived(
        &mut self,
        address: &str,
        info: BTreeMap<String, String>,
    ) -> Option<DeviceEvent> {
        let camera = self.cameras.get_mut(address)?;
        let mut device = camera.device.clone();
        device.properties.extend(info.clone());
        camera.info = Some(info);
        if camera.device == device {
            return None;
        }
        camera.device = device.clone();
        Some(DeviceEvent::Seen(device))
    }

    /// Close a probe round: cameras that missed too many rounds are gone.
    fn finish_round(&mut self) -> Vec<DiscoveredDevice> {
        self.cameras.retain(|address, c| {
            if !c.answered_this_round {
                c.missed += 1;
            }
            c.answered_this_round = false;
            c.info_asked = false;
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
        let info_client = if self.cfg.device_information {
            if self.cfg.credentials_file.is_none() {
                tracing::info!(
                    "no ONVIF credentials file; asking cameras for GetDeviceInformation unauthenticated"
                );
            }
            Some(Arc::new(DeviceInfoClient::new(
                self.cfg.credentials_file.clone(),
            )?))
        } else {
            None
        };
        let mut state = State {
            filters,
            cameras: BTreeMap::new(),
            sent_ids: VecDeque::new(),
            ask_info: info_client.is_some(),
            info_wanted: Vec::new(),
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
        let (info_tx, mut info_rx) = mpsc::channel::<InfoAnswer>(64);
        let info_calls = Arc::new(tokio::sync::Semaphore::new(MAX_INFO_CALLS));

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
                    if let Some(client) = &info_client {
                        for (address, xaddr) in state.info_wanted.drain(..) {
                            spawn_info_call(client.clone(), address, xaddr, info_calls.clone(), info_tx.clone(), readers.clone());
                        }
                    }
                }
                Some((address, xaddr, result)) = info_rx.recv() => match result {
                    Ok(info) => {
                        if let Some(ev) = state.info_arrived(&address, info) {
                            tracing::info!(event = ?ev, "ONVIF camera described itself");
                            if events.send(ev).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => {
                        // The camera stays published with what discovery told.
                        tracing::warn!(camera = %address, %xaddr, error = %e, "ONVIF GetDeviceInformation failed");
                        crate::metrics::probe_failure(HANDLER, e.reason());
                    }
                },
            }
        }
    }
}

fn spawn_info_call(
    client: Arc<DeviceInfoClient>,
    address: String,
    xaddr: String,
    slots: Arc<tokio::sync::Semaphore>,
    done: mpsc::Sender<InfoAnswer>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let call = async {
            let _slot = slots.acquire().await.ok()?;
            Some(client.fetch(&xaddr).await)
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = call => match r {
                Some(r) => r,
                None => return,
            },
        };
        let _ = done.send((address, xaddr, result)).await;
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn camera(ip: &str, xaddrs: &str) -> DiscoveredDevice {
        let mut d = DiscoveredDevice::new(HANDLER, "urn:uuid:x");
        d.properties.insert("ip".into(), ip.into());
        d.properties.insert("xaddrs".into(), xaddrs.into());
        d
    }

    #[test]
    fn device_information_is_asked_on_the_cameras_own_address_over_http_first() {
        let d = camera(
            "10.0.0.5",
            "https://10.0.0.5/onvif/device_service http://[fe80::1]/onvif http://10.0.0.5/onvif/device_service",
        );
        assert_eq!(
            info_xaddr(&d).as_deref(),
            Some("http://10.0.0.5/onvif/device_service")
        );
        let d = camera("10.0.0.5", "http://192.0.2.1/onvif https://10.0.0.5/onvif");
        assert_eq!(info_xaddr(&d).as_deref(), Some("https://10.0.0.5/onvif"));
        let d = camera("10.0.0.5", "http://192.0.2.1/onvif");
        assert_eq!(info_xaddr(&d).as_deref(), Some("http://192.0.2.1/onvif"));
        assert_eq!(info_xaddr(&camera("10.0.0.5", "ftp://10.0.0.5/")), None);
    }
}
