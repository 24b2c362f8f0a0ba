//! `warden:policy/clock`: the evaluation's time, fixed by the host (so tests can set it).

use crate::runtime::PluginCtx;
use crate::runtime::bindings::warden::policy::clock::Host;

impl Host for PluginCtx {
    fn now_ms(&mut self) -> wasmtime::Result<i64> {
        Ok(self.now_ms)
    }
}
