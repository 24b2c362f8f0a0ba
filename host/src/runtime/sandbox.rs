//! The per-evaluation sandbox: the store data (`PluginCtx`) and the one constructor of
//! `Store`, which installs the memory cap and the epoch deadline.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::PolicyEngine;
use crate::config::{Grants, Limits};
use crate::targets::S3Bucket;

/// Bytes of guest stdout/stderr kept per evaluation.
pub const OUTPUT_CAP: usize = 16 << 10;
/// Bytes of `log.write` messages kept per evaluation.
pub const LOG_CAP: usize = 64 << 10;

/// Handles behind the granted host interfaces. The plugin never sees them.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    pub sql: Option<crate::targets::PolicyDb>,
    pub s3: Option<S3Bucket>,
}

/// Everything one evaluation's host functions can reach.
pub struct PluginCtx {
    pub(crate) now_ms: i64,
    pub(crate) state: BTreeMap<String, String>,
    pub(crate) writes: BTreeMap<String, Option<String>>,
    pub(crate) config: Arc<[(String, String)]>,
    pub(crate) limits: Limits,
    pub(crate) grants: Grants,
    pub(crate) caps: Capabilities,
    pub(crate) logs: Vec<(String, String)>,
    pub(crate) log_bytes: usize,
    pub(crate) abuse: Option<&'static str>,
    limiter: MemoryLimiter,
    /// Built on the guest's first WASI call: most policies never make one.
    wasi: Option<Box<Wasi>>,
    http: wasmtime_wasi_http::WasiHttpCtx,
    deny_http: DenyHttp,
    table: ResourceTable,
}

struct Wasi {
    ctx: WasiCtx,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl Wasi {
    fn new() -> Box<Wasi> {
        let stdout = MemoryOutputPipe::new(OUTPUT_CAP);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAP);
        // Deny by default: no preopened directories, no environment, no arguments, no
        // sockets, no name lookups. Clocks and random stay, so ordinary WASI guests run.
        let ctx = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Box::new(Wasi { ctx, stdout, stderr })
    }
}

impl PluginCtx {
    pub fn new(
        now: DateTime<Utc>,
        state: BTreeMap<String, String>,
        config: Arc<[(String, String)]>,
        limits: Limits,
        grants: Grants,
        caps: Capabilities,
    ) -> Self {
        PluginCtx {
            now_ms: now.timestamp_millis(),
            state,
            writes: BTreeMap::new(),
            config,
            limits,
            grants,
            caps,
            logs: Vec::new(),
            log_bytes: 0,
            abuse: None,
            limiter: MemoryLimiter { cap: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX), denied: false },
            wasi: None,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            deny_http: DenyHttp,
            table: ResourceTable::new(),
        }
    }

    pub fn memory_denied(&self) -> bool {
        self.limiter.denied
    }

    pub fn abuse(&self) -> Option<&'static str> {
        self.abuse
    }

    /// The guest's log lines plus what it printed.
    pub fn take_logs(&self) -> Vec<(String, String)> {
        let mut logs = self.logs.clone();
        if let Some(wasi) = &self.wasi {
            for (stream, pipe) in [("stdout", &wasi.stdout), ("stderr", &wasi.stderr)] {
                let bytes = pipe.contents();
                if !bytes.is_empty() {
                    logs.push((stream.to_owned(), String::from_utf8_lossy(&bytes).into_owned()));
                }
            }
        }
        logs
    }

    /// Records a log line within the cap; past it, lines are dropped (and that is said once).
    pub(crate) fn push_log(&mut self, level: &str, message: String) {
        if self.log_bytes >= LOG_CAP {
            return;
        }
        self.log_bytes += message.len();
        if self.log_bytes >= LOG_CAP {
            self.logs.push(("warn".into(), format!("log cap of {LOG_CAP} bytes reached; later lines dropped")));
        } else {
            self.logs.push((level.to_owned(), message));
        }
    }
}

/// `wasi:http` linked so components that import it (JavaScript's runtime does) load, and
/// every outgoing request denied, as sockets are.
struct DenyHttp;

impl wasmtime_wasi_http::WasiHttpHooks for DenyHttp {
    fn send_request(
        &mut self,
        _request: hyper::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    hyper::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl wasmtime_wasi_http::WasiHttpView for PluginCtx {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { hooks: &mut self.deny_http, table: &mut self.table, ctx: &mut self.http }
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi.get_or_insert_with(Wasi::new);
        WasiCtxView { ctx: &mut wasi.ctx, table: &mut self.table }
    }
}

/// Caps linear memory growth and remembers that it said no.
struct MemoryLimiter {
    cap: usize,
    denied: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The only place a `Store` is built: memory cap and deadline installed before any guest
/// code runs.
pub fn new_store(engine: &PolicyEngine, ctx: PluginCtx, limits: Limits) -> Store<PluginCtx> {
    let mut store = Store::new(engine.engine(), ctx);
    store.limiter(|ctx| &mut ctx.limiter);
    arm_deadline(&mut store, limits.deadline.std());
    store
}

/// From now, the guest has `deadline`: still running at an epoch tick, it yields to the
/// other tasks (a slow policy never holds a runtime worker for its whole deadline), and it
/// traps at the first tick past the deadline.
pub fn arm_deadline(store: &mut Store<PluginCtx>, deadline: std::time::Duration) {
    let until = std::time::Instant::now() + deadline;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if std::time::Instant::now() >= until {
            Err(wasmtime::Trap::Interrupt.into())
        } else {
            Ok(wasmtime::UpdateDeadline::Yield(1))
        }
    });
}
