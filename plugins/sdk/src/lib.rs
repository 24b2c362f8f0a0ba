//! The guest side of `warden:policy@0.1.0`: generated bindings plus small helpers that
//! every policy needs (durations, typed config, typed state).
//!
//! A policy crate implements [`Guest`] and calls `warden_policy::export!(MyPolicy);`.

/// The generated bindings (in a module of their own: wit-bindgen's exported macro and its
/// re-export clash at a crate root).
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "wit",
        pub_export_macro: true,
        default_bindings_module: "warden_policy::bindings",
        generate_all,
    });
}

pub use bindings::warden::policy::types::*;
pub use bindings::warden::policy::{clock, config, log, state};
pub use bindings::{Guest, export};

/// Parses `250ms`, `30s`, `5m`, `1h30m`, `2d` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let mut total: i64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration `{text}`"));
        }
        let n: i64 = rest[..digits].parse().map_err(|_| format!("invalid duration `{text}`"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("invalid duration `{text}`")),
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(n.saturating_mul(factor));
    }
    Ok(total)
}

/// Typed reads of the plugin's `config` table, through any lookup (the host's, or a map in tests).
pub struct Config<F: Fn(&str) -> Option<String>>(pub F);

impl<F: Fn(&str) -> Option<String>> Config<F> {
    pub fn text(&self, key: &str, default: &str) -> String {
        (self.0)(key).unwrap_or_else(|| default.to_owned())
    }

    pub fn duration_ms(&self, key: &str, default: &str) -> Result<i64, String> {
        parse_duration_ms(&self.text(key, default)).map_err(|e| format!("config `{key}`: {e}"))
    }

    pub fn number(&self, key: &str, default: f64) -> Result<f64, String> {
        match (self.0)(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| format!("config `{key}`: `{v}` is not a number")),
        }
    }
}

/// The host config, as a [`Config`].
pub fn host_config() -> Config<fn(&str) -> Option<String>> {
    Config(config::get)
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Operational => "operational",
            Status::Degraded => "degraded",
            Status::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "operational" => Some(Status::Operational),
            "degraded" => Some(Status::Degraded),
            "error" => Some(Status::Error),
            _ => None,
        }
    }

    /// Operational 0 < Degraded 1 < Error 2.
    pub fn severity(self) -> u8 {
        match self {
            Status::Operational => 0,
            Status::Degraded => 1,
            Status::Error => 2,
        }
    }
}

/// A key/value state, as the host's (`HostState`) or a map in native tests.
pub trait State {
    fn get(&self, key: &str) -> Option<String>;
    fn set(&mut self, key: &str, value: String);
    fn remove(&mut self, key: &str);

    fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(|v| v.parse().ok())
    }
}

/// The plugin's persistent state in the host.
pub struct HostState;

impl State for HostState {
    fn get(&self, key: &str) -> Option<String> {
        state::get(key)
    }
    fn set(&mut self, key: &str, value: String) {
        state::set(key, &value)
    }
    fn remove(&mut self, key: &str) {
        state::remove(key)
    }
}

impl State for std::collections::BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        std::collections::BTreeMap::get(self, key).cloned()
    }
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }
    fn remove(&mut self, key: &str) {
        std::collections::BTreeMap::remove(self, key);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("5 m").is_err());
    }
}

/// The guest's allocator: a bump arena in `.bss`, so the common evaluation never calls
/// `memory.grow` (each grow costs the host an `mprotect`, and the reset another; this
/// halved the time of a fresh-sandbox evaluation). Every evaluation runs in a fresh
/// instance, so frees only matter to long-lived instances: when every allocation has been
/// freed the arena starts over. Past the arena it grows memory.
#[cfg(target_arch = "wasm32")]
mod arena {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;

    const ARENA: usize = 512 << 10;
    const PAGE: usize = 64 << 10;

    #[repr(C, align(16))]
    struct Arena(UnsafeCell<[u8; ARENA]>);

    // SAFETY: a wasm32 guest instance runs on one thread, so the arena is never touched
    // from two threads at once.
    #[allow(unsafe_code)]
    unsafe impl Sync for Arena {}

    static MEMORY: Arena = Arena(UnsafeCell::new([0; ARENA]));
    static NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    static LIVE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    static HEAP_NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    static HEAP_END: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

    pub struct Bump;

    // SAFETY: `alloc` returns a block of `layout.size()` bytes aligned to `layout.align()`
    // inside the arena, or inside pages from `memory.grow`, never handed out twice while
    // live (the arena only restarts when no allocation is live); null when memory is out.
    // `dealloc` only counts; it never touches the memory.
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            use core::sync::atomic::Ordering::Relaxed;
            let base = MEMORY.0.get() as usize;
            let next = NEXT.load(Relaxed);
            let start = (base + next + layout.align() - 1) & !(layout.align() - 1);
            let end = start + layout.size();
            if end <= base + ARENA {
                NEXT.store(end - base, Relaxed);
                LIVE.fetch_add(1, Relaxed);
                return start as *mut u8;
            }
            // Past the arena: bump through pages taken from memory.grow, 1 MiB at a time.
            let align = |p: usize| (p + layout.align() - 1) & !(layout.align() - 1);
            let mut start = align(HEAP_NEXT.load(Relaxed));
            if start == 0 || start + layout.size() > HEAP_END.load(Relaxed) {
                let pages = (layout.size() + layout.align()).div_ceil(PAGE).max(16);
                let old = core::arch::wasm32::memory_grow(0, pages);
                if old == usize::MAX {
                    return core::ptr::null_mut();
                }
                HEAP_END.store((old + pages) * PAGE, Relaxed);
                start = align(old * PAGE);
            }
            HEAP_NEXT.store(start + layout.size(), Relaxed);
            start as *mut u8
        }

        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            use core::sync::atomic::Ordering::Relaxed;
            let base = MEMORY.0.get() as usize;
            let p = ptr as usize;
            if (base..base + ARENA).contains(&p) && LIVE.fetch_sub(1, Relaxed) == 1 {
                NEXT.store(0, Relaxed);
            }
        }
    }

    #[global_allocator]
    static GLOBAL: Bump = Bump;
}
