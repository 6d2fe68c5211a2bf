//! The background life of a case: clone, patch, build, start, ready, then watching the
//! container until it ends (and re-attaching to it after a restart).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, PortBinding};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, InspectContainerOptions, ListContainersOptions,
    LogsOptions,
};
use futures::StreamExt;

use super::{
    CaseSpec, CaseStatus, Cases, LABEL_CASE, LABEL_INSTANCE, LABEL_OWNER, LIVE, build, git, store,
};
use crate::capabilities::secrets::SecretMasker;
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::jobs::log::Level;
use crate::jobs::{RetryPolicy, RunState, Stream, now_ms};
use crate::outbound::Reach;

/// Clone retries on transient network failures.
const CLONE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    initial_backoff: Duration::from_millis(500),
    max_backoff: Duration::from_secs(8),
};
/// Engine calls that create and start the container retry once on an engine fault.
const ENGINE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 2,
    initial_backoff: Duration::from_millis(300),
    max_backoff: Duration::from_secs(2),
};
/// Lines of a dead container's output quoted in its error.
const LAST_LINES: usize = 20;

/// A case's request and secrets, loaded for its pipeline.
struct Job {
    id: String,
    owner: String,
    spec: CaseSpec,
    secret_env: BTreeMap<String, String>,
    masker: SecretMasker,
}

async fn load(cases: &Cases, id: &str) -> WharfResult<Job> {
    let row = store::get(&cases.db, id, None)
        .await?
        .ok_or_else(|| WharfError::not_found("case"))?;
    let spec: CaseSpec = serde_json::from_str(&row.spec)
        .map_err(|err| WharfError::internal(format!("stored case spec: {err}")))?;
    let secret_env: BTreeMap<String, String> = match &row.secret_env_sealed {
        Some(sealed) => serde_json::from_str(&cases.secrets.open(sealed, id)?)
            .map_err(|_| WharfError::internal("stored secrets are unreadable"))?,
        None => BTreeMap::new(),
    };
    Ok(Job {
        id: row.id,
        owner: row.owner,
        masker: SecretMasker::new(secret_env.values().map(String::as_str)),
        spec,
        secret_env,
    })
}

/// Runs a case from `queued` to `running`, or fails it with its code.
pub(super) async fn run(cases: Arc<Cases>, id: String) {
    let result = match load(&cases, &id).await {
        Ok(job) => prepare_and_start(&cases, &job).await,
        Err(err) => Err(err),
    };
    cases.pipelines.lock().remove(&id);
    if let Err(err) = result {
        fail(&cases, &id, err).await;
    }
}

/// Moves the case from `from` to `to`; an error (ending the pipeline) when it was
/// stopped meanwhile.
async fn advance(cases: &Cases, id: &str, from: CaseStatus, to: CaseStatus) -> WharfResult<()> {
    if store::set_status(&cases.db, id, &[from.as_str()], to.as_str(), now_ms()).await? {
        cases
            .engine
            .log(
                id,
                Stream::System,
                Level::Info,
                &format!("status: {}", to.as_str()),
            )
            .await;
        Ok(())
    } else {
        Err(WharfError::new(
            ErrorCode::Conflict,
            "the case was stopped meanwhile",
        ))
    }
}

