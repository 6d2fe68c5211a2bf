//! One plugin call: a fresh store and instance from the pre-instantiated
//! component, under a deadline and a memory cap, with traps turned into errors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{
    Adapter, AdapterPre, Planner, PlannerPre, Provider, ProviderPre, RelayHost, RelayHostPre,
};
use super::circuit::Circuit;
use super::http::{HttpGrant, PluginHttp};
use super::logs::PackLog;
use super::{EPOCH_TICK, Runtime};
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::metrics::Metrics;
use crate::packs::manifest::ComponentKind;
use crate::sandbox::service::SandboxBinding;

/// Where a plugin's panic message lands; kept small, it only feeds error text.
const STDERR_CAPTURE_BYTES: usize = 8 * 1024;

tokio::task_local! {
    /// The owner on whose behalf the plugin calls made by this task run: the API key's owner
    /// for a request, the target's owner for a scheduled probe. Their log lines are that
    /// owner's. Read it before moving a call to a blocking thread ([`current_owner`]).
    pub static CALL_OWNER: Arc<str>;
}

/// The owner of [`CALL_OWNER`], when this task has one.
pub fn current_owner() -> Option<Arc<str>> {
    CALL_OWNER.try_with(Clone::clone).ok()
}

/// Extra time a host call may take past the call's wall-clock bound before it is abandoned:
/// an exec is capped to the bound itself, so this only covers its kill and reply.
const HOST_CALL_GRACE: Duration = Duration::from_secs(2);

/// Per-call limits after the pack's request met the host's defaults and maxima.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct EffectiveLimits {
    /// The plugin's own execution time per call, in milliseconds (host calls excluded).
    #[serde(serialize_with = "as_millis")]
    #[schema(value_type = u64)]
    pub timeout: Duration,
    /// Wall-clock time per call, in milliseconds, host calls included.
    #[serde(serialize_with = "as_millis")]
    #[schema(value_type = u64)]
    pub wall_timeout: Duration,
    pub memory_bytes: usize,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Store data for one call.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    http_ctx: WasiHttpCtx,
    /// What this call may reach over `wasi:http` (linked only for planners and relay hosts).
    http: PluginHttp,
    memory: MemoryCap,
    log: Arc<PackLog>,
    /// The owner of the call: its log lines are that owner's.
    owner: Option<Arc<str>>,
    pack_id: Arc<str>,
    component: Arc<str>,
    generation: u64,
    pub(super) sandbox: Option<SandboxBinding>,
    pub(super) tokio: tokio::runtime::Handle,
    /// Time spent in host imports (sandbox exec, file I/O): not the plugin's to pay.
    pub(super) host_time: Duration,
    started: Instant,
    budget: Duration,
    wall_budget: Duration,
    /// Set when the wall-clock bound ran out in or before a host call: the call ends as
    /// `plugin_timeout` whatever the plugin returns afterwards.
    pub(super) wall_exceeded: bool,
}

impl CallState {
    pub(super) fn log(&self, level: &str, message: &str) {
        // A plugin may log what an exec printed: the sandbox's secret values never reach
        // the log ring or the server's own log lines.
        let masked = self
            .sandbox
            .as_ref()
            .map(|binding| binding.masker().mask(message));
        let message = masked.as_deref().unwrap_or(message);
        self.log.push(
            self.owner.as_deref(),
            &self.pack_id,
            &self.component,
            self.generation,
            level,
            message,
        );
    }

    fn guest_elapsed(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.host_time)
    }

    /// What is left of the call's wall-clock bound.
    pub(super) fn wall_remaining(&self) -> Duration {
        self.wall_budget.saturating_sub(self.started.elapsed())
    }

    /// The host-call budget: the rest of the wall-clock bound and a short grace for a
    /// capped exec to be killed and answer.
    pub(super) fn host_call_budget(&self) -> Duration {
        self.wall_remaining() + HOST_CALL_GRACE
    }

    /// Restarts the clocks for the next call on a kept instance.
    fn restart_clocks(&mut self) {
        self.started = Instant::now();
        self.host_time = Duration::ZERO;
        self.wall_exceeded = false;
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

/// Caps each linear memory and records that a grow was refused, so the
/// resulting trap can be reported as what it is.
struct MemoryCap {
    limit: usize,
    denied: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Why the epoch callback stopped a call.
#[derive(Debug)]
enum DeadlineExceeded {
    /// The plugin's own execution time ran out.
    Guest,
    /// The call's wall-clock time, host calls included, ran out.
    Wall,
}

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadlineExceeded::Guest => f.write_str("plugin deadline exceeded"),
            DeadlineExceeded::Wall => f.write_str("plugin call wall-clock bound exceeded"),
        }
    }
}

