//! Cases: a git repository cloned, patched, built from its Dockerfile and run on a leased
//! host port, with live logs (seed 000's repo runner, on the run engine of [`crate::jobs`]).
//!
//! `POST /v1/cases` stores the case and its run and answers at once; a background task
//! then runs the phases, each a step of the run:
//! 1. `clone` ([`git`]): shallow, at `ref`, from https (outbound address rules) or a local
//!    path (admin keys, or under `[cases] local_roots`);
//! 2. `patch` ([`Cases::patch_phase`]): the overlays of the active packs that match the
//!    case's `target` and `version` (or the ones it names) are applied all or nothing
//!    ([`crate::overlays`]); a hunk that does not apply fails the case with
//!    `overlay_conflict` and nothing is written;
//! 3. `build` ([`build`], bollard): streamed into the log, bounded in memory, time and
//!    context size; at most `[cases] max_concurrent_builds` at once (clone, patch and
//!    build hold one slot; the rest wait `queued`);
//! 4. `start`: a host port leased from `[cases] port_pool_start..=port_pool_end` (held until
//!    the container ends, whoever ends it), the container created hardened and started;
//! 5. `ready`: HTTP GET on the access URL until a 2xx, within `[cases] readiness_timeout_ms`.
//!
//! Secrets (`secret_env`) are sealed at rest with the probes key, reach the container as
//! environment variables, and are replaced by `***` in every answer, log line and error.
//! They are visible to whoever can run `docker inspect` on the engine (root-equivalent
//! on the host anyway); see the README.

pub mod build;
pub mod git;
mod pipeline;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::QuotasConfig;
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::jobs::log::Level;
use crate::jobs::{RunEngine, RunKind, Stream, now_ms};
use crate::probes::crypto::SecretBox;
use crate::store::keys::Principal;
use crate::store::rfc3339_from_ms;
use crate::store::{Db, cases as store};

/// Docker labels on every container and image a case makes.
pub const LABEL_CASE: &str = "wharf.case";
pub const LABEL_OWNER: &str = "wharf.owner";
pub const LABEL_INSTANCE: &str = "wharf.instance";

/// `[cases]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CasesConfig {
    /// First and last host port leased to case containers.
    pub port_pool_start: u16,
    pub port_pool_end: u16,
    /// Host address case ports are published on.
    pub publish_address: std::net::IpAddr,
    /// Host name or address in each case's `access_url`.
    pub access_host: String,
    /// Builds (clone, patch and build) running at once; the rest wait `queued`.
    pub max_concurrent_builds: usize,
    /// Memory of each build's containers (the engine takes at most 2047).
    pub build_memory_mib: u64,
    /// Longest build; past it the build is cancelled with `docker_build_failed`.
    pub build_timeout_ms: u64,
    /// Largest build context (file bytes) sent to the engine.
    pub max_context_mib: u64,
    /// Longest clone.
    pub clone_timeout_ms: u64,
    /// How long a started container has to answer its access URL with a 2xx.
    pub readiness_timeout_ms: u64,
    /// Memory, processes and CPU cores of each case container.
    pub run_memory_mib: u64,
    pub run_pids: i64,
    pub run_cpus: f64,
    /// Directories under which non-admin keys may clone local paths (none by default).
    pub local_roots: Vec<PathBuf>,
    /// Whether non-admin keys may clone from private, loopback or link-local addresses.
    pub allow_private_git: bool,
    /// Period of the check that finds containers that ended unseen, and orphans.
    pub watch_interval_ms: u64,
}

impl Default for CasesConfig {
    fn default() -> Self {
        Self {
            port_pool_start: 30_000,
            port_pool_end: 30_099,
            publish_address: std::net::Ipv4Addr::LOCALHOST.into(),
            access_host: "127.0.0.1".into(),
            max_concurrent_builds: 2,
            build_memory_mib: 2047,
            build_timeout_ms: 900_000,
            max_context_mib: 512,
            clone_timeout_ms: 300_000,
            readiness_timeout_ms: 60_000,
            run_memory_mib: 1024,
            run_pids: 512,
            run_cpus: 1.0,
            local_roots: Vec::new(),
            allow_private_git: false,
            watch_interval_ms: 2_000,
        }
    }
}