async fn prepare_and_start(cases: &Arc<Cases>, job: &Job) -> WharfResult<()> {
    let id = job.id.as_str();
    if cases.build_slots.available_permits() == 0 {
        cases
            .engine
            .log(
                id,
                Stream::System,
                Level::Info,
                &format!(
                    "waiting for a build slot ([cases] max_concurrent_builds = {})",
                    cases.config.max_concurrent_builds
                ),
            )
            .await;
    }
    let slot = cases
        .build_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| WharfError::internal("build slots closed"))?;
    cases
        .engine
        .claim(id, "a build slot is free: preparing the case")
        .await?;
    let checkout_root = cases.checkout_dir(id);
    let checkout = checkout_root.join("src");
    advance(cases, id, CaseStatus::Queued, CaseStatus::Cloning).await?;
    let source = git::classify_source(
        &job.spec.git_url,
        job.spec.admin,
        &cases.config.local_roots,
        &cases.data_dir,
    )?;
    let reach = Reach::for_caller(job.spec.admin, cases.config.allow_private_git);
    let clone_timeout = Duration::from_millis(cases.config.clone_timeout_ms);
    let cloned = cases
        .engine
        .step(id, "clone", CLONE_RETRY, |_| {
            let _ = std::fs::remove_dir_all(&checkout);
            git::clone(
                &source,
                job.spec.git_ref.as_deref(),
                &checkout,
                reach,
                clone_timeout,
            )
        })
        .await?;
    for line in &cloned.lines {
        cases
            .engine
            .log(id, Stream::Clone, Level::Info, &job.masker.mask(line))
            .await;
    }
    cases
        .engine
        .log(
            id,
            Stream::Clone,
            Level::Info,
            &format!("checked out {}", cloned.commit),
        )
        .await;

    advance(cases, id, CaseStatus::Cloning, CaseStatus::Patching).await?;
    let applied = cases
        .engine
        .step(id, "patch", RetryPolicy::NONE, |_| {
            cases.patch_phase(id, &job.spec, &checkout)
        })
        .await?;
    let applied_json = serde_json::to_string(&applied).unwrap_or_else(|_| "[]".into());
    store::set_overlays_applied(&cases.db, id, &applied_json, now_ms()).await?;

    advance(cases, id, CaseStatus::Patching, CaseStatus::Building).await?;
    let image = cases
        .engine
        .step(id, "build", RetryPolicy::NONE, |_| {
            build_image(cases, job, &checkout)
        })
        .await?;
    store::set_image(&cases.db, id, &image, now_ms()).await?;
    drop(slot);
    let _ = std::fs::remove_dir_all(&checkout_root);

    advance(cases, id, CaseStatus::Building, CaseStatus::Starting).await?;
    let (container_id, port) = cases
        .engine
        .step(id, "start", ENGINE_RETRY, |_| {
            start_container(cases, job, &image)
        })
        .await?;
    let access_url = format!("http://{}:{port}", cases.config.access_host);
    cases
        .engine
        .log(
            id,
            Stream::System,
            Level::Info,
            &format!(
                "container {} started on host port {port}: {access_url}",
                short(&container_id)
            ),
        )
        .await;
    spawn_follower(cases, id, &container_id, None, job.masker.clone());
    cases
        .engine
        .step(id, "ready", RetryPolicy::NONE, |_| {
            wait_ready(cases, job, &container_id, &access_url)
        })
        .await?;
    advance(cases, id, CaseStatus::Starting, CaseStatus::Running).await?;
    cases
        .engine
        .note(id, &format!("running: {access_url} answered 2xx"))
        .await?;
    spawn_exit_watcher(cases, id, &container_id);
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Fails a live case with `err` (its message masked): the container goes, the port is
/// released, the run ends failed with the code. A case already ended is left as it is.
pub(super) async fn fail(cases: &Cases, id: &str, err: WharfError) {
    let masker = match load(cases, id).await {
        Ok(job) => job.masker,
        Err(_) => SecretMasker::default(),
    };
    let message = masker.mask(&err.message).into_owned();
    // The checkout goes first, so whoever sees `failed` sees no half-made tree. (An ended
    // case has none left to lose: every path removes it.)
    let _ = std::fs::remove_dir_all(cases.checkout_dir(id));
    let failed = store::set_failed(
        &cases.db,
        id,
        LIVE,
        CaseStatus::Failed.as_str(),
        Some(err.code.as_str()),
        Some(&message),
        None,
        now_ms(),
    )
    .await
    .unwrap_or(false);
    if !failed {
        return;
    }
    cases.remove_containers(id).await;
    if let Err(err) = store::release_port(&cases.db, id).await {
        tracing::warn!(case = id, error = %err.message, "releasing a case port");
    }
    cases.drain_follower(id).await;
    cases
        .engine
        .log(
            id,
            Stream::System,
            Level::Error,
            &format!("failed ({}): {message}", err.code.as_str()),
        )
        .await;
    if let Err(err) = cases
        .engine
        .finish(id, RunState::Failed, Some(err.code), &message)
        .await
    {
        tracing::warn!(case = id, error = %err.message, "ending a case run");
    }
}

