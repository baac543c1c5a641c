//! The `opcua` handler: OPC UA servers listed by FindServers on the configured discovery URLs and
//! described by their GetEndpoints, re-checked every `intervalSeconds`.
//!
//! Unlike udev and ONVIF this handler polls, because OPC UA gives a client nothing to listen for: a
//! server announces itself only to a Local Discovery Server (RegisterServer) or, with the multicast
//! extension (LDS-ME, mDNS), to an LDS-ME that few sites run. So each round asks every configured
//! discovery URL again. A server that stops answering is first reported unhealthy and is gone after
//! [`MAX_MISSED_ROUNDS`] rounds without an answer, so one lost connection does not make it vanish.
//!
//! Discovery uses only the discovery services, which the specification allows over an unsecured
//! channel (SecurityPolicy None) without a session: the agent needs no certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ::opcua::client::{Client, ClientBuilder};
use ::opcua::types::{ApplicationDescription, ApplicationType, EndpointDescription, UAString};
use async_trait::async_trait;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use crate::config::OpcuaConfig;
use crate::{DeviceEvent, DiscoveredDevice, Handler};

/// Handler name of OPC UA servers.
pub const HANDLER: &str = "opcua";
/// Rounds a server may miss before it counts as gone; it is unhealthy from the first miss on.
pub const MAX_MISSED_ROUNDS: u32 = 2;
/// Longest wait for one FindServers or GetEndpoints call, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most servers taken from one discovery URL's answer (an LDS may list many; a hostile one, any).
const MAX_SERVERS_PER_URL: usize = 256;
/// Most servers tracked at once.
const MAX_SERVERS: usize = 4096;
/// Longest property value kept from a server's answer.
const MAX_VALUE_CHARS: usize = 4096;

/// OPC UA server discovery.
pub struct OpcuaHandler {
    cfg: OpcuaConfig,
}

impl OpcuaHandler {
    pub fn new(cfg: OpcuaConfig) -> Self {
        Self { cfg }
    }
}

fn text(s: &UAString) -> &str {
    s.value().as_deref().unwrap_or("")
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_VALUE_CHARS).collect()
}

/// The short name of a security policy URI (`http://opcfoundation.org/UA/SecurityPolicy#None` gives
/// `None`).
pub fn policy_name(uri: &str) -> &str {
    uri.rsplit_once('#').map_or(uri, |(_, name)| name)
}

fn application_type(t: ApplicationType) -> &'static str {
    match t {
        ApplicationType::Server => "Server",
        ApplicationType::Client => "Client",
        ApplicationType::ClientAndServer => "ClientAndServer",
        ApplicationType::DiscoveryServer => "DiscoveryServer",
    }
}

/// Whether an application FindServers listed is a device: servers are, clients and discovery servers
/// (an LDS lists itself) are not, nor is a description without an application URI.
pub fn is_device(app: &ApplicationDescription) -> bool {
    !matches!(
        app.application_type,
        ApplicationType::Client | ApplicationType::DiscoveryServer
    ) && !text(&app.application_uri).trim().is_empty()
}

/// The device a server is, from FindServers' description and, when the server answered
/// GetEndpoints, its endpoints; `None` for applications that are not devices (see [`is_device`]).
pub fn describe(
    app: &ApplicationDescription,
    endpoints: Option<&[EndpointDescription]>,
) -> Option<DiscoveredDevice> {
    if !is_device(app) {
        return None;
    }
    let uri = text(&app.application_uri).trim();
    let mut d = DiscoveredDevice::new(HANDLER, bounded(uri));
    let p = &mut d.properties;
    p.insert("applicationUri".into(), bounded(uri));
    for (key, value) in [
        ("applicationName", text(&app.application_name.text)),
        ("productUri", text(&app.product_uri)),
    ] {
        if !value.trim().is_empty() {
            p.insert(key.into(), bounded(value.trim()));
        }
    }
    p.insert(
        "applicationType".into(),
        application_type(app.application_type).into(),
    );
    let discovery: BTreeSet<&str> = app
        .discovery_urls
        .iter()
        .flatten()
        .map(|u| text(u).trim())
        .filter(|u| !u.is_empty())
        .collect();
    if !discovery.is_empty() {
        p.insert(
            "discoveryUrls".into(),
            bounded(&discovery.into_iter().collect::<Vec<_>>().join(" ")),
        );
    }
    match endpoints {
        Some(endpoints) => {
            let urls: BTreeSet<&str> = endpoints
                .iter()
                .map(|e| text(&e.endpoint_url).trim())
                .filter(|u| !u.is_empty())
                .collect();
            let policies: BTreeSet<&str> = endpoints
                .iter()
                .map(|e| policy_name(text(&e.security_policy_uri).trim()))
                .filter(|p| !p.is_empty())
                .collect();
            // `endpointUrl` is the key the operator turns into a network grant (whitespace-separated).
            if !urls.is_empty() {
                p.insert(
                    "endpointUrl".into(),
                    bounded(&urls.into_iter().collect::<Vec<_>>().join(" ")),
                );
            }
            if !policies.is_empty() {
                p.insert(
                    "securityPolicies".into(),
                    bounded(&policies.into_iter().collect::<Vec<_>>().join(" ")),
                );
            }
        }
        None => d.healthy = false,
    }
    Some(d)
}

