//! One `warden run` per SQLite state file.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{self, Config};

/// On SQLite only one `warden run` may use a state file (replicas need PostgreSQL): the
/// file `<state>.lock` beside it is held locked for the life of the process (the system
/// releases it when the process ends, however it ends).
pub(super) fn lock_sqlite_state(config: &Config) -> anyhow::Result<Option<std::fs::File>> {
    let config::DbUrl::Sqlite(path) = &config.state.url else { return Ok(None) };
    let mut lock_path = path.clone().into_os_string();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            use std::io::{Seek, Write};
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            anyhow::bail!(
                "another `warden run` (pid {}) uses the state file {}; on SQLite only one process may run \
                 (replicas share a PostgreSQL state store: set state.url to postgres://…)",
                holder.trim(),
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", lock_path.display())))
        }
    }
}
