//! edgewasm's public API: the `WasmWorkload` and `Device` custom resources, the grants an instance
//! receives, and the pure matching and placement core shared by the operator and standalone mode.

pub mod grants;

pub use grants::{Access, GrantedDevice, Grants, NetworkGrant, PathGrant, Protocol, GRANTS_ANNOTATION};
