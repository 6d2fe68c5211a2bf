//! The wasmtime runtime: one engine with the pooling allocator, epoch
//! interruption and a digest-keyed compile cache; linkers for each world.

pub mod bindings;
pub mod call;
pub mod circuit;
pub mod http;
pub mod logs;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use self::bindings::PluginApi;
use self::call::Pre;
pub use self::call::{CallState, EffectiveLimits, LoadedComponent};
use self::circuit::Circuit;
use self::logs::PackLog;
use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::packs::manifest::ComponentKind;

/// Resolution of plugin deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

pub struct Runtime {
    engine: Engine,
    /// The imports of the adapter world of every served contract version, side by side
    /// (their instance names carry the version: `wharf:plugin/sandbox@0.1.0`, `@0.2.0`).
    adapter_linker: Linker<CallState>,
    /// The same for the provider world.
    provider_linker: Linker<CallState>,
    /// The 0.3 planner and relay-host worlds: the only ones linked with `wasi:http`.
    planner_linker: Linker<CallState>,
    relay_host_linker: Linker<CallState>,
    /// Compiled components by wasm sha256: the same bytes are compiled once.
    compiled: Mutex<HashMap<String, Component>>,
    /// Serialized compiled components, keyed by digest and engine build.
    cache_dir: PathBuf,
    config: RuntimeConfig,
    metrics: Arc<Metrics>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// What the loader knows about a component when it asks the runtime to load it.
pub struct ComponentLoad<'a> {
    pub pack_id: &'a str,
    pub name: &'a str,
    pub kind: ComponentKind,
    /// The contract version its pack's `requires.wharf` picked: the bindings it gets.
    pub api: PluginApi,
    pub wasm: &'a [u8],
    pub sha256: &'a str,
    pub generation: u64,
    pub limits: EffectiveLimits,
    pub log: Arc<PackLog>,
    /// The generation's snapshot of its declared data folders, preopened read-only at
    /// `/pack`; none when the pack declares no data.
    pub data_dir: Option<&'a Path>,
}

impl Runtime {
    pub fn new(
        config: RuntimeConfig,
        cache_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances.max(1);
        // A Rust wasm32-wasip2 component holds a few core instances (the program,
        // the WASI adapter and shims) and two memories.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size((config.max_memory_mib as usize) << 20);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)?;

        let mut adapter_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut adapter_linker)?;
        let mut provider_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut provider_linker)?;
        for api in PluginApi::ALL {
            bindings::add_adapter_imports(api, &mut adapter_linker)?;
            bindings::add_provider_imports(api, &mut provider_linker)?;
        }
        let mut planner_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut planner_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut planner_linker)?;
        bindings::add_planner_imports(&mut planner_linker)?;
        let mut relay_host_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut relay_host_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut relay_host_linker)?;
        bindings::add_relay_host_imports(&mut relay_host_linker)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("wharf-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache_dir = cache_dir.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&cache_dir)?;
        Ok(Self {
            engine,
            adapter_linker,
            provider_linker,
            planner_linker,
            relay_host_linker,
            compiled: Mutex::new(HashMap::new()),
            cache_dir,
            config,
            metrics,
            stop_ticker,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Compiles (or fetches from the memory or disk cache) and pre-instantiates a component.
    pub fn load(&self, load: ComponentLoad<'_>) -> anyhow::Result<LoadedComponent> {
        let component = self.compile(load.wasm, load.sha256)?;
        let pre = match load.kind {
            ComponentKind::Adapter => Pre::Adapter(bindings::adapter_pre(
                load.api,
                &self.adapter_linker,
                &component,
            )?),
            ComponentKind::Provider => Pre::Provider(bindings::provider_pre(
                load.api,
                &self.provider_linker,
                &component,
            )?),
            ComponentKind::Planner => Pre::Planner(bindings::planner_pre(
                load.api,
                &self.planner_linker,
                &component,
            )?),
            ComponentKind::RelayHost => Pre::RelayHost(bindings::relay_host_pre(
                load.api,
                &self.relay_host_linker,
                &component,
            )?),
        };
        Ok(LoadedComponent {
            pack_id: load.pack_id.into(),
            name: load.name.into(),
            kind: load.kind,
            api: load.api,
            sha256: load.sha256.to_string(),
            generation: load.generation,
            limits: load.limits,
            pre,
            circuit: Circuit::new(
                self.config.circuit_trap_threshold,
                Duration::from_millis(self.config.circuit_cooldown_ms),
            ),
            log: load.log,
            data_dir: load.data_dir.map(Path::to_path_buf),
            metrics: self.metrics.clone(),
            engine: self.engine.clone(),
        })
    }

    fn compile(&self, wasm: &[u8], sha256: &str) -> anyhow::Result<Component> {
        if let Some(component) = self.compiled.lock().get(sha256) {
            return Ok(component.clone());
        }
        let cached = self.cache_dir.join(format!("{sha256}.cwasm"));
        // SAFETY: the cache dir is ours, keyed by engine build, and written
        // only by `Component::serialize` below (via rename, never partially).
        let component = match unsafe { Component::deserialize_file(&self.engine, &cached) } {
            Ok(component) => component,
            Err(_) => {
                let component = Component::new(&self.engine, wasm)?;
                let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
                if let Ok(bytes) = component.serialize()
                    && std::fs::write(&tmp, bytes).is_ok()
                {
                    let _ = std::fs::rename(&tmp, &cached);
                }
                component
            }
        };
        self.compiled
            .lock()
            .insert(sha256.to_string(), component.clone());
        Ok(component)
    }

    /// Drops compiled components no loaded pack uses any more.
    pub fn retain_compiled(&self, live: &std::collections::HashSet<String>) {
        self.compiled
            .lock()
            .retain(|digest, _| live.contains(digest));
    }
}
