//! Reload triggers: a change to the configuration file or a policy component, or SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::{Config, EventKind, PollWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// How often the watched files are looked at.
const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches the configuration file (by polling once a second: an inotify watch on its folder
/// would wake warden on every write of a SQLite store that lives beside it, hundreds of times a
/// second with many jobs), and signals on a change. The schedule is compared by content too
/// (file times have whole seconds here, and an edit may come within the second). The returned
/// watcher must be kept alive.
pub fn watch_config(config: &Path, tx: mpsc::UnboundedSender<()>) -> Option<PollWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(event.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_))
        {
            let _ = tx.send(());
        }
    };
    let settings = Config::default().with_poll_interval(POLL).with_compare_contents(true);
    let mut watcher = match PollWatcher::new(handler, settings) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the configuration file; SIGHUP still reloads");
            return None;
        }
    };
    if let Err(e) = watcher.watch(config, RecursiveMode::NonRecursive) {
        warn!(error = %e, file = %config.display(), "cannot watch the configuration file; SIGHUP still reloads");
    }
    Some(watcher)
}

/// Watches the policy components, which may be many megabytes, by their metadata once a
/// second rather than their content: size, modification time and inode, so a component
/// renamed over the old one is seen even within the second its predecessor was written
/// (file times have whole seconds here). Dropping it stops the watch.
pub struct ComponentWatch {
    stop: Arc<AtomicBool>,
}

impl Drop for ComponentWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What tells one version of a file from the next without reading it.
fn fingerprint(path: &Path) -> Option<(u64, i64, i64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.dev()))
}

pub fn watch_components(components: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> ComponentWatch {
    let mut files: Vec<PathBuf> = components.to_vec();
    files.sort();
    files.dedup();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let spawned = std::thread::Builder::new().name("component-watch".into()).spawn(move || {
        let mut seen: Vec<_> = files.iter().map(|f| fingerprint(f)).collect();
        while !stopped.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
            for (file, before) in files.iter().zip(seen.iter_mut()) {
                let now = fingerprint(file);
                if now != *before {
                    *before = now;
                    let _ = tx.send(());
                }
            }
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot watch the policy components; SIGHUP still reloads");
    }
    ComponentWatch { stop }
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
