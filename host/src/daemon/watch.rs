//! Reload triggers: a change to the configuration file, or SIGHUP.

use std::path::{Path, PathBuf};

use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// Watches the configuration file's folder and signals on changes to the file itself.
/// The returned watcher must be kept alive.
pub fn watch_file(path: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let file_name = path.file_name()?.to_owned();
    let dir: PathBuf = crate::config::base_dir(path);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Reading the file (ours included) is not a change.
            let change = matches!(
                event.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
            );
            if change && event.paths.iter().any(|p| p.file_name() == Some(file_name.as_os_str())) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| warn!(error = %e, "cannot watch the configuration file; SIGHUP still reloads"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(error = %e, dir = %dir.display(), "cannot watch the configuration folder; SIGHUP still reloads");
        return None;
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
