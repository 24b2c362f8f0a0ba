//! The one wasmtime `Engine`: pooling allocator sized to the policy limits, epoch
//! interruption driven by a ticker thread, compiled artifacts cached on disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::MAX_POLICY_MEMORY;

/// Bytes of each memory slot kept resident between instances (the default memory cap).
const KEEP_RESIDENT: usize = 16 << 20;

/// How often the epoch advances: a running guest yields this often, and its deadline is
/// checked.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Concurrent evaluations the pool holds; more wait for a slot... or fail, so keep it ample.
const POOL_INSTANCES: u32 = 64;
/// Guard pages after each linear memory; bounds checks are explicit beyond it.
const GUARD_BYTES: u64 = 64 << 10;

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    Pooling,
    OnDemand,
}

/// The engine and its epoch ticker. Dropping it stops the ticker.
pub struct PolicyEngine {
    engine: Engine,
    stop: Arc<AtomicBool>,
    allocation: Allocation,
}

impl PolicyEngine {
    /// Pooling allocator when the machine allows the reservation, on-demand otherwise.
    /// `cache_dir`: where compiled components are kept (keyed by content and wasmtime version).
    pub fn new(cache_dir: Option<&Path>) -> wasmtime::Result<Self> {
        match Self::with(Allocation::Pooling, cache_dir) {
            Ok(engine) => Ok(engine),
            Err(e) => {
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
                Self::with(Allocation::OnDemand, cache_dir)
            }
        }
    }

    pub fn with(allocation: Allocation, cache_dir: Option<&Path>) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(512 << 10);
        // Reserve what the largest allowed policy memory needs, not 4 GiB per memory.
        config.memory_reservation(MAX_POLICY_MEMORY);
        config.memory_guard_size(GUARD_BYTES);
        config.memory_reservation_for_growth(0);
        if allocation == Allocation::Pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(POOL_INSTANCES)
                .total_core_instances(POOL_INSTANCES * 8)
                .total_memories(POOL_INSTANCES * 2)
                .total_tables(POOL_INSTANCES * 4)
                .total_stacks(POOL_INSTANCES)
                .max_memory_size(MAX_POLICY_MEMORY as usize)
                // Sized to the default memory cap: a Python or JavaScript guest dirties
                // megabytes per evaluation, and pages kept resident are reset in place
                // (only the dirty ones, with pagemap_scan) instead of faulted in again.
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(64 << 10)
                .async_stack_keep_resident(128 << 10)
                .pagemap_scan(Enabled::Auto);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        if let Some(dir) = cache_dir {
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(Cache::new(cache)?));
        }
        let engine = Engine::new(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (weak, flag) = (engine.weak(), stop.clone());
        std::thread::Builder::new().name("warden-epoch".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })?;
        Ok(Self { engine, stop, allocation })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn allocation(&self) -> Allocation {
        self.allocation
    }

    /// Whether the kernel lets the pool reset only the pages a guest dirtied (Linux 6.7+).
    pub fn pagemap_scan_available(&self) -> bool {
        PoolingAllocationConfig::is_pagemap_scan_available()
    }

    /// Virtual memory the pool reserves for linear memories, for the record.
    pub fn pool_reservation_bytes(&self) -> u64 {
        match self.allocation {
            Allocation::Pooling => u64::from(POOL_INSTANCES * 2) * (MAX_POLICY_MEMORY + GUARD_BYTES),
            Allocation::OnDemand => 0,
        }
    }
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
