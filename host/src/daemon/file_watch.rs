//! Reload triggers: a change to the configuration file, or SIGHUP.

use std::path::{Path, PathBuf};

use notify::{Config, EventKind, PollWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// How often the watched files are looked at.
const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches the configuration file and the policy components (by polling their metadata once
/// a second: an inotify watch on their folders would wake warden on every write of a SQLite
/// store that lives beside them, hundreds of times a second with many jobs), and signals on
/// a change. The returned watcher must be kept alive.
pub fn watch_files(config: &Path, components: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> Option<PollWatcher> {
    let mut files: Vec<PathBuf> = vec![config.to_path_buf()];
    files.extend(components.iter().cloned());
    files.sort();
    files.dedup();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let change = matches!(event.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_));
            if change {
                let _ = tx.send(());
            }
        }
    };
    let mut watcher = PollWatcher::new(handler, Config::default().with_poll_interval(POLL))
        .map_err(|e| warn!(error = %e, "cannot watch the configuration file; SIGHUP still reloads"))
        .ok()?;
    for file in &files {
        if let Err(e) = watcher.watch(file, RecursiveMode::NonRecursive) {
            warn!(error = %e, file = %file.display(), "cannot watch a file; SIGHUP still reloads");
        }
    }
    Some(watcher)
}

/// Forwards SIGHUP as a reload request.
pub fn watch_sighup(tx: mpsc::UnboundedSender<()>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP");
            return;
        };
        while hup.recv().await.is_some() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
}