impl std::error::Error for DeadlineExceeded {}

pub(super) enum Pre {
    Adapter(AdapterPre),
    Provider(ProviderPre),
    Planner(PlannerPre),
    RelayHost(RelayHostPre),
}

impl Pre {
    fn world(&self) -> &'static str {
        match self {
            Pre::Adapter(_) => "an adapter",
            Pre::Provider(_) => "a provider",
            Pre::Planner(_) => "a planner",
            Pre::RelayHost(_) => "a relay-host adapter",
        }
    }
}

/// A compiled, pre-instantiated component of a loaded pack.
pub struct LoadedComponent {
    pub pack_id: Arc<str>,
    pub name: Arc<str>,
    pub kind: ComponentKind,
    /// The contract version it was loaded with.
    pub api: super::bindings::PluginApi,
    pub sha256: String,
    pub generation: u64,
    pub limits: EffectiveLimits,
    pub(super) pre: Pre,
    pub(super) circuit: Circuit,
    pub(super) log: Arc<PackLog>,
    /// Read-only preopen at `/pack`: the generation's snapshot of its declared data folders.
    pub(super) data_dir: Option<PathBuf>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) engine: wasmtime::Engine,
}

impl LoadedComponent {
    pub fn circuit_open(&self) -> bool {
        self.circuit.is_open()
    }

