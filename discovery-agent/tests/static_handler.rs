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

/// An editor that saves in place truncates the file and then writes it: the handler must not read
/// the empty moment in between as "every device is gone".
#[tokio::test]
async fn an_in_place_rewrite_does_not_remove_the_devices_it_keeps() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("devices.yaml");
    std::fs::write(&file, "- id: cam1\n- id: sensor\n").unwrap();
    let mut h = Running::start(Box::new(StaticHandler::new(file.clone())));
    assert!(matches!(h.next().await, DeviceEvent::Resync { .. }));

    let mut f = std::fs::File::create(&file).unwrap();
    // The handler sees the truncation and reads an empty file before the rest arrives.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    f.write_all(b"- id: cam1-renamed\n- id: sensor\n").unwrap();
    drop(f);

    let mut gone = Vec::new();
    let renamed = loop {
        match h.next().await {
            DeviceEvent::Seen(d) => break d,
            DeviceEvent::Gone { identity, .. } => gone.push(identity),
            ev @ DeviceEvent::Resync { .. } => panic!("unexpected {ev:?}"),
        }
    };
    assert_eq!(renamed.identity, "cam1-renamed");
    assert_eq!(gone, ["cam1"], "only the renamed device is gone");
    // Nothing else follows: sensor was never reported gone, so it is not reported again.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(h.try_next().is_none());
    h.stop().await.unwrap();
}
