//! `warden:policy/state`: the plugin's key/value state. Reads see this evaluation's writes;
//! the writes are returned with the actions and committed in the same transaction.

use crate::runtime::PluginCtx;
use crate::runtime::bindings::warden::policy::state::Host;

pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_VALUE_BYTES: usize = 64 << 10;
pub const MAX_KEYS: usize = 1000;

impl Host for PluginCtx {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.state.get(&key).cloned())
    }

    fn set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
            self.abuse = Some("state write too large (keys up to 256 bytes, values up to 64 KiB)");
            wasmtime::bail!("state write too large");
        }
        if !self.state.contains_key(&key) && self.state.len() >= MAX_KEYS {
            self.abuse = Some("too many state keys (at most 1000)");
            wasmtime::bail!("too many state keys");
        }
        // Writing back what is stored changes nothing: no row to write in the commit.
        if !self.writes.contains_key(&key) && self.state.get(&key) == Some(&value) {
            return Ok(());
        }
        self.state.insert(key.clone(), value.clone());
        self.writes.insert(key, Some(value));
        Ok(())
    }

    fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        if self.state.remove(&key).is_some() || self.writes.contains_key(&key) {
            self.writes.insert(key, None);
        }
        Ok(())
    }
}