    fn new_store(
        &self,
        owner: Option<Arc<str>>,
        sandbox: Option<SandboxBinding>,
        http: Option<HttpGrant>,
        stderr: &MemoryOutputPipe,
    ) -> WharfResult<Store<CallState>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        if let Some(dir) = &self.data_dir {
            wasi.preopened_dir(dir, "/pack", FsPerms::ReadOnly)
                .map_err(|err| WharfError::internal(format!("cannot expose pack data: {err}")))?;
        }
        let http = PluginHttp {
            grant: http,
            deadline: Instant::now() + self.limits.wall_timeout,
            log: self.log.clone(),
            owner: owner.clone(),
            pack_id: self.pack_id.clone(),
            component: self.name.clone(),
            generation: self.generation,
        };
        let state = CallState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http_ctx: WasiHttpCtx::new(),
            http,
            memory: MemoryCap {
                limit: self.limits.memory_bytes,
                denied: false,
            },
            log: self.log.clone(),
            owner,
            pack_id: self.pack_id.clone(),
            component: self.name.clone(),
            generation: self.generation,
            sandbox,
            tokio: tokio::runtime::Handle::current(),
            host_time: Duration::ZERO,
            started: Instant::now(),
            budget: self.limits.timeout,
            wall_budget: self.limits.wall_timeout,
            wall_exceeded: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(ticks(self.limits.timeout.min(self.limits.wall_timeout)));
        // The epoch keeps ticking while the plugin waits in a host call, so this runs at
        // the first check after either budget is spent, whichever comes first.
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            let wall_left = state.wall_remaining();
            if wall_left.is_zero() {
                return Err(DeadlineExceeded::Wall.into());
            }
            let guest = state.guest_elapsed();
            if guest >= state.budget {
                return Err(DeadlineExceeded::Guest.into());
            }
            Ok(UpdateDeadline::Continue(ticks(
                (state.budget - guest).min(wall_left),
            )))
        });
        Ok(store)
    }

    /// Refuses a call while the circuit breaker has the component cooling down.
    fn check_circuit(&self) -> WharfResult<()> {
        if let Err(remaining) = self.circuit.check() {
            return Err(WharfError::new(
                ErrorCode::PluginUnavailable,
                format!(
                    "component {}/{} is cooling down after repeated faults; retry in {} ms",
                    self.pack_id,
                    self.name,
                    remaining.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// Runs `f` on a fresh instance. Must run on a blocking thread inside a
    /// tokio runtime (sandbox imports block on async drivers).
    fn call<R>(
        &self,
        owner: Option<Arc<str>>,
        sandbox: Option<SandboxBinding>,
        http: Option<HttpGrant>,
        f: impl FnOnce(&mut Store<CallState>, &Pre) -> wasmtime::Result<R>,
    ) -> WharfResult<(R, Duration)> {
        self.check_circuit()?;
        let started = Instant::now();
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let mut store = self.new_store(owner, sandbox, http, &stderr)?;
        let result = f(&mut store, &self.pre);
        let host_time = store.data().host_time;
        self.finish_call(started, result, &store, &stderr)
            .map(|value| (value, host_time))
    }

    /// Metrics, circuit and error classification after one call on `store`.
    fn finish_call<R>(
        &self,
        started: Instant,
        result: wasmtime::Result<R>,
        store: &Store<CallState>,
        stderr: &MemoryOutputPipe,
    ) -> WharfResult<R> {
        let labels = [&*self.pack_id, &*self.name];
        self.metrics
            .plugin_call_seconds
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        let outcome = match result {
            // A plugin whose host calls hit the wall-clock bound ends as a timeout, whatever
            // it made of the refused host call.
            Ok(_) if store.data().wall_exceeded => {
                Err(self.classify_fault(DeadlineExceeded::Wall.into(), store, stderr))
            }
            Ok(value) => {
                self.circuit.record_success();
                Ok(value)
            }
            Err(err) => Err(self.classify_fault(err, store, stderr)),
        };
        let label = match &outcome {
            Ok(_) => "ok",
            Err(err) => err.code.as_str(),
        };
        self.metrics
            .plugin_calls
            .with_label_values(&[&*self.pack_id, &*self.name, label])
            .inc();
        outcome
    }

    fn classify_fault(
        &self,
        err: wasmtime::Error,
        store: &Store<CallState>,
        stderr: &MemoryOutputPipe,
    ) -> WharfError {
        let who = format!("{}/{}", self.pack_id, self.name);
        if err
            .chain()
            .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
        {
            // The host is busy, the plugin did nothing wrong: retriable, and no fault
            // for the circuit breaker.
            return WharfError::new(
                ErrorCode::PluginUnavailable,
                format!(
                    "no free instance slot for {who}: every pooled instance is in use ({err}); retry shortly"
                ),
            )
            .with_retry_after(Duration::from_millis(100));
        }
        let panic_text = String::from_utf8_lossy(&stderr.contents())
            .trim()
            .to_string();
        if !panic_text.is_empty() {
            store.data().log("error", &panic_text);
        }
        let wall_exceeded = store.data().wall_exceeded
            || matches!(
                err.downcast_ref::<DeadlineExceeded>(),
                Some(DeadlineExceeded::Wall)
            );
        let (kind, error) = if wall_exceeded {
            (
                "timeout",
                WharfError::new(
                    ErrorCode::PluginTimeout,
                    format!(
                        "{who} exceeded its wall-clock bound of {} ms (host calls included) and was stopped",
                        self.limits.wall_timeout.as_millis()
                    ),
                ),
            )
        } else if err.downcast_ref::<DeadlineExceeded>().is_some() {
            (
                "timeout",
                WharfError::new(
                    ErrorCode::PluginTimeout,
                    format!(
                        "{who} exceeded its deadline of {} ms and was stopped",
                        self.limits.timeout.as_millis()
                    ),
                ),
            )
        } else if store.data().memory.denied {
            (
                "memory",
                WharfError::new(
                    ErrorCode::PluginTrap,
                    format!(
                        "{who} exceeded its memory cap of {} MiB and was stopped",
                        self.limits.memory_bytes >> 20
                    ),
                ),
            )
        } else {
            let detail = if panic_text.is_empty() {
                format!("{err:#}")
            } else {
                panic_text
            };
            let detail: String = detail.lines().take(6).collect::<Vec<_>>().join(" | ");
            (
                "trap",
                WharfError::new(ErrorCode::PluginTrap, format!("{who} trapped: {detail}")),
            )
        };
        self.metrics
            .plugin_traps
            .with_label_values(&[&*self.pack_id, &*self.name, kind])
            .inc();
        if self.circuit.record_fault() {
            tracing::warn!(pack = %self.pack_id, component = %self.name, "circuit opened after repeated faults");
        }
        error
    }

    /// An adapter call bound to `sandbox` (none for the self-test): it runs, and logs, on
    /// behalf of the sandbox's owner.
    pub fn adapter_call<R>(
        &self,
        sandbox: Option<SandboxBinding>,
        f: impl FnOnce(&mut Store<CallState>, &Adapter) -> wasmtime::Result<R>,
    ) -> WharfResult<R> {
        self.adapter_call_timed(sandbox, f).map(|(value, _)| value)
    }

    /// [`Self::adapter_call`], also giving the time spent in host calls (the
    /// sandbox primitives the plugin called): the rest is the wasm layer's.
    pub fn adapter_call_timed<R>(
        &self,
        sandbox: Option<SandboxBinding>,
        f: impl FnOnce(&mut Store<CallState>, &Adapter) -> wasmtime::Result<R>,
    ) -> WharfResult<(R, Duration)> {
        let owner = sandbox.as_ref().map(|binding| Arc::from(binding.owner()));
        self.call(owner, sandbox, None, |store, pre| match pre {
            Pre::Adapter(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                f(store, &bindings)
            }
            other => Err(wasmtime::format_err!(
                "component is {}, not an adapter",
                other.world()
            )),
        })
    }

    /// A provider call on behalf of `owner` (none for the host's own calls).
    pub fn provider_call<R>(
        &self,
        owner: Option<&str>,
        f: impl FnOnce(&mut Store<CallState>, &Provider) -> wasmtime::Result<R>,
    ) -> WharfResult<R> {
        self.call(owner.map(Arc::from), None, None, |store, pre| match pre {
            Pre::Provider(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                f(store, &bindings)
            }
            other => Err(wasmtime::format_err!(
                "component is {}, not a provider",
                other.world()
            )),
        })
        .map(|(value, _)| value)
    }

    /// A planner call on behalf of `owner`, whose `wasi:http` may reach what `http` grants
    /// (none: nothing). Blocking, like every call: run it on a blocking thread.
    pub fn planner_call<R>(
        &self,
        owner: Option<&str>,
        http: Option<HttpGrant>,
        f: impl FnOnce(&mut Store<CallState>, &Planner) -> wasmtime::Result<R>,
    ) -> WharfResult<R> {
        self.call(owner.map(Arc::from), None, http, |store, pre| match pre {
            Pre::Planner(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                f(store, &bindings)
            }
            other => Err(wasmtime::format_err!(
                "component is {}, not a planner",
                other.world()
            )),
        })
        .map(|(value, _)| value)
    }

    /// A relay-host adapter call on behalf of `owner`; `http` grants the registered host's
    /// origin with its admin credential. `http` none: describe-only (self-test).
    pub fn relay_host_call<R>(
        &self,
        owner: Option<&str>,
        http: Option<HttpGrant>,
        f: impl FnOnce(&mut Store<CallState>, &RelayHost) -> wasmtime::Result<R>,
    ) -> WharfResult<R> {
        self.call(owner.map(Arc::from), None, http, |store, pre| match pre {
            Pre::RelayHost(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                f(store, &bindings)
            }
            other => Err(wasmtime::format_err!(
                "component is {}, not a relay-host adapter",
                other.world()
            )),
        })
        .map(|(value, _)| value)
    }
}

/// One provider instance kept for several calls (e.g. plan, then judge each step of one probe),
/// so state the guest builds once per instance (its parsed catalog) is not rebuilt per call.
/// Each call gets the full per-call deadline again. After a fault the instance is dropped:
/// its state may be broken, so the next session starts fresh.
pub struct ProviderSession {
    component: Arc<LoadedComponent>,
    store: Store<CallState>,
    bindings: Provider,
    stderr: MemoryOutputPipe,
}

impl LoadedComponent {
    /// Instantiates a provider for a [`ProviderSession`] on behalf of `owner`. Blocking,
    /// like every call.
    pub fn provider_session(self: &Arc<Self>, owner: Option<&str>) -> WharfResult<ProviderSession> {
        let Pre::Provider(pre) = &self.pre else {
            return Err(WharfError::internal(format!(
                "component is {}, not a provider",
                self.pre.world()
            )));
        };
        self.check_circuit()?;
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let mut store = self.new_store(owner.map(Arc::from), None, None, &stderr)?;
        let bindings = match pre.instantiate(&mut store) {
            Ok(bindings) => bindings,
            Err(err) => return Err(self.classify_fault(err, &store, &stderr)),
        };
        Ok(ProviderSession {
            component: self.clone(),
            store,
            bindings,
            stderr,
        })
    }
}

impl ProviderSession {
    pub fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<CallState>, &Provider) -> wasmtime::Result<R>,
    ) -> WharfResult<R> {
        let component = &self.component;
        self.store.data_mut().restart_clocks();
        let limits = component.limits;
        self.store
            .set_epoch_deadline(ticks(limits.timeout.min(limits.wall_timeout)));
        let started = Instant::now();
        let result = f(&mut self.store, &self.bindings);
        component.finish_call(started, result, &self.store, &self.stderr)
    }
}

fn ticks(budget: Duration) -> u64 {
    (budget.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

impl Runtime {
    /// The host's defaults and maxima applied to what a pack asks for.
    pub fn effective_limits(&self, asked: crate::packs::manifest::Limits) -> EffectiveLimits {
        let cfg = &self.config;
        let timeout_ms = asked
            .timeout_ms
            .unwrap_or(cfg.default_timeout_ms)
            .min(cfg.max_timeout_ms);
        let memory_mib = asked
            .memory_mib
            .unwrap_or(cfg.default_memory_mib)
            .min(cfg.max_memory_mib);
        EffectiveLimits {
            timeout: Duration::from_millis(timeout_ms),
            wall_timeout: Duration::from_millis(cfg.call_wall_timeout_ms.max(1)),
            memory_bytes: (memory_mib as usize) << 20,
        }
    }
}
