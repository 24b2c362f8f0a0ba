//! `schedules.toml`: read strictly, checked purely, every problem reported at once.
//!
//! Architecture invariant: this module does no IO beyond reading the file it is given
//! (and the process environment for `${VAR}`); it never connects to anything.

mod document;
mod env;
mod error;
mod model;
mod read;
pub mod sites;
mod table;

use std::path::{Path, PathBuf};

pub use crate::base::Duration;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

/// Reads and checks a configuration file, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&src, path, &env::process_env)
}

/// Checks configuration text. `path` names the file in messages and anchors relative paths.
pub fn parse(src: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    read::config(src, path, env)
}

/// The directory relative paths in a configuration file are resolved against.
pub(crate) fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