/// Where a case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    Queued,
    Cloning,
    Patching,
    Building,
    Starting,
    Running,
    Failed,
    Stopped,
}

impl CaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Queued => "queued",
            CaseStatus::Cloning => "cloning",
            CaseStatus::Patching => "patching",
            CaseStatus::Building => "building",
            CaseStatus::Starting => "starting",
            CaseStatus::Running => "running",
            CaseStatus::Failed => "failed",
            CaseStatus::Stopped => "stopped",
        }
    }

    fn parse(text: &str) -> CaseStatus {
        match text {
            "queued" => CaseStatus::Queued,
            "cloning" => CaseStatus::Cloning,
            "patching" => CaseStatus::Patching,
            "building" => CaseStatus::Building,
            "starting" => CaseStatus::Starting,
            "running" => CaseStatus::Running,
            "stopped" => CaseStatus::Stopped,
            _ => CaseStatus::Failed,
        }
    }

    pub fn is_live(self) -> bool {
        !matches!(self, CaseStatus::Failed | CaseStatus::Stopped)
    }
}

/// Every status in which a case is not finished.
const LIVE: &[&str] = &[
    "queued", "cloning", "patching", "building", "starting", "running",
];

/// Bounds on what a request may carry.
const MAX_ENV_ENTRIES: usize = 64;
const MAX_ENV_NAME: usize = 128;
const MAX_ENV_VALUE: usize = 16 * 1024;
/// Secret values shorter than this could not be masked without hiding ordinary text.
const MIN_SECRET_LEN: usize = 4;

/// `POST /v1/cases`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    /// `https://host/path`, `file:///abs/path` or `/abs/path` (local paths: admin keys, or
    /// under `[cases] local_roots`).
    pub git_url: String,
    /// Branch, tag or commit; default the repository's HEAD.
    #[serde(rename = "ref", default)]
    pub git_ref: Option<String>,
    /// The Dockerfile's path inside `context_dir`; default `Dockerfile`.
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// The build context inside the repository; default its root.
    #[serde(default)]
    pub context_dir: Option<String>,
    /// Environment of the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment of the container whose values are secret: `***` everywhere they show.
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    /// The port the app listens on inside the container.
    #[schema(minimum = 1, maximum = 65535)]
    pub container_port: u16,
    /// Overlay target (e.g. a relay host's name), with `version`: the overlays of the active
    /// packs that match are applied after the clone.
    #[serde(default)]
    pub target: Option<String>,
    /// The target's semver version (a leading `v` allowed), with `target`.
    #[serde(default)]
    pub version: Option<String>,
    /// Overlays to apply by id (`<overlay>` or `<pack>/<overlay>`) instead of matching.
    #[serde(default)]
    pub overlays: Option<Vec<String>>,
}

/// What is stored of a request: everything but the secret values.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CaseSpec {
    git_url: String,
    git_ref: Option<String>,
    dockerfile: Option<String>,
    context_dir: Option<String>,
    env: BTreeMap<String, String>,
    secret_names: Vec<String>,
    container_port: u16,
    /// The creating key was an admin key (it may clone local paths and private addresses).
    admin: bool,
    target: Option<String>,
    version: Option<String>,
    overlays: Vec<String>,
}

/// Milliseconds each phase took (absent until it ran).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct CaseTimings {
    pub clone_ms: Option<i64>,
    pub patch_ms: Option<i64>,
    pub build_ms: Option<i64>,
    pub start_ms: Option<i64>,
    pub ready_ms: Option<i64>,
}

