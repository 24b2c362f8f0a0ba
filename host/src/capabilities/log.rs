//! `warden:policy/log`: lines kept with the evaluation (capped), logged by the host.

use crate::runtime::PluginCtx;
use crate::runtime::bindings::warden::policy::log::{Host, Level};

impl Host for PluginCtx {
    fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.push_log(level, message);
        Ok(())
    }
}
