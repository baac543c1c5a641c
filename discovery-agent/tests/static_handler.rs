//! The static handler against a real file: initial set, then add, change and remove by rewriting it.

mod common;

use common::Running;
use edgewasm_discovery_agent::DeviceEvent;
use edgewasm_discovery_agent::static_file::StaticHandler;

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn follows_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("devices.yaml");
    std::fs::write(
        &file,
        "- id: cam1\n  properties: {ip: 192.0.2.5}\n- id: sensor\n",
    )
    .unwrap();
    let mut h = Running::start(Box::new(StaticHandler::new(file.clone())));

    let DeviceEvent::Resync { handler, devices } = h.next().await else {
        panic!("expected a Resync first")
    };
    assert_eq!(handler, "static");
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].properties["ip"], "192.0.2.5");

    // Change cam1, remove sensor, add plc.
    write_atomically(
        &file,
        "- id: cam1\n  properties: {ip: 192.0.2.6}\n- id: plc\n  properties: {endpointUrl: 'opc.tcp://192.0.2.7:4840'}\n",
    );
    let mut seen = std::collections::BTreeMap::new();
    let mut gone = std::collections::BTreeSet::new();
    while seen.len() < 2 || gone.is_empty() {
        match h.next().await {
            DeviceEvent::Seen(d) => {
                seen.insert(d.identity.clone(), d);
            }
            DeviceEvent::Gone { identity, .. } => {
                gone.insert(identity);
            }
            ev @ DeviceEvent::Resync { .. } => panic!("unexpected {ev:?}"),
        }
    }
    assert_eq!(seen["cam1"].properties["ip"], "192.0.2.6");
    assert!(seen.contains_key("plc"));
    assert_eq!(gone.into_iter().collect::<Vec<_>>(), ["sensor"]);

    // A broken file keeps the previous devices; fixing it resumes.
    std::fs::write(&file, "- id: [unterminated\n").unwrap();
    write_atomically(&file, "- id: cam1\n  properties: {ip: 192.0.2.6}\n");
    let ev = h
        .wait_for("plc gone", |e| matches!(e, DeviceEvent::Gone { .. }))
        .await;
    assert!(matches!(ev, DeviceEvent::Gone { identity, .. } if identity == "plc"));

    // Deleting the file removes everything.
    std::fs::remove_file(&file).unwrap();
    let ev = h
        .wait_for("cam1 gone", |e| matches!(e, DeviceEvent::Gone { .. }))
        .await;
    assert!(matches!(ev, DeviceEvent::Gone { identity, .. } if identity == "cam1"));
    h.stop().await.unwrap();
}
