//! What each wasmtime `Store` carries: the WASI context built from the grants and the memory limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::http::OutgoingPolicy;

/// Store data for a WASI preview 1 core module.
pub(crate) struct ModuleState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryLimiter,
}

/// Store data for a component (command or HTTP proxy).
pub(crate) struct ComponentState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) outgoing: OutgoingPolicy,
    pub(crate) limiter: MemoryLimiter,
    /// The edgewasm device interfaces, wasi:config and wasi:keyvalue.
    pub(crate) world: crate::world::WorldState,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing,
        }
    }
}

/// Raised (as a trap) when a guest grows past its memory limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "out of memory: the guest needed {requested} bytes of linear memory, over its limit of {limit} bytes"
)]
pub(crate) struct OutOfMemory {
    pub(crate) requested: u64,
    pub(crate) limit: u64,
}

/// Memory limiter charging every store of an instance to one shared counter.
pub(crate) struct MemoryLimiter {
    limit: Option<u64>,
    /// Bytes of linear memory in use across the instance's stores.
    pub(crate) used: Arc<AtomicU64>,
    /// Bytes this store holds (returned to `used` on drop).
    mine: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: Option<u64>, used: Arc<AtomicU64>) -> Self {
        Self {
            limit,
            used,
            mine: 0,
        }
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.used.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = (desired - current) as u64;
        let total = self.used.fetch_add(grow, Ordering::Relaxed) + grow;
        if let Some(limit) = self.limit
            && total > limit
        {
            self.used.fetch_sub(grow, Ordering::Relaxed);
            // A trap rather than `Ok(false)`: like the kernel's OOM killer, the instance ends with a clear
            // reason instead of a guest allocator abort that reads like a bug.
            return Err(wasmtime::Error::new(OutOfMemory {
                requested: total,
                limit,
            }));
        }
        self.mine += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables are small; cap them so a guest cannot use them to dodge the memory limit.
        Ok(desired <= 1_000_000)
    }
}
