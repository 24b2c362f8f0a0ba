//! Reload triggers: a change to the configuration file, or SIGHUP.

use std::path::{Path, PathBuf};

use notify::{Config, EventKind, PollWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// How often the watched files are looked at.
const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches the configuration file and the policy components (by polling once a second: an
/// inotify watch on their folders would wake warden on every write of a SQLite store that
/// lives beside them, hundreds of times a second with many jobs), and signals on a change.
/// The schedule is compared by content too (file times have whole seconds here, and an edit
/// may come within the second); components, which may be many megabytes, by time only. The
/// returned watchers must be kept alive.
pub fn watch_files(config: &Path, components: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> Vec<PollWatcher> {
    let mut components: Vec<PathBuf> = components.to_vec();
    components.sort();
    components.dedup();
    let mut watchers = Vec::new();
    for (files, by_content) in [(vec![config.to_path_buf()], true), (components, false)] {
        if files.is_empty() {
            continue;
        }
        let tx = tx.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && matches!(event.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_))
            {
                let _ = tx.send(());
            }
        };
        let config = Config::default().with_poll_interval(POLL).with_compare_contents(by_content);
        let mut watcher = match PollWatcher::new(handler, config) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the configuration files; SIGHUP still reloads");
                continue;
            }
        };
        for file in &files {
            if let Err(e) = watcher.watch(file, RecursiveMode::NonRecursive) {
                warn!(error = %e, file = %file.display(), "cannot watch a file; SIGHUP still reloads");
            }
        }
        watchers.push(watcher);
    }
    watchers
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