/// The servers this handler knows, across rounds.
#[derive(Debug, Default)]
pub struct Servers {
    known: BTreeMap<String, Known>,
}

#[derive(Debug)]
struct Known {
    device: DiscoveredDevice,
    missed: u32,
}

impl Servers {
    /// Close a round with the servers it found; returns the full set when it differs from the last
    /// one. A server found but not answering GetEndpoints keeps its last known properties and is
    /// unhealthy; a server not found is unhealthy, and gone after [`MAX_MISSED_ROUNDS`] rounds.
    pub fn finish_round(&mut self, found: Vec<DiscoveredDevice>) -> Option<Vec<DiscoveredDevice>> {
        let before = self.devices();
        // A server listed by several discovery URLs counts once; an answer from one of them is enough.
        let mut merged: BTreeMap<String, DiscoveredDevice> = BTreeMap::new();
        for d in found {
            match merged.get(&d.identity) {
                Some(m) if m.healthy || !d.healthy => {}
                _ => {
                    merged.insert(d.identity.clone(), d);
                }
            }
        }
        let mut seen = BTreeSet::new();
        for d in merged.into_values() {
            if !self.known.contains_key(&d.identity) && self.known.len() >= MAX_SERVERS {
                crate::metrics::bad_input(HANDLER, "too-many-servers");
                continue;
            }
            seen.insert(d.identity.clone());
            match self.known.get_mut(&d.identity) {
                Some(k) if !d.healthy => {
                    k.device.healthy = false;
                    k.missed = 0;
                }
                Some(k) => {
                    k.device = d;
                    k.missed = 0;
                }
                None => {
                    self.known.insert(
                        d.identity.clone(),
                        Known {
                            device: d,
                            missed: 0,
                        },
                    );
                }
            }
        }
        self.known.retain(|uri, k| {
            if seen.contains(uri) {
                return true;
            }
            k.missed += 1;
            k.device.healthy = false;
            let keep = k.missed < MAX_MISSED_ROUNDS;
            if keep {
                tracing::info!(server = %uri, "OPC UA server did not answer this round");
            } else {
                tracing::info!(server = %uri, rounds = k.missed, "OPC UA server stopped answering; gone");
            }
            keep
        });
        let after = self.devices();
        (after != before).then_some(after)
    }

    /// The servers currently known.
    pub fn devices(&self) -> Vec<DiscoveredDevice> {
        self.known.values().map(|k| k.device.clone()).collect()
    }
}

/// A client for the discovery services only: no certificate, no session.
pub fn discovery_client() -> anyhow::Result<Client> {
    // The certificate store wants a folder even when it holds nothing; keep it out of the working
    // directory (read-only in a Pod).
    let pki = std::env::temp_dir().join("edgewasm-agent-opcua-pki");
    ClientBuilder::new()
        .application_name("edgewasm-agent")
        .application_uri("urn:edgewasm:agent")
        .product_uri("urn:edgewasm:agent")
        .create_sample_keypair(false)
        .pki_dir(pki)
        .session_retry_limit(0)
        .request_timeout(CALL_TIMEOUT)
        .client()
        .map_err(|errors| anyhow::anyhow!("OPC UA client configuration: {}", errors.join("; ")))
}

