//! GC and recovery: one background task that stops idle sandboxes, deletes
//! expired ones, removes orphan runtimes (labelled, unknown to the store) and
//! probes running sandboxes, restarting a dead runtime once where the profile
//! allows, else marking the sandbox `failed`.
//!
//! At start-up, [`Sandboxes::reconcile`] first settles what a crash (even
//! `kill -9` mid-create) left: `creating` rows are failed and their runtimes
//! removed, then orphans are swept.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::DriverHealth;
use super::service::{SandboxStatus, Sandboxes, now_ms};
use crate::error::WharfResult;
use crate::store::sandboxes as store_sandboxes;

/// How long a sandbox may idle and live, and whether a dead runtime is
/// restarted once.
struct Lifetimes {
    idle_timeout_secs: u64,
    max_ttl_secs: u64,
    restart_once: bool,
}

impl Sandboxes {
    /// The lifetimes of the sandbox's profile as it is now configured, or as
    /// it was at create when the profile has since gone. `None` for a row
    /// from before lifetimes were recorded whose profile has gone.
    fn lifetimes(&self, row: &store_sandboxes::SweepRow) -> Option<Lifetimes> {
        if let Ok(profile) = self.profiles().get(&row.profile) {
            return Some(Lifetimes {
                idle_timeout_secs: profile.idle_timeout_secs,
                max_ttl_secs: profile.max_ttl_secs,
                restart_once: profile.restart_once,
            });
        }
        Some(Lifetimes {
            idle_timeout_secs: row.idle_timeout_secs? as u64,
            max_ttl_secs: row.max_ttl_secs? as u64,
            restart_once: row.restart_once?,
        })
    }

    /// Settles state left by a previous run. Call once, before serving.
    pub async fn reconcile(&self) -> WharfResult<()> {
        for (id, driver) in store_sandboxes::interrupted_creates(&self.db).await? {
            if let Ok(driver) = self.driver(&driver)
                && let Err(err) = driver.destroy(&id).await
            {
                tracing::warn!(sandbox = %id, error = %err.message, "cannot remove the runtime of an interrupted create");
            }
            self.transition(&id, SandboxStatus::Failed, Some("create_interrupted"), "failed", serde_json::json!({"error_code": "create_interrupted", "reason": "server restarted mid-create"}))
                    .await?;
            self.metrics
                .gc_actions
                .with_label_values(&["interrupted"])
                .inc();
            tracing::info!(sandbox = %id, "failed a sandbox whose create was interrupted");
        }
        self.remove_orphans().await
    }

    /// Removes runtimes that carry a sandbox label but match no live row.
    pub async fn remove_orphans(&self) -> WharfResult<()> {
        let live: HashSet<String> = store_sandboxes::live_ids(&self.db)
            .await?
            .into_iter()
            .collect();
        for driver in self.drivers() {
            let ids = match driver.sandbox_ids().await {
                Ok(ids) => ids,
                Err(err) => {
                    tracing::warn!(driver = driver.name(), error = %err.message, "cannot list sandbox runtimes");
                    continue;
                }
            };
            for id in ids.into_iter().filter(|id| !live.contains(id)) {
                // A create in flight holds the lock between inserting the row and starting the runtime.
                let lock = self.lock_for(&id);
                let Ok(_guard) = lock.try_lock() else {
                    continue;
                };
                let known = store_sandboxes::status_of(&self.db, &id).await?;
                if known.is_some_and(|status| status != "deleted") {
                    continue;
                }
                match driver.destroy(&id).await {
                    Ok(()) => {
                        tracing::info!(sandbox = %id, driver = driver.name(), "removed an orphan sandbox runtime");
                        self.metrics
                            .gc_actions
                            .with_label_values(&["orphan_removed"])
                            .inc();
                        self.event(
                            &id,
                            "gc",
                            serde_json::json!({"reason": "orphan", "driver": driver.name()}),
                        )
                        .await;
                    }
                    Err(err) => {
                        tracing::warn!(sandbox = %id, error = %err.message, "cannot remove orphan runtime")
                    }
                }
                self.forget_lock(&id);
            }
        }
        Ok(())
    }

