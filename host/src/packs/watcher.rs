//! Watches the packs dir and rescans after a quiet period (debounce), so a
//! pack being copied in is read only once its files have stopped changing.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::Packs;

/// Rescan even without events, in case the platform dropped some.
const SAFETY_RESCAN: Duration = Duration::from_secs(30);

/// Starts watching; the returned watcher must be kept alive.
pub fn watch(packs: Arc<Packs>, debounce: Duration) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(packs.dir(), RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(SAFETY_RESCAN, rx.recv()).await {
                Ok(None) => break,
                Ok(Some(())) => {
                    // Wait until the directory has been quiet for `debounce`.
                    while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
                }
                Err(_) => {}
            }
            packs.rescan().await;
        }
    });
    Ok(watcher)
}
