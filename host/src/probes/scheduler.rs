//! The background schedule: every tick, due targets are probed, at most
//! `probes.max_scheduled_concurrency` at once. Each target's next time is its interval with
//! ±10 % jitter, so targets created together drift apart instead of probing in bursts. A failed
//! probe with a retry hint (a rate limit's `Retry-After` or `x-ratelimit-reset-*`) is probed
//! again just after that time instead: sooner than the interval when the limit resets sooner,
//! and not before the reset when it resets later.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Semaphore;

use super::runner::ProbeResult;
use super::{MAX_INTERVAL_SECS, ProbeService, unix_now};
use crate::store::probe_targets;

/// Margin after a reset time, so the re-probe does not land a hair before it.
const AFTER_RESET_SECS: f64 = 0.25;

/// Stops the scheduler when dropped (probes already started finish on their own).
pub struct SchedulerHandle(tokio::task::JoinHandle<()>);

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the scheduler; it stops when the handle is dropped or the service is gone.
pub fn spawn(service: Arc<ProbeService>) -> SchedulerHandle {
    let weak = Arc::downgrade(&service);
    let tick = Duration::from_millis(service.config().tick_ms.max(10));
    let slots = Arc::new(Semaphore::new(
        service.config().max_scheduled_concurrency.max(1),
    ));
    drop(service);
    SchedulerHandle(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(service) = weak.upgrade() else {
                return;
            };
            if let Err(err) = run_due(&service, &slots).await {
                tracing::warn!(code = err.code.as_str(), message = %err.message, "probe scheduler tick failed");
            }
        }
    }))
}

async fn run_due(
    service: &Arc<ProbeService>,
    slots: &Arc<Semaphore>,
) -> crate::error::WharfResult<()> {
    let free = slots.available_permits();
    if free == 0 {
        return Ok(());
    }
    // Ask for a few more than the free slots: some may already be running.
    let due = probe_targets::due(&service.db, unix_now(), free * 2).await?;
    for target in due {
        if service.running.lock().contains(&target.id) {
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            break;
        };
        let jitter = rand::rng().random_range(-0.1..=0.1);
        let next = unix_now() + target.interval_secs as f64 * (1.0 + jitter);
        probe_targets::set_next_due(&service.db, &target.id, next).await?;
        service.running.lock().insert(target.id.clone());
        let service = service.clone();
        tokio::spawn(async move {
            let id = target.id.clone();
            service.probe_target(target).await;
            service.running.lock().remove(&id);
            drop(permit);
        });
    }
    Ok(())
}

/// When to probe again after a failed result that carries a retry hint (unix seconds): just
/// after the hint, with up to 5 % jitter so targets limited together do not return together.
pub(super) fn due_at_retry_hint(result: &ProbeResult) -> Option<f64> {
    if result.ready() {
        return None;
    }
    let wait = (result.retry_after_ms? as f64 / 1000.0).min(MAX_INTERVAL_SECS as f64);
    let jitter = rand::rng().random_range(0.0..=0.05);
    Some(unix_now() + wait * (1.0 + jitter) + AFTER_RESET_SECS)
}