/// A case as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Case {
    pub case_id: String,
    pub status: CaseStatus,
    pub git_url: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub dockerfile: Option<String>,
    pub context_dir: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Names of the secret variables, each value shown as `***`.
    pub secret_env: BTreeMap<String, String>,
    pub container_port: u16,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The container's exit code, once it exited.
    pub exit_code: Option<i64>,
    pub image_id: Option<String>,
    pub container_id: Option<String>,
    /// The leased host port while the case starts or runs.
    pub host_port: Option<u16>,
    pub access_url: Option<String>,
    pub overlays_applied: Vec<String>,
    pub timings: CaseTimings,
    pub created_at: String,
    pub updated_at: String,
}

/// The cases subsystem: one per server.
pub struct Cases {
    db: Db,
    engine: Arc<RunEngine>,
    /// Where the overlays of the patch phase come from.
    packs: Arc<crate::packs::Packs>,
    docker: Option<Docker>,
    config: CasesConfig,
    quotas: QuotasConfig,
    data_dir: PathBuf,
    instance: String,
    secrets: SecretBox,
    build_slots: Arc<Semaphore>,
    /// Background pipelines in flight, to stop them.
    pipelines: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Container log followers, to let them drain before a run ends.
    followers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    http: reqwest::Client,
}

impl Cases {
    /// Connects to the Docker engine (cases need one; without it creates are refused),
    /// recovers the cases of a previous process and starts the exit/orphan watcher.
    pub async fn start(
        db: Db,
        engine: Arc<RunEngine>,
        packs: Arc<crate::packs::Packs>,
        config: &crate::config::Config,
        instance: String,
    ) -> anyhow::Result<Arc<Cases>> {
        let cases_config = config.cases.clone();
        anyhow::ensure!(
            cases_config.port_pool_start <= cases_config.port_pool_end
                && cases_config.port_pool_start > 0,
            "[cases] port_pool_start must be at least 1 and at most port_pool_end"
        );
        anyhow::ensure!(
            cases_config.max_concurrent_builds > 0,
            "[cases] max_concurrent_builds must be at least 1"
        );
        let docker = match Docker::connect_with_local_defaults() {
            Ok(docker) => match tokio::time::timeout(Duration::from_secs(3), docker.ping()).await {
                Ok(Ok(_)) => Some(docker),
                _ => None,
            },
            Err(_) => None,
        };
        if docker.is_none() {
            tracing::info!("no Docker engine answers: cases are unavailable");
        }
        let cases = Arc::new(Cases {
            db,
            engine,
            packs,
            docker,
            build_slots: Arc::new(Semaphore::new(cases_config.max_concurrent_builds)),
            config: cases_config,
            quotas: config.quotas.clone(),
            data_dir: config.data_dir.clone(),
            instance,
            secrets: SecretBox::load(config.probes.encryption_key.as_deref(), &config.data_dir)?,
            pipelines: Mutex::new(HashMap::new()),
            followers: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()?,
        });
        cases
            .recover()
            .await
            .map_err(|err| anyhow::anyhow!("recovering cases: {}", err.message))?;
        pipeline::spawn_watcher(&cases);
        Ok(cases)
    }

    fn docker(&self) -> WharfResult<&Docker> {
        self.docker.as_ref().ok_or_else(|| {
            WharfError::new(
                ErrorCode::DockerApiError,
                "no Docker engine answers: cases need one",
            )
        })
    }

