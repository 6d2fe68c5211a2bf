//! The durable run engine: long-running, restartable work shared by cases and batches (and,
//! later, relay imports).
//!
//! A **run** has a typed [`RunKind`], an owner, a [`RunState`] and an id that the subsystem
//! chooses (a case's run id is its `case_...` id). Everything about it lives in the store
//! (`store::jobs`):
//! - every state change is a recorded transition with a reason (and an error code when it
//!   fails), so "why did this end" always has an answer;
//! - its **steps** (`clone`, `build`, ...) with attempts, times and outcome; [`RunEngine::step`]
//!   retries a retriable failure with capped exponential backoff ([`RetryPolicy`]), each
//!   retry written to the log with its reason;
//! - a **lease**: the worker (this server process) that drives the run holds it and renews it
//!   every third of `[runs] lease_ttl_ms`. After a crash the leases of the dead worker are
//!   found by [`RunEngine::orphans`]; the subsystem resumes each run or fails it with
//!   `run_interrupted`, so nothing stays `running` for ever. One server owns a data dir, so
//!   at start every lease of another worker counts as dead at once;
//! - an **append-only log** of JSON lines `{offset, ts, stream, level, line}` ([`log`]),
//!   bounded by `[runs] log_cap_bytes` (past it one marker line says so and later lines are
//!   dropped), read with `?offset=` and followed live from any offset with no gap and no
//!   duplicate.
//!
//! **Why not a queue crate.** apalis (with apalis-sql) is the well-kept Rust choice and was
//! evaluated first. It was not taken: its SQL storages bring their own migrations and
//! schema (SQLite ordered by `rowid`, PostgreSQL through stored functions), which would
//! run beside ours under the same migration table and break the rule that SQL lives in
//! `store/` and stays PostgreSQL-compatible; its unit is a job handed to a worker
//! function, with no per-run steps, no transition history and no log with offsets, which
//! are most of what cases, batches and imports need; and it adds chrono and a second sqlx
//! feature set to a two-core build. The queue part we need is small (leases, a bounded
//! number of builds at once, retry with backoff), so it is written here on the store we
//! already have.

pub mod cli;
pub mod log;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WharfResult};
use crate::store::{Db, jobs as store};

pub use self::log::{LogFollower, LogLine, LogPage, Stream};

/// What a run is for. Each subsystem that uses the engine adds its kind here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Case,
    /// One task of a batch ([`crate::batches`]).
    BatchTask,
    /// An import of provider keys into a relay host ([`crate::relays`]).
    RelayImport,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Case => "case",
            RunKind::BatchTask => "batch_task",
            RunKind::RelayImport => "relay_import",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, waiting for a worker or a slot.
    Queued,
    /// A worker holds it (for a case: from the clone until its container ends).
    Running,
    Succeeded,
    Failed,
    /// Stopped by its owner before it finished.
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

const LIVE_STATES: &[&str] = &["queued", "running"];

/// How a step retries a retriable failure.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// The wait before attempt `attempt + 1` (attempts count from 1): doubling, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// `[runs]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunsConfig {
    /// How long a lease lasts without renewal; renewed every third of it.
    pub lease_ttl_ms: u64,
    /// Bytes of log kept per run; past it a marker line is written and later lines dropped.
    pub log_cap_bytes: u64,
    /// The longest log line kept; a longer one is cut and marked with `…`.
    pub max_line_bytes: usize,
}

