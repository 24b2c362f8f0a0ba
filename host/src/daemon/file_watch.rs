//! Reload triggers: a change to the configuration file, or SIGHUP.

use std::path::{Path, PathBuf};

use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// Watches the folders of the configuration file and the policy components, and signals
/// on changes to those files. The returned watcher must be kept alive.
pub fn watch_files(
    config: &Path,
    components: &[PathBuf],
    tx: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let mut files: Vec<PathBuf> = vec![config.to_path_buf()];
    files.extend(components.iter().cloned());
    let names: Vec<std::ffi::OsString> = files.iter().filter_map(|f| f.file_name().map(|n| n.to_owned())).collect();
    let mut dirs: Vec<PathBuf> = files.iter().map(|f| crate::config::base_dir(f)).collect();
    dirs.sort();
    dirs.dedup();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Reading the file (ours included) is not a change.
            let change = matches!(
                event.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
            );
            if change && event.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n))) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| warn!(error = %e, "cannot watch the configuration file; SIGHUP still reloads"))
    .ok()?;
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            warn!(error = %e, dir = %dir.display(), "cannot watch a folder; SIGHUP still reloads");
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