fn engine_error(what: &str, err: &bollard::errors::Error) -> WharfError {
    WharfError::new(ErrorCode::DockerApiError, format!("docker: {what}: {err}"))
}

async fn build_image(cases: &Cases, job: &Job, checkout: &Path) -> WharfResult<String> {
    let docker = cases.docker()?;
    let (context, dockerfile) = build::resolve(
        checkout,
        job.spec.context_dir.as_deref(),
        job.spec.dockerfile.as_deref(),
    )?;
    let max = cases.config.max_context_mib << 20;
    let tar = tokio::task::spawn_blocking(move || build::context_tar(&context, max))
        .await
        .map_err(|err| WharfError::internal(format!("build context: {err}")))??;
    let memory = (cases.config.build_memory_mib << 20).min(i32::MAX as u64) as i32;
    let tag = cases.image_tag(&job.id);
    // No build labels: the legacy builder adds them as a last LABEL step, which commits a
    // new layer on every build (seconds each here) and gives every case its own image id.
    // Without them a warm cache builds in milliseconds and an identical tree shares one
    // image; the tag names the case and this server.
    let options = BuildImageOptions {
        dockerfile,
        t: Some(tag.clone()),
        rm: true,
        forcerm: true,
        memory: Some(memory),
        memswap: Some(memory),
        ..Default::default()
    };
    let id = job.id.as_str();
    let tar = bytes::Bytes::from(tar);
    let mut attempt = 1;
    let image = loop {
        match stream_build(cases, job, docker, options.clone(), tar.clone()).await {
            // Another build or a case delete (this server or another one on the same
            // engine) removed an untagged cache layer this build was about to reuse. The
            // legacy builder reports that as a failed export; a second try rebuilds the
            // missing layer.
            Err(err) if attempt == 1 && is_layer_cache_race(&err.message) => {
                attempt += 1;
                let line = format!(
                    "retrying the build once: a cached layer vanished ({})",
                    err.message
                );
                cases
                    .engine
                    .log(id, Stream::System, Level::Warn, &line)
                    .await;
            }
            other => break other?,
        }
    };
    let image = match image {
        Some(image) => image,
        None => docker
            .inspect_image(&tag)
            .await
            .map_err(|err| engine_error("inspecting the built image", &err))?
            .id
            .unwrap_or(tag),
    };
    cases
        .engine
        .log(
            id,
            Stream::Build,
            Level::Info,
            &format!("built image {image}"),
        )
        .await;
    Ok(image)
}

/// Sends one build to the engine and streams its output into the case log. Answers the
/// image id when the engine reported one.
async fn stream_build(
    cases: &Cases,
    job: &Job,
    docker: &bollard::Docker,
    options: BuildImageOptions,
    tar: bytes::Bytes,
) -> WharfResult<Option<String>> {
    let id = job.id.as_str();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(tar)));
    let mut step: Option<String> = None;
    let mut image: Option<String> = None;
    let timeout = Duration::from_millis(cases.config.build_timeout_ms);
    let consume = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            let line = job.masker.mask(line).into_owned();
                            if line.starts_with("Step ") {
                                step = Some(line.clone());
                            }
                            cases
                                .engine
                                .log(id, Stream::Build, Level::Info, &line)
                                .await;
                        }
                    }
                    if let Some(status) = info.status {
                        let line = job.masker.mask(&status).into_owned();
                        cases
                            .engine
                            .log(id, Stream::Build, Level::Info, &line)
                            .await;
                    }
                    if let Some(aux) = info.aux
                        && let Some(found) = aux.id
                    {
                        image = Some(found);
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error })
                | Err(bollard::errors::Error::DockerResponseServerError {
                    message: error, ..
                }) => {
                    let error = job.masker.mask(&error).into_owned();
                    cases
                        .engine
                        .log(id, Stream::Build, Level::Error, &error)
                        .await;
                    return Err(build_failed(step.as_deref(), &error, cases));
                }
                Err(err) => return Err(engine_error("build", &err)),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, consume).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(WharfError::new(
                ErrorCode::DockerBuildFailed,
                format!(
                    "the build passed its time limit of {} s ([cases] build_timeout_ms) at {}; it was cancelled",
                    timeout.as_secs(),
                    step.as_deref().unwrap_or("its start")
                ),
            ));
        }
    }
    Ok(image)
}

