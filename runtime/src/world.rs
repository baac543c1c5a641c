//! The edgewasm host interfaces beyond WASI: the `edgewasm:device` package, wasi:config and wasi:keyvalue,
//! and the per-instance state behind them.
//!
//! Every interface is in the host's one component linker, so any component may import them; the state
//! behind them is cheap (shared `Arc`s) and a device backend is only chosen and opened when the guest
//! first calls it. What a guest may reach is decided by [`crate::Grants`] and the [`WorldSpec`]: the
//! device it was granted, and nothing else.

use std::path::PathBuf;
use std::sync::Arc;

use edgewasm_api::Grants;
use wasmtime::component::{HasData, Linker};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use crate::device::{DeviceCtx, DeviceEvents};
use crate::keyvalue::{KeyValueStore, KeyValueView};
use crate::network::NetPolicy;
use crate::state::ComponentState;

/// Bindings of the interfaces served here, generated from `wit/edgewasm-device`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/edgewasm-device",
        inline: "
            package edgewasm:host;
            world host {
                import edgewasm:device/types@0.1.0;
                import edgewasm:device/camera@0.1.0;
                import edgewasm:device/sensor@0.1.0;
                import edgewasm:device/events@0.1.0;
                import wasi:keyvalue/store@0.2.0-draft;
                import wasi:keyvalue/atomics@0.2.0-draft;
                import wasi:keyvalue/batch@0.2.0-draft;
            }
        ",
        imports: { default: async | trappable },
        additional_derives: [PartialEq],
        with: {
            "wasi:keyvalue/store.bucket": crate::keyvalue::Bucket,
        },
    });
}

/// Login for a device that asks for one (an ONVIF camera's snapshot URI).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// Reads the `username` and `password` files of a mounted Kubernetes Secret (a
    /// `kubernetes.io/basic-auth` Secret as kubelet writes it into a volume); surrounding whitespace is
    /// trimmed.
    pub fn from_secret_dir(dir: &std::path::Path) -> Result<Self, crate::Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|source| crate::Error::Io { path, source })
        };
        Ok(Self {
            username: read("username")?,
            password: read("password")?,
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What an instance's host interfaces serve besides its grants, given to [`crate::Host::start_with`].
#[derive(Clone, Debug, Default)]
pub struct WorldSpec {
    /// Workload settings served through wasi:config. The instance's environment is served too (so the
    /// workload's `env` is its default configuration), and the granted device's properties as
    /// `device.<key>` plus `device.name` and `device.handler`; these settings win over both.
    pub config: Vec<(String, String)>,
    /// Directory holding the workload's wasi:keyvalue store, so it survives restarts (one file per
    /// bucket). `None` keeps the store in memory for the instance's lifetime.
    pub keyvalue_dir: Option<PathBuf>,
    /// Upper bound of the store's size (keys plus values); 0 means [`WorldSpec::DEFAULT_KEYVALUE_BYTES`].
    pub keyvalue_max_bytes: u64,
    /// Credentials for the granted device (an ONVIF camera's snapshot URI).
    pub credentials: Option<Credentials>,
    /// Lets the caller tell the instance that its device went away (`edgewasm:device/events`).
    pub events: DeviceEvents,
}

impl WorldSpec {
    /// Store size when none is given: enough for counters and a few small records.
    pub const DEFAULT_KEYVALUE_BYTES: u64 = 1024 * 1024;
}

/// The part of the world shared by every store of one instance.
pub(crate) struct WorldShared {
    pub(crate) device: Arc<DeviceCtx>,
    config: Arc<WasiConfigVariables>,
    keyvalue: Arc<KeyValueStore>,
}

impl WorldShared {
    pub(crate) fn new(
        grants: &Grants,
        env: &[(String, String)],
        net: Arc<NetPolicy>,
        spec: WorldSpec,
    ) -> Result<Self, crate::Error> {
        let mut config = WasiConfigVariables::new();
        for (k, v) in env {
            config.insert(k.clone(), v.clone());
        }
        if let Some(device) = &grants.device {
            config.insert("device.name", device.name.clone());
            config.insert("device.handler", device.handler.clone());
            for (k, v) in &device.properties {
                config.insert(format!("device.{k}"), v.clone());
            }
        }
        for (k, v) in &spec.config {
            config.insert(k.clone(), v.clone());
        }
        let max_bytes = match spec.keyvalue_max_bytes {
            0 => WorldSpec::DEFAULT_KEYVALUE_BYTES,
            n => n,
        };
        let keyvalue = KeyValueStore::open(spec.keyvalue_dir.as_deref(), max_bytes)?;
        Ok(Self {
            device: Arc::new(DeviceCtx::new(grants, net, spec.credentials, spec.events)),
            config: Arc::new(config),
            keyvalue,
        })
    }
}

/// The world's state in one store.
pub(crate) struct WorldState {
    pub(crate) device: Arc<DeviceCtx>,
    /// Whether this store's guest has seen the `appeared` and `gone` events.
    pub(crate) appeared_seen: bool,
    pub(crate) gone_seen: bool,
    config: Arc<WasiConfigVariables>,
    keyvalue: Arc<KeyValueStore>,
}

impl WorldState {
    pub(crate) fn new(shared: &WorldShared) -> Self {
        Self {
            device: Arc::clone(&shared.device),
            appeared_seen: false,
            gone_seen: false,
            config: Arc::clone(&shared.config),
            keyvalue: Arc::clone(&shared.keyvalue),
        }
    }
}

struct HasWorld;

impl HasData for HasWorld {
    type Data<'a> = &'a mut WorldState;
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds the device interfaces, wasi:config and wasi:keyvalue to the component linker.
pub(crate) fn add_to_linker(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    use bindings::edgewasm::device::{camera, events, sensor, types};
    use bindings::wasi::keyvalue::{atomics, batch, store};
    fn world(s: &mut ComponentState) -> &mut WorldState {
        &mut s.world
    }
    fn kv(s: &mut ComponentState) -> KeyValueView<'_> {
        KeyValueView {
            store: &s.world.keyvalue,
            table: &mut s.table,
        }
    }
    types::add_to_linker::<_, HasWorld>(linker, world)?;
    camera::add_to_linker::<_, HasWorld>(linker, world)?;
    sensor::add_to_linker::<_, HasWorld>(linker, world)?;
    events::add_to_linker::<_, HasWorld>(linker, world)?;
    store::add_to_linker::<_, HasKeyValue>(linker, kv)?;
    atomics::add_to_linker::<_, HasKeyValue>(linker, kv)?;
    batch::add_to_linker::<_, HasKeyValue>(linker, kv)?;
    wasmtime_wasi_config::add_to_linker(linker, |s: &mut ComponentState| {
        WasiConfig::new(&s.world.config)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_a_secret_volume_and_do_not_print_the_password() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("username"), "admin\n").unwrap();
        let err = Credentials::from_secret_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
        std::fs::write(dir.path().join("password"), "s3cret").unwrap();
        let c = Credentials::from_secret_dir(dir.path()).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("admin", "s3cret")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