/// Ask one discovery URL for its servers and each server for its endpoints.
pub async fn discover(
    client: &Client,
    discovery_url: &str,
) -> anyhow::Result<Vec<DiscoveredDevice>> {
    let servers =
        match tokio::time::timeout(CALL_TIMEOUT, client.find_servers(discovery_url, None, None))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => anyhow::bail!("FindServers on {discovery_url}: {e}"),
            Err(_) => {
                anyhow::bail!("FindServers on {discovery_url}: no answer within {CALL_TIMEOUT:?}")
            }
        };
    if servers.len() > MAX_SERVERS_PER_URL {
        crate::metrics::bad_input(HANDLER, "too-many-servers");
    }
    let mut devices = Vec::new();
    for app in servers.iter().take(MAX_SERVERS_PER_URL) {
        if !is_device(app) {
            if text(&app.application_uri).trim().is_empty() {
                crate::metrics::bad_input(HANDLER, "no-application-uri");
            }
            continue;
        }
        let endpoints = endpoints_of(client, app, discovery_url).await;
        devices.extend(describe(app, endpoints.as_deref()));
    }
    Ok(devices)
}

/// The endpoints of a server: asked at each URL it advertises, then at the URL it was found through
/// (servers often advertise a host name the node cannot resolve). Only an answer describing this very
/// server counts: GetEndpoints at an LDS describes the LDS.
async fn endpoints_of(
    client: &Client,
    app: &ApplicationDescription,
    found_at: &str,
) -> Option<Vec<EndpointDescription>> {
    let uri = text(&app.application_uri);
    let mut candidates: Vec<&str> = app
        .discovery_urls
        .iter()
        .flatten()
        .map(text)
        .filter(|u| u.starts_with("opc.tcp://"))
        .take(4)
        .collect();
    if !candidates.contains(&found_at) {
        candidates.push(found_at);
    }
    for url in candidates {
        match tokio::time::timeout(CALL_TIMEOUT, client.get_server_endpoints_from_url(url)).await {
            Ok(Ok(endpoints)) => {
                let own: Vec<EndpointDescription> = endpoints
                    .into_iter()
                    .filter(|e| text(&e.server.application_uri) == uri)
                    .collect();
                if !own.is_empty() {
                    return Some(own);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(server = uri, %url, error = %e, "GetEndpoints failed");
            }
            Err(_) => tracing::debug!(server = uri, %url, "GetEndpoints timed out"),
        }
    }
    crate::metrics::probe_failure(HANDLER, "get-endpoints");
    None
}

#[async_trait]
impl Handler for OpcuaHandler {
    fn name(&self) -> &str {
        HANDLER
    }

    async fn run(
        self: Box<Self>,
        events: Sender<DeviceEvent>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let urls: Vec<String> = self
            .cfg
            .discovery_urls
            .iter()
            .map(|u| u.trim().to_string())
            .collect();
        for url in &urls {
            anyhow::ensure!(
                url.starts_with("opc.tcp://"),
                "handlers.opcua.discoveryUrls: {url:?} is not an opc.tcp:// URL"
            );
        }
        if urls.is_empty() {
            tracing::warn!("the opcua handler has no discoveryUrls; it will find nothing");
        }
        let client = Arc::new(discovery_client()?);
        let every = Duration::from_secs(self.cfg.interval_seconds.max(1));
        tracing::info!(?urls, interval = ?every, "OPC UA discovery (polling: OPC UA has no announcements)");
        let mut servers = Servers::default();
        // Whether each discovery URL answered last round: failures are warned about once, not every round.
        let mut answering: BTreeMap<String, bool> = BTreeMap::new();
        let mut first = true;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let round = async {
                let mut calls = tokio::task::JoinSet::new();
                for url in &urls {
                    let (client, url) = (client.clone(), url.clone());
                    calls.spawn(async move {
                        let res = discover(&client, &url).await;
                        (url, res)
                    });
                }
                let mut found = Vec::new();
                while let Some(joined) = calls.join_next().await {
                    match joined {
                        Ok((url, Ok(devices))) => {
                            if answering.insert(url.clone(), true) == Some(false) {
                                tracing::info!(%url, "OPC UA discovery URL answers again");
                            }
                            found.extend(devices);
                        }
                        Ok((url, Err(e))) => {
                            let error = format!("{e:#}");
                            if answering.insert(url.clone(), false) == Some(false) {
                                tracing::debug!(%url, error, "OPC UA discovery URL still does not answer");
                            } else {
                                tracing::warn!(%url, error, "OPC UA discovery URL does not answer");
                            }
                            crate::metrics::probe_failure(HANDLER, "find-servers");
                        }
                        Err(e) => tracing::error!(error = %e, "OPC UA discovery task failed"),
                    }
                }
                found
            };
            let found = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                found = round => found,
            };
            let changed = servers.finish_round(found);
            if let Some(devices) = changed.or_else(|| first.then(|| servers.devices())) {
                first = false;
                if events
                    .send(DeviceEvent::Resync {
                        handler: HANDLER.into(),
                        devices,
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::opcua::types::{LocalizedText, MessageSecurityMode};

    fn app(uri: &str, kind: ApplicationType) -> ApplicationDescription {
        ApplicationDescription {
            application_uri: uri.into(),
            product_uri: "urn:vendor:plc".into(),
            application_name: LocalizedText::new("", "Line 3 PLC"),
            application_type: kind,
            gateway_server_uri: UAString::null(),
            discovery_profile_uri: UAString::null(),
            discovery_urls: Some(vec!["opc.tcp://plc:4840/".into()]),
        }
    }

    fn endpoint(url: &str, policy: &str) -> EndpointDescription {
        EndpointDescription {
            endpoint_url: url.into(),
            server: app("urn:plc", ApplicationType::Server),
            security_mode: MessageSecurityMode::None,
            security_policy_uri: format!("http://opcfoundation.org/UA/SecurityPolicy#{policy}")
                .into(),
            ..Default::default()
        }
    }

    #[test]
    fn describes_a_server_by_its_application_and_endpoints() {
        let d = describe(
            &app("urn:plc", ApplicationType::Server),
            Some(&[
                endpoint("opc.tcp://plc:4840/", "None"),
                endpoint("opc.tcp://plc:4840/", "Basic256Sha256"),
            ]),
        )
        .unwrap();
        assert_eq!(d.identity, "urn:plc");
        assert!(d.healthy);
        let p = &d.properties;
        assert_eq!(p["applicationUri"], "urn:plc");
        assert_eq!(p["applicationName"], "Line 3 PLC");
        assert_eq!(p["productUri"], "urn:vendor:plc");
        assert_eq!(p["endpointUrl"], "opc.tcp://plc:4840/");
        assert_eq!(p["securityPolicies"], "Basic256Sha256 None");
        assert_eq!(p["discoveryUrls"], "opc.tcp://plc:4840/");
    }

    #[test]
    fn skips_what_is_not_a_device() {
        assert!(describe(&app("urn:lds", ApplicationType::DiscoveryServer), None).is_none());
        assert!(describe(&app("urn:hmi", ApplicationType::Client), None).is_none());
        assert!(describe(&app("  ", ApplicationType::Server), None).is_none());
        assert!(describe(&app("urn:both", ApplicationType::ClientAndServer), None).is_some());
    }

    #[test]
    fn a_silent_server_is_unhealthy_then_gone() {
        let up = describe(
            &app("urn:plc", ApplicationType::Server),
            Some(&[endpoint("opc.tcp://plc:4840/", "None")]),
        )
        .unwrap();
        let mut s = Servers::default();
        assert_eq!(
            s.finish_round(vec![up.clone()]).unwrap(),
            std::slice::from_ref(&up)
        );
        assert!(s.finish_round(vec![up.clone()]).is_none(), "unchanged");

        // Listed, but GetEndpoints fails: same properties, unhealthy.
        let listed = describe(&app("urn:plc", ApplicationType::Server), None).unwrap();
        let set = s.finish_round(vec![listed]).unwrap();
        assert!(!set[0].healthy);
        assert_eq!(set[0].properties, up.properties);
        assert!(s.finish_round(vec![up.clone()]).unwrap()[0].healthy);

        // Listed twice (directly and by an LDS whose answer names a host the node cannot reach):
        // one answer is enough.
        let via_lds = describe(&app("urn:plc", ApplicationType::Server), None).unwrap();
        assert!(s.finish_round(vec![up.clone(), via_lds.clone()]).is_none());
        assert!(s.finish_round(vec![via_lds, up.clone()]).is_none());

        // Not listed: unhealthy after one round, gone after the second.
        let set = s.finish_round(vec![]).unwrap();
        assert!(!set[0].healthy);
        assert_eq!(s.finish_round(vec![]).unwrap(), []);
        assert!(s.finish_round(vec![]).is_none());
    }

    #[test]
    fn policy_names() {
        assert_eq!(
            policy_name("http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss"),
            "Aes256_Sha256_RsaPss"
        );
        assert_eq!(policy_name("custom"), "custom");
    }
}