/// The legacy builder's answer when a parent layer it reused from cache was removed
/// mid-build.
fn is_layer_cache_race(message: &str) -> bool {
    message.contains("unknown parent image ID") || message.contains("No such image: sha256:")
}

fn build_failed(step: Option<&str>, error: &str, cases: &Cases) -> WharfError {
    let hint = if error.contains("non-zero code: 137") {
        format!(
            " (137: killed, most likely past the build memory limit of {} MiB, [cases] build_memory_mib)",
            cases.config.build_memory_mib
        )
    } else {
        String::new()
    };
    let message = match step {
        Some(step) => format!("{step}: {error}{hint}"),
        None => format!("before the first step: {error}{hint}"),
    };
    WharfError::new(ErrorCode::DockerBuildFailed, message)
}

/// Leases a port, creates the hardened container and starts it. On failure the lease and
/// the container are given back before the error is returned. A port the engine finds taken
/// outside this server (another server's case, any program) is skipped for the next free
/// one, up to [`MAX_TAKEN_PORTS`] times.
async fn start_container(cases: &Cases, job: &Job, image: &str) -> WharfResult<(String, u16)> {
    let id = job.id.as_str();
    let mut taken: Vec<u16> = Vec::new();
    loop {
        let port = match store::port_of(&cases.db, id).await? {
            Some(port) => port as u16,
            None => lease_port(cases, id, &taken).await?,
        };
        match create_and_start(cases, job, image, port).await {
            Ok(container_id) => {
                store::set_container(&cases.db, id, &container_id, i64::from(port), now_ms())
                    .await?;
                return Ok((container_id, port));
            }
            Err(err) => {
                cases.remove_containers(id).await;
                store::release_port(&cases.db, id).await?;
                if !is_port_taken(&err.message) || taken.len() >= MAX_TAKEN_PORTS {
                    return Err(err);
                }
                let line = format!("host port {port} is taken outside Wharf; trying another");
                cases
                    .engine
                    .log(id, Stream::System, Level::Warn, &line)
                    .await;
                taken.push(port);
            }
        }
    }
}

/// How many ports of the pool a case start skips because the engine found them taken.
const MAX_TAKEN_PORTS: usize = 8;

async fn lease_port(cases: &Cases, id: &str, taken: &[u16]) -> WharfResult<u16> {
    let (first, last) = (cases.config.port_pool_start, cases.config.port_pool_end);
    store::lease_port(&cases.db, id, first, last, taken, now_ms())
        .await?
        .ok_or_else(|| {
            let outside = if taken.is_empty() {
                String::new()
            } else {
                format!(" (ports taken outside Wharf: {taken:?})")
            };
            WharfError::new(
                ErrorCode::PortPoolExhausted,
                format!("every port of the pool {first}-{last} is leased to a live case{outside}"),
            )
        })
}

/// The engine's answer when the host port is bound already (by a container it knows, or
/// by any other program).
fn is_port_taken(message: &str) -> bool {
    message.contains("port is already allocated") || message.contains("address already in use")
}

