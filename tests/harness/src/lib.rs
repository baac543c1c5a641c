//! End-to-end test harness: the real CRD apiserver (etcd + `crd-apiserver` from
//! `tests/apiserver`), an in-repo server for the core kinds, a path-routing proxy with fault
//! injection in front of both, and a test kubelet that runs Pods through containerd's CRI.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cluster = edgewasm_testkit::Cluster::shared().await?;
//! cluster.apply_crds(std::path::Path::new("crds")).await?;
//! let client = cluster.client().await?;
//! # let _ = client; Ok(()) }
//! ```

pub mod apiserver;
pub mod cluster;
pub mod containerd;
pub mod core;
pub mod kubelet;
pub mod oci;
pub mod process;
pub mod proxy;

pub use apiserver::{Binaries, CrdApiServer};
pub use cluster::{Cluster, eventually};
pub use kubelet::{Kubelet, KubeletConfig};
pub use proxy::Proxy;
