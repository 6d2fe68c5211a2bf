//! Assembling the server from a [`Config`]: store, runtime, packs, sandboxes, API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::batches::Batches;
use crate::capabilities::service::CapabilityService;
use crate::cases::Cases;
use crate::config::Config;
use crate::jobs::RunEngine;
use crate::metrics::Metrics;
use crate::packs::{PackSettings, Packs, watcher};
use crate::probes::ProbeService;
use crate::probes::scheduler::{self, SchedulerHandle};
use crate::relays::Relays;
use crate::runtime::Runtime;
use crate::runtime::logs::PluginLogs;
use crate::sandbox::SandboxDriver;
use crate::sandbox::docker::{DockerDefaults, DockerDriver};
use crate::sandbox::gc;
use crate::sandbox::isolation::IsolationSettings;
use crate::sandbox::process::{ProcessDriver, ProcessLimits};
use crate::sandbox::profiles::Profiles;
use crate::sandbox::service::Sandboxes;
use crate::store::{self, keys};

/// A running server's parts. Dropping it stops the pack watcher.
pub struct Server {
    pub state: AppState,
    _watcher: notify::RecommendedWatcher,
    _probe_scheduler: SchedulerHandle,
}

impl Server {
    /// Opens the store, loads every pack, then starts watching the packs dir.
    /// A generated admin key is returned for the caller to print once.
    pub async fn start(config: Config) -> anyhow::Result<(Server, Option<String>)> {
        let db = store::open(&config.data_dir).await?;
        let generated_admin = keys::bootstrap_admin(&db, config.admin_key.as_deref())
            .await
            .map_err(|err| anyhow::anyhow!(err.message))?;
        let metrics = Arc::new(Metrics::new());
        let runtime = Arc::new(
            Runtime::new(
                config.runtime.clone(),
                config.data_dir.join("cache/components"),
                metrics.clone(),
            )
            .context("starting the wasm runtime")?,
        );
        let logs = Arc::new(PluginLogs::new(
            config.packs.log_lines_per_pack,
            config.packs.log_owners_per_pack,
        ));
        let profiles = Profiles::new(&config.profiles).context("sandbox profiles")?;
        let settings = PackSettings::new(
            &config.packs,
            config.data_dir.join("pack-data"),
            profiles.names(),
        );
        let packs = Arc::new(Packs::new(config.packs_dir(), runtime, logs, settings)?);
        // Watch first, then scan: nothing dropped in between is missed.
        let watcher = watcher::watch(
            packs.clone(),
            Duration::from_millis(config.packs.debounce_ms),
        )?;
        packs.rescan().await;
        let process = Arc::new(ProcessDriver::new(
            config.data_dir.join("sandboxes"),
            ProcessLimits {
                sandbox_memory_bytes: config.sandbox.process_default_memory_mib << 20,
                ..ProcessLimits::default()
            },
            IsolationSettings {
                uid: config.sandbox.process_uid,
                gid: config.sandbox.process_gid,
                tmp_size_mib: config.sandbox.process_tmp_mib,
            },
        )?);
        let mut drivers: Vec<Arc<dyn SandboxDriver>> = vec![process];
        if config.sandbox.docker {
            let defaults = DockerDefaults::from_config(&config.sandbox)?;
            match DockerDriver::connect(&instance_id(&config.data_dir)?, defaults).await {
                Some(docker) => drivers.push(Arc::new(docker)),
                None => tracing::info!(
                    "no Docker daemon answers: the docker sandbox driver is unavailable"
                ),
            }
        }
        for name in profiles.unisolated() {
            tracing::warn!(
                profile = %name,
                "profile runs process sandboxes WITHOUT isolation (isolation = \"none\"): admin keys only"
            );
        }
        let sandboxes = Arc::new(Sandboxes::new(
            db.clone(),
            drivers,
            config.sandbox.clone(),
            profiles,
        ));
        for collector in sandboxes.metrics.collectors() {
            metrics.register(collector);
        }
        sandboxes
            .reconcile()
            .await
            .map_err(|err| anyhow::anyhow!("reconciling sandboxes: {}", err.message))?;
        // Profiles contributed by active packs (accepted by the operator's policy when each
        // pack loaded), kept in step with every scan.
        let pack_profiles = |packs: &Packs| {
            packs
                .snapshot()
                .profiles
                .values()
                .cloned()
                .collect::<Vec<_>>()
        };
        sandboxes
            .profiles()
            .set_pack_profiles(pack_profiles(&packs));
        tokio::spawn({
            let (packs, sandboxes) = (packs.clone(), sandboxes.clone());
            let mut scans = packs.scans();
            async move {
                while scans.changed().await.is_ok() {
                    sandboxes
                        .profiles()
                        .set_pack_profiles(pack_profiles(&packs));
                }
            }
        });
        gc::spawn(
            sandboxes.clone(),
            Duration::from_millis(config.sandbox.gc_interval_ms.max(50)),
        );
        let probes = Arc::new(
            ProbeService::new(
                packs.clone(),
                db.clone(),
                config.probes.clone(),
                &config.data_dir,
                &metrics,
            )
            .context("starting probes")?,
        );
        let probe_scheduler = scheduler::spawn(probes.clone());
        let runs = RunEngine::start(db.clone(), config.runs.clone());
        let cases = Cases::start(
            db.clone(),
            runs.clone(),
            packs.clone(),
            &config,
            instance_id(&config.data_dir)?,
        )
        .await
        .context("starting cases")?;
        let capabilities = CapabilityService::start(
            db.clone(),
            packs.clone(),
            sandboxes.clone(),
            config.approvals.clone(),
            config.audit.clone(),
            &metrics,
        )
        .await
        .map_err(|err| anyhow::anyhow!("starting capabilities: {}", err.message))?;
        let batches = Batches::start(
            db.clone(),
            runs.clone(),
            sandboxes.clone(),
            capabilities.clone(),
            packs.clone(),
            &config,
            &metrics,
        )
        .await
        .context("starting batches")?;
        let relays = Relays::start(
            db.clone(),
            runs.clone(),
            packs.clone(),
            probes.runner().clone(),
            &config,
        )
        .await
        .context("starting relays")?;
        let state = AppState {
            config: Arc::new(config),
            db,
            packs,
            sandboxes,
            metrics,
            probes,
            runs,
            cases,
            batches,
            relays,
            capabilities,
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        Ok((
            Server {
                state,
                _watcher: watcher,
                _probe_scheduler: probe_scheduler,
            },
            generated_admin,
        ))
    }

    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = self.router();
        let streams = self.state.shutdown.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                streams.cancel();
            })
            .await?;
        Ok(())
    }
}

/// A stable id for this data dir, created on first start: it labels the
/// runtimes this server owns on a shared container engine.
fn instance_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = keys::new_id("wi");
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}