impl Default for RunsConfig {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 30_000,
            log_cap_bytes: 8 * 1024 * 1024,
            max_line_bytes: 8 * 1024,
        }
    }
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Run {
    pub id: String,
    pub kind: String,
    pub state: RunState,
    pub error_code: Option<String>,
    pub reason: Option<String>,
    pub log_lines: i64,
    pub log_bytes: i64,
    pub log_truncated: bool,
    pub steps: Vec<Step>,
    pub transitions: Vec<Transition>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Step {
    pub name: String,
    pub state: String,
    pub attempts: i64,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub error_code: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Transition {
    pub at_ms: i64,
    pub from: Option<String>,
    pub to: String,
    pub error_code: Option<String>,
    pub reason: String,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The engine: one per server, shared by every subsystem that runs long work.
pub struct RunEngine {
    db: Db,
    /// This process's worker id; leases name it.
    worker: String,
    config: RunsConfig,
    logs: log::Logs,
}

impl RunEngine {
    /// Starts the engine and its lease renewer (stopped when the engine is dropped).
    pub fn start(db: Db, config: RunsConfig) -> Arc<RunEngine> {
        let engine = Arc::new(RunEngine {
            logs: log::Logs::new(db.clone(), config.log_cap_bytes, config.max_line_bytes),
            db,
            worker: crate::store::keys::new_id("wkr"),
            config,
        });
        let weak = Arc::downgrade(&engine);
        let period = Duration::from_millis((engine.config.lease_ttl_ms / 3).max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                if let Err(err) = store::renew_leases(
                    &engine.db,
                    &engine.worker,
                    now_ms() + engine.config.lease_ttl_ms as i64,
                )
                .await
                {
                    tracing::warn!(error = %err.message, "renewing run leases");
                }
            }
        });
        engine
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Creates a queued run.
    pub async fn create(
        &self,
        id: &str,
        kind: RunKind,
        owner: &str,
        reason: &str,
    ) -> WharfResult<()> {
        store::insert_run(
            &self.db,
            id,
            kind.as_str(),
            owner,
            RunState::Queued.as_str(),
            reason,
            now_ms(),
        )
        .await
    }

    /// Takes the run's lease for this worker and marks it running (from queued; a run
    /// already running, e.g. re-attached after a restart, keeps its state).
    pub async fn claim(&self, id: &str, reason: &str) -> WharfResult<()> {
        store::claim_lease(
            &self.db,
            id,
            &self.worker,
            now_ms() + self.config.lease_ttl_ms as i64,
        )
        .await?;
        self.mark_running(id, &["queued"], reason).await
    }

    /// Records a reason on a running run without changing its state (e.g. re-attached).
    pub async fn note(&self, id: &str, reason: &str) -> WharfResult<()> {
        self.mark_running(id, &["running"], reason).await
    }

    /// Records a transition to `running` (kept when the run is in none of `from`).
    async fn mark_running(&self, id: &str, from: &[&str], reason: &str) -> WharfResult<()> {
        let to = RunState::Running.as_str();
        store::transition(&self.db, id, from, to, None, reason, false, now_ms()).await?;
        Ok(())
    }

    /// Puts a running run back in the queue with why, releasing its lease (e.g. its worker
    /// died mid-attempt and the work is safe to start again). False when it was not running.
    /// Its open steps are closed as failed with `run_interrupted`.
    pub async fn requeue(&self, id: &str, reason: &str) -> WharfResult<bool> {
        let changed = store::transition(
            &self.db,
            id,
            &["running"],
            RunState::Queued.as_str(),
            None,
            reason,
            true,
            now_ms(),
        )
        .await?;
        if changed {
            let code = ErrorCode::RunInterrupted.as_str();
            store::end_open_steps(&self.db, id, code, reason, now_ms()).await?;
        }
        Ok(changed)
    }

    /// Ends a live run in a terminal state with why; its lease is released, its open steps
    /// closed and its log followers finish. False when the run had already ended.
    pub async fn finish(
        &self,
        id: &str,
        state: RunState,
        code: Option<ErrorCode>,
        reason: &str,
    ) -> WharfResult<bool> {
        debug_assert!(state.is_terminal());
        let code = code.map(ErrorCode::as_str);
        let changed = store::transition(
            &self.db,
            id,
            LIVE_STATES,
            state.as_str(),
            code,
            reason,
            true,
            now_ms(),
        )
        .await?;
        if changed {
            store::end_open_steps(&self.db, id, code.unwrap_or("cancelled"), reason, now_ms())
                .await?;
            self.logs.close(id);
        }
        Ok(changed)
    }

    /// Live runs of `kind` whose worker is gone (at start: every one of another worker).
    pub async fn orphans(&self, kind: RunKind) -> WharfResult<Vec<store::RunRow>> {
        store::orphaned_runs(&self.db, kind.as_str(), LIVE_STATES, &self.worker, now_ms()).await
    }

    pub async fn state(&self, id: &str) -> WharfResult<Option<RunState>> {
        Ok(store::get_run(&self.db, id)
            .await?
            .and_then(|run| RunState::parse(&run.state)))
    }

    /// The run with its steps and transitions.
    pub async fn get(&self, id: &str) -> WharfResult<Option<Run>> {
        let Some(row) = store::get_run(&self.db, id).await? else {
            return Ok(None);
        };
        let steps = store::steps(&self.db, id).await?;
        let transitions = store::transitions(&self.db, id).await?;
        Ok(Some(Run {
            id: row.id,
            kind: row.kind,
            state: RunState::parse(&row.state).unwrap_or(RunState::Failed),
            error_code: row.error_code,
            reason: row.reason,
            log_lines: row.log_lines,
            log_bytes: row.log_bytes,
            log_truncated: row.log_truncated,
            steps: steps
                .into_iter()
                .map(|s| Step {
                    name: s.name,
                    state: s.state,
                    attempts: s.attempts,
                    started_ms: s.started_ms,
                    ended_ms: s.ended_ms,
                    error_code: s.error_code,
                    reason: s.reason,
                })
                .collect(),
            transitions: transitions
                .into_iter()
                .map(|t| Transition {
                    at_ms: t.at_ms,
                    from: t.from_state,
                    to: t.to_state,
                    error_code: t.error_code,
                    reason: t.reason,
                })
                .collect(),
        }))
    }

    /// Milliseconds each finished step took, by name (the last run of each name).
    pub async fn step_timings(&self, id: &str) -> WharfResult<HashMap<String, i64>> {
        Ok(store::steps(&self.db, id)
            .await?
            .into_iter()
            .filter_map(|s| s.ended_ms.map(|end| (s.name, end - s.started_ms)))
            .collect())
    }

    /// Forgets a run entirely (its log too).
    pub async fn delete(&self, id: &str) -> WharfResult<()> {
        self.logs.close(id);
        store::delete_run(&self.db, id).await
    }

    /// Runs step `name` of run `id`: `attempt(n)` is called for n = 1.. until it succeeds,
    /// fails with a non-retriable error, or the policy's attempts are spent. Every attempt,
    /// retry (with its reason and wait) and the outcome is recorded.
    pub async fn step<T, F, Fut>(
        &self,
        id: &str,
        name: &str,
        policy: RetryPolicy,
        mut attempt: F,
    ) -> WharfResult<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = WharfResult<T>>,
    {
        let seq = store::begin_step(&self.db, id, name, now_ms()).await?;
        let mut n = 1;
        loop {
            store::step_attempt(&self.db, id, seq).await?;
            match attempt(n).await {
                Ok(value) => {
                    store::end_step(&self.db, id, seq, "succeeded", None, None, now_ms()).await?;
                    return Ok(value);
                }
                Err(err) if err.retriable() && n < policy.max_attempts => {
                    let wait = policy.backoff(n);
                    self.log(
                        id,
                        Stream::System,
                        log::Level::Warn,
                        &format!(
                            "{name}: attempt {n}/{} failed ({}): {}; retrying in {} ms",
                            policy.max_attempts,
                            err.code.as_str(),
                            err.message,
                            wait.as_millis()
                        ),
                    )
                    .await;
                    tokio::time::sleep(wait).await;
                    n += 1;
                }
                Err(err) => {
                    store::end_step(
                        &self.db,
                        id,
                        seq,
                        "failed",
                        Some(err.code.as_str()),
                        Some(&err.message),
                        now_ms(),
                    )
                    .await?;
                    return Err(err);
                }
            }
        }
    }

    /// Appends a line to a run's log (already masked by the caller). A store failure is
    /// logged, not raised: losing a log line must not fail the work it describes.
    pub async fn log(&self, id: &str, stream: Stream, level: log::Level, line: &str) {
        self.log_at(id, stream, level, line, None).await
    }

    /// [`Self::log`] with the line's own timestamp (unix seconds), e.g. the engine's.
    pub async fn log_at(
        &self,
        id: &str,
        stream: Stream,
        level: log::Level,
        line: &str,
        ts: Option<f64>,
    ) {
        if let Err(err) = self.logs.append(id, stream, level, line, ts).await {
            tracing::warn!(run = id, error = %err.message, "appending to a run log");
        }
    }

    /// Up to `limit` lines from `offset`.
    pub async fn read_log(&self, id: &str, offset: i64, limit: i64) -> WharfResult<LogPage> {
        self.logs.page(id, offset, limit).await
    }

    /// Follows a run's log from `offset`: the stored lines, then live ones; ends when the
    /// run ends and every line was given.
    pub async fn follow(&self, id: &str, offset: i64) -> WharfResult<LogFollower> {
        self.logs.follow(id, offset).await
    }

    /// The timestamp of the last line of `stream` (to re-attach a follower without repeats).
    pub async fn last_ts(&self, id: &str, stream: Stream) -> WharfResult<Option<f64>> {
        store::last_ts_of_stream(&self.db, id, stream.as_str()).await
    }
}

#[cfg(test)]
mod tests {
    use super::log::Level;
    use super::*;

    async fn engine(config: RunsConfig) -> (tempfile::TempDir, Arc<RunEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        (dir, RunEngine::start(db, config))
    }

    #[tokio::test]
    async fn a_late_follower_gets_every_line_once_while_lines_are_appended() {
        let (_dir, engine) = engine(RunsConfig::default()).await;
        engine
            .create("run_a", RunKind::Case, "o", "test")
            .await
            .unwrap();
        engine.claim("run_a", "go").await.unwrap();
        for i in 0..50 {
            engine
                .log("run_a", Stream::System, Level::Info, &format!("line {i}"))
                .await;
        }
        let writer = {
            let engine = engine.clone();
            tokio::spawn(async move {
                for i in 50..400 {
                    engine
                        .log("run_a", Stream::Build, Level::Info, &format!("line {i}"))
                        .await;
                    if i % 25 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                engine
                    .finish("run_a", RunState::Succeeded, None, "done")
                    .await
                    .unwrap();
            })
        };
        let mut follower = engine.follow("run_a", 0).await.unwrap();
        let mut offsets = Vec::new();
        while let Some(line) = follower.next().await.unwrap() {
            assert_eq!(line.line, format!("line {}", line.offset));
            offsets.push(line.offset);
        }
        writer.await.unwrap();
        assert_eq!(offsets, (0..400).collect::<Vec<i64>>());
        // A follower of an ended run replays from its offset and ends.
        let mut late = engine.follow("run_a", 390).await.unwrap();
        let mut tail = Vec::new();
        while let Some(line) = late.next().await.unwrap() {
            tail.push(line.offset);
        }
        assert_eq!(tail, (390..400).collect::<Vec<i64>>());
        let page = engine.read_log("run_a", 398, 10).await.unwrap();
        assert_eq!(page.next_offset, 400);
        assert!(page.complete && !page.truncated);
    }

    #[tokio::test]
    async fn the_log_cap_leaves_one_marker_and_drops_the_rest() {
        let (_dir, engine) = engine(RunsConfig {
            log_cap_bytes: 100,
            ..RunsConfig::default()
        })
        .await;
        engine
            .create("run_b", RunKind::Case, "o", "test")
            .await
            .unwrap();
        for _ in 0..20 {
            engine
                .log("run_b", Stream::Run, Level::Info, "0123456789012345678")
                .await;
        }
        let page = engine.read_log("run_b", 0, 100).await.unwrap();
        assert_eq!(page.lines.len(), 6, "{:?}", page.lines);
        assert!(page.truncated);
        let marker = page.lines.last().unwrap();
        assert!(marker.line.starts_with("log truncated"), "{}", marker.line);
        assert_eq!(marker.stream, "system");
    }

    #[tokio::test]
    async fn steps_retry_with_backoff_and_every_transition_has_a_reason() {
        let (_dir, engine) = engine(RunsConfig::default()).await;
        engine
            .create("run_c", RunKind::Case, "o", "created")
            .await
            .unwrap();
        engine.claim("run_c", "picked up").await.unwrap();
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let value = engine
            .step("run_c", "clone", policy, |attempt| async move {
                if attempt < 3 {
                    Err(WharfErrorForTest::transient())
                } else {
                    Ok(attempt)
                }
            })
            .await
            .unwrap();
        assert_eq!(value, 3);
        let failed = engine
            .step("run_c", "build", policy, |_| async {
                Err::<(), _>(crate::error::WharfError::new(
                    ErrorCode::DockerBuildFailed,
                    "step 2/3: exit 3",
                ))
            })
            .await
            .unwrap_err();
        assert_eq!(failed.code, ErrorCode::DockerBuildFailed);
        engine
            .finish(
                "run_c",
                RunState::Failed,
                Some(failed.code),
                &failed.message,
            )
            .await
            .unwrap();
        // Ending twice changes nothing.
        assert!(
            !engine
                .finish("run_c", RunState::Succeeded, None, "again")
                .await
                .unwrap()
        );
        let run = engine.get("run_c").await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Failed);
        assert_eq!(run.error_code.as_deref(), Some("docker_build_failed"));
        assert_eq!(run.steps[0].attempts, 3);
        assert_eq!(run.steps[0].state, "succeeded");
        assert_eq!(run.steps[1].attempts, 1, "not retriable: one attempt");
        let states: Vec<&str> = run.transitions.iter().map(|t| t.to.as_str()).collect();
        assert_eq!(states, ["queued", "running", "failed"]);
        assert!(run.transitions.iter().all(|t| !t.reason.is_empty()));
        let log = engine.read_log("run_c", 0, 100).await.unwrap();
        assert_eq!(
            log.lines
                .iter()
                .filter(|l| l.line.contains("retrying in"))
                .count(),
            2
        );
        assert_eq!(policy.backoff(1), Duration::from_millis(1));
        assert_eq!(policy.backoff(5), Duration::from_millis(2));
    }

    struct WharfErrorForTest;

    impl WharfErrorForTest {
        fn transient() -> crate::error::WharfError {
            crate::error::WharfError::new(ErrorCode::GitCloneFailed, "connection reset")
                .with_retriable(true)
        }
    }

    #[tokio::test]
    async fn runs_of_a_dead_worker_are_orphans_of_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        let first = RunEngine::start(db.clone(), RunsConfig::default());
        first
            .create("run_d", RunKind::Case, "o", "t")
            .await
            .unwrap();
        first.claim("run_d", "go").await.unwrap();
        first
            .create("run_e", RunKind::Case, "o", "t")
            .await
            .unwrap();
        first.claim("run_e", "go").await.unwrap();
        first
            .finish("run_e", RunState::Succeeded, None, "done")
            .await
            .unwrap();
        assert!(first.orphans(RunKind::Case).await.unwrap().is_empty());
        drop(first);
        let second = RunEngine::start(db, RunsConfig::default());
        let orphans = second.orphans(RunKind::Case).await.unwrap();
        assert_eq!(
            orphans.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["run_d"]
        );
        second.claim("run_d", "re-attached").await.unwrap();
        assert!(second.orphans(RunKind::Case).await.unwrap().is_empty());
    }
}