async fn create_and_start(cases: &Cases, job: &Job, image: &str, port: u16) -> WharfResult<String> {
    let docker = cases.docker()?;
    let container_port = format!("{}/tcp", job.spec.container_port);
    let env: Vec<String> = job
        .spec
        .env
        .iter()
        .chain(job.secret_env.iter())
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let memory = (cases.config.run_memory_mib << 20) as i64;
    let host_config = HostConfig {
        port_bindings: Some(HashMap::from([(
            container_port.clone(),
            Some(vec![PortBinding {
                host_ip: Some(cases.config.publish_address.to_string()),
                host_port: Some(port.to_string()),
            }]),
        )])),
        memory: Some(memory),
        memory_swap: Some(memory),
        pids_limit: Some(cases.config.run_pids),
        nano_cpus: Some((cases.config.run_cpus * 1e9) as i64),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        // The capabilities an ordinary app needs (own files, drop to a user, bind a low
        // port); none of the ones that reach the host.
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: Some(
            [
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "SETUID",
                "SETGID",
                "NET_BIND_SERVICE",
                "KILL",
            ]
            .map(String::from)
            .to_vec(),
        ),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_string()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "10m".to_string()),
                ("max-file".to_string(), "2".to_string()),
            ])),
        }),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(env),
        exposed_ports: Some(vec![container_port]),
        labels: Some(HashMap::from([
            (LABEL_CASE.to_string(), job.id.clone()),
            (LABEL_OWNER.to_string(), job.owner.clone()),
            (LABEL_INSTANCE.to_string(), cases.instance.clone()),
        ])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let name = format!("wharf-{}", job.id.replace('_', "-"));
    // A container left by an earlier attempt goes first.
    cases.remove_containers(&job.id).await;
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                platform: String::new(),
            }),
            body,
        )
        .await
        .map_err(|err| start_error("creating the container", &err, &job.masker))?;
    docker
        .start_container(&created.id, None)
        .await
        .map_err(|err| start_error("starting the container", &err, &job.masker))?;
    Ok(created.id)
}

fn start_error(what: &str, err: &bollard::errors::Error, masker: &SecretMasker) -> WharfError {
    match err {
        bollard::errors::Error::DockerResponseServerError { message, .. } => WharfError::new(
            ErrorCode::ContainerStartFailed,
            masker.mask_string(format!("{what}: {message}")),
        ),
        other => engine_error(what, other),
    }
}

