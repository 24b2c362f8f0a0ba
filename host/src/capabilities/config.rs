//! `warden:policy/config`: the policy's `config` table from schedules.toml.

use crate::runtime::PluginCtx;
use crate::runtime::bindings::warden::policy::config::Host;

impl Host for PluginCtx {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
    }

    fn entries(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.config.to_vec())
    }
}
