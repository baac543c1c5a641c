//! The OPC UA handler against a real OPC UA server from the same crate (async-opcua), started on
//! loopback on a free port: the server appears with its application and endpoint properties, turns
//! unhealthy when it stops answering and is gone a round later.

mod common;

use common::Running;
use edgewasm_discovery_agent::config::OpcuaConfig;
use edgewasm_discovery_agent::opcua::OpcuaHandler;
use edgewasm_discovery_agent::{AgentConfig, DeviceEvent, DiscoveredDevice, metrics};
use opcua::server::ServerBuilder;

const APP_URI: &str = "urn:edgewasm:test:plc";
const PRODUCT_URI: &str = "urn:edgewasm:test:plc-product";

/// A running OPC UA server; stopped when dropped, even when the test fails.
struct Server {
    url: String,
    handle: opcua::server::ServerHandle,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
    _pki: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let port = listener.local_addr().unwrap().port();
        let url = format!("opc.tcp://127.0.0.1:{port}/");
        let pki = tempfile::tempdir().unwrap();
        let (server, handle) = ServerBuilder::new_anonymous("Test PLC")
            .application_uri(APP_URI)
            .product_uri(PRODUCT_URI)
            .host("127.0.0.1")
            .port(port)
            .discovery_urls(vec![url.clone()])
            .pki_dir(pki.path())
            .build()
            .expect("building the OPC UA server");
        let task = tokio::spawn(server.run_with(listener));
        Self {
            url,
            handle,
            task: Some(task),
            _pki: pki,
        }
    }

    async fn stop(mut self) {
        self.handle.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(common::DEADLINE, task)
            .await
            .expect("the server stops when cancelled")
            .expect("server task")
            .expect("server run");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.cancel();
    }
}

fn server_in(ev: &DeviceEvent) -> Option<&DiscoveredDevice> {
    match ev {
        DeviceEvent::Resync { handler, devices } if handler == "opcua" => {
            devices.iter().find(|d| d.identity == APP_URI)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_appears_and_goes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("edgewasm_discovery_agent=debug,opcua_client=info,opcua_server=warn")
        .with_test_writer()
        .try_init();
    let server = Server::start().await;
    let unreachable = "opc.tcp://127.0.0.1:1/";
    let failures_before = metrics::probe_failure_count("opcua", "find-servers");
    let cfg = OpcuaConfig {
        enabled: true,
        discovery_urls: vec![server.url.clone(), unreachable.into()],
        interval_seconds: 1,
        ..OpcuaConfig::default()
    };
    let mut h = Running::start(Box::new(OpcuaHandler::new(cfg)));

    let ev = h
        .wait_for("the server in a full set", |e| server_in(e).is_some())
        .await;
    let DeviceEvent::Resync { devices, .. } = &ev else {
        unreachable!()
    };
    assert_eq!(devices.len(), 1, "only the server: {devices:?}");
    let d = &devices[0];
    assert!(d.healthy);
    let p = &d.properties;
    assert_eq!(p["applicationUri"], APP_URI);
    assert_eq!(p["applicationName"], "Test PLC");
    assert_eq!(p["productUri"], PRODUCT_URI);
    assert_eq!(p["applicationType"], "Server");
    assert_eq!(p["discoveryUrls"], server.url);
    assert_eq!(p["securityPolicies"], "None");
    assert!(
        p["endpointUrl"].starts_with(&server.url[..server.url.len() - 1]),
        "endpoint on the server's port: {p:?}"
    );
    assert!(
        metrics::probe_failure_count("opcua", "find-servers") > failures_before,
        "the unreachable discovery URL is counted"
    );

    server.stop().await;
    let ev = h
        .wait_for("the silent server reported unhealthy", |e| {
            server_in(e).is_some_and(|d| !d.healthy)
        })
        .await;
    assert_eq!(
        server_in(&ev).unwrap().properties["applicationUri"],
        APP_URI,
        "keeps its last known properties"
    );
    h.wait_for(
        "the server gone",
        |e| matches!(e, DeviceEvent::Resync { devices, .. } if devices.is_empty()),
    )
    .await;
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_discovery_url_that_is_not_opc_tcp_stops_the_handler_with_a_clear_error() {
    let cfg = OpcuaConfig {
        enabled: true,
        discovery_urls: vec!["http://plc:4840/".into()],
        interval_seconds: 60,
        ..OpcuaConfig::default()
    };
    let h = Running::start(Box::new(OpcuaHandler::new(cfg)));
    let err = h.stop().await.unwrap_err();
    assert!(
        format!("{err:#}").contains("not an opc.tcp:// URL"),
        "{err:#}"
    );
}

#[test]
fn the_registry_builds_the_opcua_handler_from_the_config() {
    let cfg = AgentConfig::parse(
        "handlers:\n  opcua: {discoveryUrls: ['opc.tcp://plc:4840/'], intervalSeconds: 30}\n",
    )
    .unwrap();
    let handlers = edgewasm_discovery_agent::build_handlers(&cfg, "node-a").unwrap();
    let names: Vec<&str> = handlers.iter().map(|h| h.name()).collect();
    assert_eq!(names, ["opcua"]);
}