/// Polls the access URL until a 2xx; fails if the container ends first or time runs out.
async fn wait_ready(cases: &Cases, job: &Job, container_id: &str, url: &str) -> WharfResult<()> {
    let timeout = Duration::from_millis(cases.config.readiness_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(exit) = exited(cases, container_id).await? {
            store::set_exit_code(&cases.db, &job.id, exit, now_ms()).await?;
            return Err(exit_error(cases, job, container_id, exit).await);
        }
        let last = match cases.http.get(url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("HTTP {}", response.status().as_u16()),
            Err(err) => format!("{}", err.without_url()),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(WharfError::new(
                ErrorCode::ReadinessTimeout,
                format!(
                    "{url} gave no 2xx within {} s ([cases] readiness_timeout_ms); last: {last}",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Some(exit code)` once the container is no longer running (`-1` when it is gone).
async fn exited(cases: &Cases, container_id: &str) -> WharfResult<Option<i64>> {
    let docker = cases.docker()?;
    match docker
        .inspect_container(container_id, None::<InspectContainerOptions>)
        .await
    {
        Ok(info) => {
            let state = info.state.unwrap_or_default();
            if state.running == Some(true) {
                Ok(None)
            } else {
                Ok(Some(state.exit_code.unwrap_or(-1)))
            }
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(Some(-1)),
        Err(err) => Err(engine_error("inspecting the container", &err)),
    }
}

/// The last lines a container wrote, masked.
async fn last_lines(cases: &Cases, masker: &SecretMasker, container_id: &str) -> Vec<String> {
    let Ok(docker) = cases.docker() else {
        return Vec::new();
    };
    let mut logs = docker.logs(
        container_id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: LAST_LINES.to_string(),
            ..Default::default()
        }),
    );
    let mut lines = Vec::new();
    while let Some(Ok(chunk)) = logs.next().await {
        let text = String::from_utf8_lossy(&chunk.into_bytes()).into_owned();
        lines.extend(
            text.lines()
                .map(|l| masker.mask_string(l.chars().take(300).collect())),
        );
    }
    let skip = lines.len().saturating_sub(LAST_LINES);
    lines.split_off(skip)
}

async fn exit_error(cases: &Cases, job: &Job, container_id: &str, code: i64) -> WharfError {
    let lines = last_lines(cases, &job.masker, container_id).await;
    let tail = if lines.is_empty() {
        "(no output)".to_string()
    } else {
        lines.join("\n")
    };
    if code == 0 {
        WharfError::new(
            ErrorCode::ContainerStartFailed,
            format!("the container exited with code 0 before it answered; last lines:\n{tail}"),
        )
    } else {
        WharfError::new(
            ErrorCode::ContainerExitNonzero,
            format!("the container exited with code {code}; last lines:\n{tail}"),
        )
    }
}

/// Copies the container's output into the run log (stream `run`), from `after` (unix
/// seconds of the last line already there, when re-attaching) on.
fn spawn_follower(
    cases: &Arc<Cases>,
    id: &str,
    container_id: &str,
    after: Option<f64>,
    masker: SecretMasker,
) {
    let Ok(docker) = cases.docker().cloned() else {
        return;
    };
    let engine = cases.engine.clone();
    let (id_owned, container) = (id.to_string(), container_id.to_string());
    let task = tokio::spawn(async move {
        let mut logs = docker.logs(
            &container,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                timestamps: true,
                since: after.map(|ts| ts.floor() as i32).unwrap_or(0),
                tail: "all".to_string(),
                ..Default::default()
            }),
        );
        let mut pending: HashMap<bool, String> = HashMap::new();
        while let Some(Ok(chunk)) = logs.next().await {
            let (is_err, bytes) = match chunk {
                LogOutput::StdErr { message } => (true, message),
                LogOutput::StdOut { message } | LogOutput::Console { message } => (false, message),
                LogOutput::StdIn { .. } => continue,
            };
            let buffer = pending.entry(is_err).or_default();
            buffer.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = buffer.find('\n') {
                let raw: String = buffer.drain(..=end).collect();
                let raw = raw.trim_end_matches(['\n', '\r']);
                let (ts, text) = split_timestamp(raw);
                if let (Some(after), Some(ts)) = (after, ts)
                    && ts <= after
                {
                    continue;
                }
                let level = if is_err { Level::Warn } else { Level::Info };
                engine
                    .log_at(&id_owned, Stream::Run, level, &masker.mask(text), ts)
                    .await;
            }
        }
    });
    cases.followers.lock().insert(id.to_string(), task);
}

/// `2026-01-01T00:00:00.123456789Z text` → (unix seconds, text).
fn split_timestamp(raw: &str) -> (Option<f64>, &str) {
    let Some((stamp, text)) = raw.split_once(' ') else {
        return (None, raw);
    };
    match time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339) {
        Ok(t) => (Some(t.unix_timestamp_nanos() as f64 / 1e9), text),
        Err(_) => (None, raw),
    }
}

/// Ends the case when its container ends, whoever ended it.
fn spawn_exit_watcher(cases: &Arc<Cases>, id: &str, container_id: &str) {
    let Ok(docker) = cases.docker().cloned() else {
        return;
    };
    let cases = cases.clone();
    let (id, container) = (id.to_string(), container_id.to_string());
    tokio::spawn(async move {
        let mut wait = docker.wait_container(&container, None);
        // Ends (Ok or a wait error carrying the exit code) when the container stops; a
        // transport error is left to the periodic check.
        if let Some(Err(bollard::errors::Error::RequestTimeoutError)) = wait.next().await {
            return;
        }
        container_ended(&cases, &id, &container).await;
    });
}

/// A running case's container is no longer running: record how it ended, free the port.
async fn container_ended(cases: &Arc<Cases>, id: &str, container_id: &str) {
    let Ok(Some(code)) = exited(cases, container_id).await else {
        return;
    };
    let Ok(job) = load(cases, id).await else {
        return;
    };
    let err = exit_error(cases, &job, container_id, code).await;
    cases.drain_follower(id).await;
    let (status, error_code, state) = if code == 0 {
        (CaseStatus::Stopped, None, RunState::Succeeded)
    } else {
        (
            CaseStatus::Failed,
            Some(ErrorCode::ContainerExitNonzero),
            RunState::Failed,
        )
    };
    let message = if code == -1 {
        "the container is gone (removed outside wharf)".to_string()
    } else {
        err.message.clone()
    };
    let changed = store::set_failed(
        &cases.db,
        id,
        &[CaseStatus::Running.as_str()],
        status.as_str(),
        error_code.map(ErrorCode::as_str),
        if code == 0 {
            None
        } else {
            Some(message.as_str())
        },
        Some(code),
        now_ms(),
    )
    .await
    .unwrap_or(false);
    if !changed {
        return;
    }
    let _ = store::release_port(&cases.db, id).await;
    cases
        .engine
        .log(
            id,
            Stream::System,
            if code == 0 { Level::Info } else { Level::Error },
            &format!("the container ended with code {code}; its port is released"),
        )
        .await;
    cases.remove_containers(id).await;
    if let Err(err) = cases.engine.finish(id, state, error_code, &message).await {
        tracing::warn!(case = id, error = %err.message, "ending a case run");
    }
}

/// After a restart: a running case whose container still runs keeps running (lease,
/// log follower from its last line, exit watcher); one whose container ended is ended.
pub(super) async fn reattach(cases: &Arc<Cases>, row: store::CaseRow) -> WharfResult<()> {
    let id = row.id.clone();
    let Some(container_id) = row.container_id.clone() else {
        fail(
            cases,
            &id,
            WharfError::new(ErrorCode::RunInterrupted, "running without a container"),
        )
        .await;
        return Ok(());
    };
    cases
        .engine
        .claim(&id, "re-attached after a server restart")
        .await?;
    match exited(cases, &container_id).await {
        Ok(None) => {
            cases
                .engine
                .note(
                    &id,
                    "re-attached after a server restart: the container still runs",
                )
                .await?;
            cases
                .engine
                .log(
                    &id,
                    Stream::System,
                    Level::Info,
                    "the server restarted: re-attached to the running container",
                )
                .await;
            let after = cases.engine.last_ts(&id, Stream::Run).await?;
            let job = load(cases, &id).await?;
            spawn_follower(cases, &id, &container_id, after, job.masker);
            spawn_exit_watcher(cases, &id, &container_id);
        }
        Ok(Some(_)) => container_ended(cases, &id, &container_id).await,
        Err(err) => fail(cases, &id, err).await,
    }
    Ok(())
}

/// Every `[cases] watch_interval_ms`: running cases whose container ended unseen are ended;
/// containers and port leases that belong to no live case are removed.
pub(super) fn spawn_watcher(cases: &Arc<Cases>) {
    let weak = Arc::downgrade(cases);
    let period = Duration::from_millis(cases.config.watch_interval_ms.max(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(cases) = weak.upgrade() else { return };
            if let Err(err) = sweep(&cases).await {
                tracing::warn!(error = %err.message, "case watcher");
            }
        }
    });
}

async fn sweep(cases: &Arc<Cases>) -> WharfResult<()> {
    let Ok(docker) = cases.docker() else {
        return Ok(());
    };
    for row in store::with_status(&cases.db, &[CaseStatus::Running.as_str()]).await? {
        if let Some(container_id) = &row.container_id
            && exited(cases, container_id).await?.is_some()
        {
            container_ended(cases, &row.id, container_id).await;
        }
    }
    // Only cases that start or run may hold a container or a port.
    let holding: std::collections::HashSet<String> = store::with_status(
        &cases.db,
        &[CaseStatus::Starting.as_str(), CaseStatus::Running.as_str()],
    )
    .await?
    .into_iter()
    .map(|row| row.id)
    .collect();
    let busy = |id: &str| holding.contains(id) || cases.pipelines.lock().contains_key(id);
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            LABEL_CASE.to_string(),
            format!("{LABEL_INSTANCE}={}", cases.instance),
        ],
    )]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|err| engine_error("listing case containers", &err))?;
    for container in containers {
        if let Some(case) = container.labels.as_ref().and_then(|l| l.get(LABEL_CASE))
            && !busy(case)
        {
            tracing::info!(case = %case, "removing an orphaned case container");
            cases.remove_containers(case).await;
        }
    }
    for (_, case) in store::leases(&cases.db).await? {
        if !busy(&case) {
            store::release_port(&cases.db, &case).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_timestamps_are_split_from_lines() {
        let (ts, text) = split_timestamp("2026-01-01T00:00:01.500000000Z hello world");
        assert_eq!(text, "hello world");
        assert!((ts.unwrap() - 1_767_225_601.5).abs() < 1e-3);
        assert_eq!(split_timestamp("plain line"), (None, "plain line"));
    }
}