    /// One pass of idle stop, expiry and health probing, then orphans.
    pub async fn sweep(&self) -> WharfResult<()> {
        let now = now_ms();
        for id in store_sandboxes::sweep_candidates(&self.db).await? {
            let lock = self.lock_for(&id);
            // Busy sandboxes (a transition in flight) are looked at next time.
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            // Re-read under the lock: a transition may have finished since the scan.
            let Some(row) = store_sandboxes::sweep_row(&self.db, &id).await? else {
                continue;
            };
            let Some(lifetimes) = self.lifetimes(&row) else {
                continue;
            };
            let Ok(driver) = self.driver(&row.driver) else {
                continue;
            };
            let store_sandboxes::SweepRow {
                status,
                created_ms,
                last_active_ms,
                restarts,
                ..
            } = row;
            if lifetimes.max_ttl_secs > 0
                && now - created_ms > (lifetimes.max_ttl_secs * 1000) as i64
            {
                if let Err(err) = driver.destroy(&id).await {
                    tracing::warn!(sandbox = %id, error = %err.message, "cannot remove expired sandbox");
                    continue;
                }
                self.transition(
                    &id,
                    SandboxStatus::Deleted,
                    None,
                    "gc",
                    serde_json::json!({"reason": "expired", "max_ttl_secs": lifetimes.max_ttl_secs}),
                )
                .await?;
                self.forget_lock(&id);
                self.metrics
                    .gc_actions
                    .with_label_values(&["expired"])
                    .inc();
                continue;
            }
            if status != "running" {
                continue;
            }
            if lifetimes.idle_timeout_secs > 0
                && now - last_active_ms > (lifetimes.idle_timeout_secs * 1000) as i64
            {
                if let Err(err) = driver.stop(&id).await {
                    tracing::warn!(sandbox = %id, error = %err.message, "cannot stop idle sandbox");
                    continue;
                }
                self.transition(&id, SandboxStatus::Stopped, None, "stopped", serde_json::json!({"reason": "idle", "idle_timeout_secs": lifetimes.idle_timeout_secs}))
                    .await?;
                self.metrics
                    .gc_actions
                    .with_label_values(&["idle_stopped"])
                    .inc();
                continue;
            }
            let health = match driver.health(&id).await {
                Ok(health) => health,
                Err(err) => {
                    tracing::warn!(sandbox = %id, error = %err.message, "health probe failed");
                    continue;
                }
            };
            let (oom_killed, exit_code) = match health {
                DriverHealth::Running => continue,
                DriverHealth::Dead {
                    oom_killed,
                    exit_code,
                } => (oom_killed, exit_code),
                DriverHealth::Missing => (false, None),
            };
            let missing = health == DriverHealth::Missing;
            self.event(&id, "died", serde_json::json!({"oom_killed": oom_killed, "exit_code": exit_code, "missing": missing})).await;
            if lifetimes.restart_once
                && restarts == 0
                && !missing
                && driver.start(&id).await.is_ok()
            {
                store_sandboxes::count_restart(&self.db, &id).await?;
                self.transition(
                    &id,
                    SandboxStatus::Running,
                    None,
                    "recovered",
                    serde_json::json!({"restarts": restarts + 1}),
                )
                .await?;
                self.metrics
                    .gc_actions
                    .with_label_values(&["recovered"])
                    .inc();
                continue;
            }
            let code = if oom_killed {
                "oom_killed"
            } else if missing {
                "runtime_missing"
            } else {
                "runtime_died"
            };
            self.transition(
                &id,
                SandboxStatus::Failed,
                Some(code),
                "failed",
                serde_json::json!({"error_code": code}),
            )
            .await?;
            self.metrics.gc_actions.with_label_values(&["failed"]).inc();
        }
        self.remove_orphans().await?;
        self.apply_retention().await?;
        let counts = store_sandboxes::count_by_status(&self.db).await?;
        for status in ["creating", "running", "stopped", "failed", "deleted"] {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            self.metrics.sandboxes.with_label_values(&[status]).set(n);
        }
        Ok(())
    }

    /// Deletes what retention no longer keeps: idempotency keys past
    /// `idempotency_ttl_secs` (and keys whose sandbox is gone), deleted
    /// sandboxes past `deleted_retention_secs` with their event logs, and each
    /// sandbox's events beyond its newest `events_per_sandbox`.
    pub async fn apply_retention(&self) -> WharfResult<()> {
        let now = now_ms();
        let keys = store_sandboxes::purge_idempotency_keys(
            &self.db,
            now - (self.config.idempotency_ttl_secs * 1000) as i64,
        )
        .await?;
        let deleted = store_sandboxes::purge_deleted_sandboxes(
            &self.db,
            now - (self.config.deleted_retention_secs * 1000) as i64,
        )
        .await?;
        let after = self.events_trimmed_through.load(Ordering::Relaxed);
        let (events, newest) =
            store_sandboxes::trim_events(&self.db, after, self.config.events_per_sandbox).await?;
        self.events_trimmed_through.store(newest, Ordering::Relaxed);
        for (action, rows) in [
            ("idempotency_keys_purged", keys),
            ("deleted_purged", deleted),
            ("events_trimmed", events),
        ] {
            self.metrics
                .gc_actions
                .with_label_values(&[action])
                .inc_by(rows);
        }
        Ok(())
    }
}

/// Runs [`Sandboxes::sweep`] every `interval` until the process ends.
pub fn spawn(sandboxes: Arc<Sandboxes>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Err(err) = sandboxes.sweep().await {
                tracing::warn!(error = %err.message, "sandbox GC sweep failed");
            }
        }
    })
}