    fn checkout_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("cases").join(id)
    }

    /// Validates a request, stores the case and its run, starts it in the background.
    pub async fn create(
        self: &Arc<Self>,
        principal: &Principal,
        request: CaseRequest,
    ) -> WharfResult<Case> {
        let overlays = crate::overlays::Request {
            target: request.target.clone(),
            version: request.version.clone(),
            overlays: request.overlays.clone().unwrap_or_default(),
        };
        overlays.check()?;
        // Named overlays must exist now; the patch phase selects again from the packs
        // active then.
        overlays.select(&self.packs.snapshot())?;
        git::classify_source(
            &request.git_url,
            principal.admin,
            &self.config.local_roots,
            &self.data_dir,
        )?;
        if let Some(git_ref) = &request.git_ref {
            git::check_ref(git_ref)?;
        }
        if let Some(path) = &request.dockerfile {
            build::check_relative("dockerfile", path)?;
        }
        if let Some(path) = &request.context_dir {
            build::check_relative("context_dir", path)?;
        }
        check_env("env", &request.env)?;
        check_env("secret_env", &request.secret_env)?;
        if let Some(name) = request
            .env
            .keys()
            .find(|n| request.secret_env.contains_key(*n))
        {
            return Err(WharfError::validation(format!(
                "`{name}` is in both `env` and `secret_env`"
            )));
        }
        if let Some((name, _)) = request
            .secret_env
            .iter()
            .find(|(_, v)| v.len() < MIN_SECRET_LEN)
        {
            return Err(WharfError::validation(format!(
                "secret_env `{name}`: secret values must be at least {MIN_SECRET_LEN} characters \
                 (shorter ones cannot be masked in logs)"
            )));
        }
        if request.container_port == 0 {
            return Err(WharfError::validation(
                "`container_port` must be 1 to 65535",
            ));
        }
        self.docker()?;
        if let Some(cap) = self.quotas.cases_for(principal.admin)
            && store::count_for_owner(&self.db, &principal.owner).await? >= i64::from(cap)
        {
            return Err(WharfError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this owner already holds {cap} cases ([quotas] cases_per_owner); delete one first"
                ),
            ));
        }
        let id = crate::store::keys::new_id("case");
        let sealed = if request.secret_env.is_empty() {
            None
        } else {
            let json = serde_json::to_string(&request.secret_env)
                .map_err(|err| WharfError::internal(err.to_string()))?;
            Some(self.secrets.seal(&json, &id)?)
        };
        let spec = CaseSpec {
            git_url: request.git_url,
            git_ref: request.git_ref,
            dockerfile: request.dockerfile,
            context_dir: request.context_dir,
            env: request.env,
            secret_names: request.secret_env.keys().cloned().collect(),
            container_port: request.container_port,
            admin: principal.admin,
            target: overlays.target,
            version: overlays.version,
            overlays: overlays.overlays,
        };
        let spec_json =
            serde_json::to_string(&spec).map_err(|err| WharfError::internal(err.to_string()))?;
        store::insert(
            &self.db,
            &id,
            &principal.owner,
            CaseStatus::Queued.as_str(),
            &spec_json,
            sealed.as_deref(),
            now_ms(),
        )
        .await?;
        self.engine
            .create(&id, RunKind::Case, &principal.owner, "case created")
            .await?;
        self.engine
            .log(
                &id,
                Stream::System,
                Level::Info,
                &format!(
                    "case created: {} at {}",
                    spec.git_url,
                    spec.git_ref.as_deref().unwrap_or("HEAD")
                ),
            )
            .await;
        self.spawn_pipeline(&id);
        self.get(&principal.owner, &id).await
    }

    fn spawn_pipeline(self: &Arc<Self>, id: &str) {
        let task = tokio::spawn(pipeline::run(self.clone(), id.to_string()));
        self.pipelines
            .lock()
            .insert(id.to_string(), task.abort_handle());
    }

    /// The case of `owner` (another owner's is `not_found`).
    pub async fn get(&self, owner: &str, id: &str) -> WharfResult<Case> {
        let row = store::get(&self.db, id, Some(owner))
            .await?
            .ok_or_else(|| WharfError::not_found("case"))?;
        self.view(row).await
    }

    /// The run behind a case of `owner` exists (for its log routes).
    pub async fn check_owner(&self, owner: &str, id: &str) -> WharfResult<()> {
        store::get(&self.db, id, Some(owner))
            .await?
            .map(|_| ())
            .ok_or_else(|| WharfError::not_found("case"))
    }

    pub async fn list(
        &self,
        owner: &str,
        before: Option<&str>,
        limit: usize,
    ) -> WharfResult<Vec<Case>> {
        let cursor = match before {
            Some(id) => Some(
                store::get(&self.db, id, Some(owner))
                    .await?
                    .map(|row| (row.created_ms, row.id))
                    .ok_or_else(|| WharfError::validation("`before` names no case of yours"))?,
            ),
            None => None,
        };
        let rows = store::list(
            &self.db,
            owner,
            cursor.as_ref().map(|(ms, id)| (*ms, id.as_str())),
            limit as i64,
        )
        .await?;
        let mut cases = Vec::with_capacity(rows.len());
        for row in rows {
            cases.push(self.view(row).await?);
        }
        Ok(cases)
    }

    async fn view(&self, row: store::CaseRow) -> WharfResult<Case> {
        let spec: CaseSpec = serde_json::from_str(&row.spec)
            .map_err(|err| WharfError::internal(format!("stored case spec: {err}")))?;
        let timings = self.engine.step_timings(&row.id).await?;
        let status = CaseStatus::parse(&row.status);
        let host_port = if matches!(status, CaseStatus::Starting | CaseStatus::Running) {
            row.host_port.and_then(|p| u16::try_from(p).ok())
        } else {
            None
        };
        Ok(Case {
            case_id: row.id,
            status,
            git_url: spec.git_url,
            git_ref: spec.git_ref,
            dockerfile: spec.dockerfile,
            context_dir: spec.context_dir,
            env: spec.env,
            secret_env: spec
                .secret_names
                .into_iter()
                .map(|name| (name, "***".to_string()))
                .collect(),
            container_port: spec.container_port,
            error_code: row.error_code,
            error_message: row.error_message,
            exit_code: row.exit_code,
            image_id: row.image_id,
            container_id: row.container_id,
            access_url: host_port.map(|port| format!("http://{}:{port}", self.config.access_host)),
            host_port,
            overlays_applied: serde_json::from_str(&row.overlays_applied).unwrap_or_default(),
            timings: CaseTimings {
                clone_ms: timings.get("clone").copied(),
                patch_ms: timings.get("patch").copied(),
                build_ms: timings.get("build").copied(),
                start_ms: timings.get("start").copied(),
                ready_ms: timings.get("ready").copied(),
            },
            created_at: rfc3339_from_ms(row.created_ms),
            updated_at: rfc3339_from_ms(row.updated_ms),
        })
    }

    /// Stops a case: its pipeline if it is still being prepared, its container if it runs;
    /// the port goes back to the pool. Stopping an ended case changes nothing.
    pub async fn stop(&self, owner: &str, id: &str) -> WharfResult<Case> {
        let row = store::get(&self.db, id, Some(owner))
            .await?
            .ok_or_else(|| WharfError::not_found("case"))?;
        let status = CaseStatus::parse(&row.status);
        if status.is_live() {
            if let Some(task) = self.pipelines.lock().remove(id) {
                task.abort();
            }
            if store::set_status(&self.db, id, LIVE, CaseStatus::Stopped.as_str(), now_ms()).await?
            {
                self.remove_containers(id).await;
                store::release_port(&self.db, id).await?;
                self.drain_follower(id).await;
                self.engine
                    .log(
                        id,
                        Stream::System,
                        Level::Info,
                        &format!("stopped by its owner (was {})", status.as_str()),
                    )
                    .await;
                let (state, reason) = if status == CaseStatus::Running {
                    (crate::jobs::RunState::Succeeded, "stopped by its owner")
                } else {
                    (
                        crate::jobs::RunState::Cancelled,
                        "stopped by its owner before it was running",
                    )
                };
                self.engine.finish(id, state, None, reason).await?;
                let _ = std::fs::remove_dir_all(self.checkout_dir(id));
            }
        }
        self.get(owner, id).await
    }

    /// The tag of a case's image: `wharf-case/<case id>:<server instance id>`, so the
    /// images of one server are found by the reference `wharf-case/*:<instance>`.
    pub(super) fn image_tag(&self, id: &str) -> String {
        format!("wharf-case/{id}:{}", self.instance)
    }

    /// Stops the case, then removes its image, its run and its row.
    pub async fn delete(&self, owner: &str, id: &str) -> WharfResult<()> {
        self.stop(owner, id).await?;
        let row = store::get(&self.db, id, Some(owner))
            .await?
            .ok_or_else(|| WharfError::not_found("case"))?;
        if let (Some(_), Ok(docker)) = (&row.image_id, self.docker()) {
            // By this case's tag, unforced: an identical tree built by another case has
            // the same image id, and its image (and layer cache) must stay.
            let options = bollard::query_parameters::RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            };
            if let Err(err) = docker
                .remove_image(&self.image_tag(id), Some(options), None)
                .await
            {
                tracing::debug!(case = id, error = %err, "removing a case image");
            }
        }
        self.engine.delete(id).await?;
        store::delete(&self.db, id).await?;
        Ok(())
    }

    /// Removes every container labelled with this case (stopping it first).
    async fn remove_containers(&self, id: &str) {
        let Ok(docker) = self.docker() else { return };
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_CASE}={id}"),
                format!("{LABEL_INSTANCE}={}", self.instance),
            ],
        )]);
        // Listed again after each pass: a removal the engine refuses for the moment (one
        // already in progress, a container still stopping) is tried again.
        for pass in 0..3 {
            let listed = docker
                .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await
                .unwrap_or_default();
            if listed.is_empty() {
                return;
            }
            if pass > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            for container_id in listed.into_iter().filter_map(|c| c.id) {
                let _ = docker
                    .stop_container(
                        &container_id,
                        Some(bollard::query_parameters::StopContainerOptions {
                            t: Some(3),
                            signal: None,
                        }),
                    )
                    .await;
                let options = bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                if let Err(err) = docker.remove_container(&container_id, Some(options)).await {
                    tracing::warn!(case = id, error = %err, "removing a case container");
                }
            }
        }
    }

    /// Waits (briefly) for a case's container log follower to pass on its last lines.
    async fn drain_follower(&self, id: &str) {
        let follower = self.followers.lock().remove(id);
        if let Some(follower) = follower {
            let abort = follower.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), follower)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// After a restart: the runs of the previous process are resumed (queued, running with
    /// their container alive) or failed with `run_interrupted` (mid clone, patch, build or
    /// start), so no case stays live without a worker.
    async fn recover(self: &Arc<Self>) -> WharfResult<()> {
        for run in self.engine.orphans(RunKind::Case).await? {
            let Some(row) = store::get(&self.db, &run.id, None).await? else {
                self.engine
                    .finish(
                        &run.id,
                        crate::jobs::RunState::Failed,
                        Some(ErrorCode::RunInterrupted),
                        "its case row is gone",
                    )
                    .await?;
                continue;
            };
            let id = row.id.clone();
            match CaseStatus::parse(&row.status) {
                CaseStatus::Queued => {
                    self.engine
                        .log(
                            &id,
                            Stream::System,
                            Level::Info,
                            "the server restarted: the queued case is resumed",
                        )
                        .await;
                    self.spawn_pipeline(&id);
                }
                CaseStatus::Running if self.docker.is_some() => {
                    pipeline::reattach(self, row).await?;
                }
                status if status.is_live() => {
                    let err = WharfError::new(
                        ErrorCode::RunInterrupted,
                        format!(
                            "the server stopped while the case was {}; create it again",
                            status.as_str()
                        ),
                    );
                    pipeline::fail(self, &id, err).await;
                }
                status => {
                    // The case ended but its run did not record it (killed in between).
                    let (state, code) = if status == CaseStatus::Failed {
                        (
                            crate::jobs::RunState::Failed,
                            Some(ErrorCode::RunInterrupted),
                        )
                    } else {
                        (crate::jobs::RunState::Succeeded, None)
                    };
                    self.engine
                        .finish(
                            &id,
                            state,
                            code,
                            "the case had ended when the server restarted",
                        )
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The **patch phase**: the overlays the case asks for (matching its `target` and
    /// `version` in the packs active now, or named), applied to `checkout` all or nothing
    /// (every patch is applied in memory first; a hunk that does not apply is
    /// `overlay_conflict` naming overlay, patch, file and hunk, and nothing is written). An
    /// overlay already in the tree is not applied twice. Says on [`Stream::Patch`] what was
    /// chosen, why the others were not, and what each changed; returns the
    /// `<pack>/<overlay>` names applied (stored as `overlays_applied`).
    async fn patch_phase(
        &self,
        id: &str,
        spec: &CaseSpec,
        checkout: &std::path::Path,
    ) -> WharfResult<Vec<String>> {
        use crate::overlays::apply::{self, Action, Direction};
        let request = crate::overlays::Request {
            target: spec.target.clone(),
            version: spec.version.clone(),
            overlays: spec.overlays.clone(),
        };
        let (selected, lines) = request.select(&self.packs.snapshot())?;
        for line in &lines {
            self.engine.log(id, Stream::Patch, Level::Info, line).await;
        }
        if selected.is_empty() {
            return Ok(Vec::new());
        }
        let root = checkout.to_path_buf();
        let outcomes = tokio::task::spawn_blocking(move || {
            apply::run(&root, &selected, Direction::Apply, false)
        })
        .await
        .map_err(|err| WharfError::internal(format!("patch task failed: {err}")))?;
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(err) => {
                self.engine
                    .log(
                        id,
                        Stream::Patch,
                        Level::Error,
                        &format!(
                            "{}: {} (nothing was written)",
                            err.code.as_str(),
                            err.message
                        ),
                    )
                    .await;
                return Err(err);
            }
        };
        let mut applied = Vec::new();
        for outcome in outcomes {
            let name = format!("{}/{}", outcome.pack, outcome.overlay);
            let line = match outcome.action {
                Action::AlreadyApplied => format!(
                    "already applied {name} ({}): left as it is",
                    outcome.pack_version
                ),
                _ => format!(
                    "applied {name} ({}): {}",
                    outcome.pack_version,
                    outcome.files.join(", ")
                ),
            };
            self.engine.log(id, Stream::Patch, Level::Info, &line).await;
            applied.push(name);
        }
        Ok(applied)
    }
}

fn check_env(field: &str, env: &BTreeMap<String, String>) -> WharfResult<()> {
    if env.len() > MAX_ENV_ENTRIES {
        return Err(WharfError::validation(format!(
            "`{field}` has more than {MAX_ENV_ENTRIES} entries"
        )));
    }
    for (name, value) in env {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_ENV_NAME
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(WharfError::validation(format!(
                "`{field}` names must be 1 to {MAX_ENV_NAME} of A-Z a-z 0-9 _, not starting with a digit"
            )));
        }
        if value.len() > MAX_ENV_VALUE || value.contains('\0') {
            return Err(WharfError::validation(format!(
                "`{field}.{name}`: values are at most {MAX_ENV_VALUE} bytes, without NUL"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_and_sizes_are_bounded() {
        let ok = BTreeMap::from([("FOO".to_string(), "bar".to_string())]);
        check_env("env", &ok).unwrap();
        for bad in ["", "1A", "A-B", "A=B"] {
            let env = BTreeMap::from([(bad.to_string(), "x".to_string())]);
            assert!(check_env("env", &env).is_err(), "{bad}");
        }
        let big = BTreeMap::from([("A".to_string(), "x".repeat(MAX_ENV_VALUE + 1))]);
        assert!(check_env("env", &big).is_err());
    }
}
