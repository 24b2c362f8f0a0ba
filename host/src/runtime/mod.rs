//! The plugin runtime: one wasmtime `Engine`, each policy compiled and pre-instantiated
//! once at load, a fresh sandboxed `Store` per evaluation.
//!
//! Architecture invariant: only this module and `capabilities/` touch wasmtime, and only
//! `sandbox::new_store` builds a `Store` (with the memory cap and the deadline). A plugin
//! never sees a credential: host functions hold the pools and clients.

/// What the policy bench and tests compare the sandbox against (`testing` feature only).
#[cfg(feature = "testing")]
pub mod bench;
pub mod bindings;
mod convert;
mod engine;
mod policy_set;
mod sandbox;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use wasmtime::component::{Component, HasSelf, Linker};

pub use convert::{ActionRecord, Priority};
pub use engine::{Allocation, PolicyEngine};
pub use policy_set::PolicySet;
pub use sandbox::{Capabilities, PluginCtx};

use crate::config::{Limits, PolicySpec};
use crate::tasks::Event;
use bindings::PolicyPre;

/// Most actions one evaluation may return.
pub const MAX_ACTIONS: usize = 64;
/// Most bytes of text (subjects, bodies, titles, messages) one evaluation may return.
pub const MAX_OUTPUT_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("policy \"{policy}\": cannot read {path}: {source}")]
    Read { policy: String, path: PathBuf, source: std::io::Error },
    #[error("policy \"{policy}\": {path} is not a WebAssembly component: {reason}")]
    NotComponent { policy: String, path: PathBuf, reason: String },
    #[error("policy \"{policy}\": {path}: {reason}")]
    Link { policy: String, path: PathBuf, reason: String },
    #[error(
        "policy \"{policy}\": {path} starts with {} of memory, more than its cap of {} (raise `limits.memory`)",
        mib(*initial),
        mib(*cap)
    )]
    Memory { policy: String, path: PathBuf, initial: u64, cap: u64 },
}

/// Why one evaluation failed. The host records it and goes on.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EvalError {
    #[error("deadline of {0} exceeded")]
    Deadline(String),
    #[error("memory cap exceeded: {0}")]
    Memory(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("the policy returned an error: {0}")]
    Refused(String),
    #[error("result too large: {0}")]
    Oversized(String),
    #[error("quarantined after {0} consecutive failures")]
    Quarantined(u32),
}

/// A loaded, pre-instantiated policy. Shared by `Arc`; a reload builds a new one.
pub struct Policy {
    pub spec: PolicySpec,
    /// SHA-256 of the component file, shown by the admin API and logs.
    pub hash: String,
    pre: PolicyPre<PluginCtx>,
    config: Arc<[(String, String)]>,
    /// `spec.on` as a set: a policy may listen to 10,000 jobs.
    on: std::collections::HashSet<String>,
    failures: AtomicU32,
    quarantined: AtomicBool,
    /// The last evaluations, newest last.
    recent: Mutex<VecDeque<EvaluationSummary>>,
}

/// How many evaluations a policy remembers for the admin API.
const RECENT_EVALUATIONS: usize = 10;

/// One evaluation as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct EvaluationSummary {
    pub at: DateTime<Utc>,
    /// The job whose result it evaluated.
    pub job: String,
    pub ok: bool,
    pub micros: u64,
    /// How many actions it decided.
    pub actions: usize,
    /// Why it failed (a trap, the deadline or memory cap, an error it returned, ...).
    pub error: Option<String>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("name", &self.spec.name).field("hash", &self.hash).finish()
    }
}

/// What an evaluation decided: actions, and the state writes that commit with them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    pub actions: Vec<ActionRecord>,
    pub state_writes: BTreeMap<String, Option<String>>,
    /// What the guest logged, printed to stdout/stderr, or returned as log actions.
    pub logs: Vec<(String, String)>,
    pub micros: u64,
}

impl Policy {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn listens_to(&self, job: &str) -> bool {
        self.spec.enabled && self.on.contains(job)
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::SeqCst)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::SeqCst)
    }

    /// The last evaluations since the policy was loaded, newest first.
    pub fn recent_evaluations(&self) -> Vec<EvaluationSummary> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().cloned().collect()
    }

    fn remember(&self, summary: EvaluationSummary) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_EVALUATIONS {
            recent.pop_front();
        }
        recent.push_back(summary);
    }

    /// Lifts a quarantine (an operator's call); the failure count starts over.
    pub fn reenable(&self) {
        self.failures.store(0, Ordering::SeqCst);
        self.quarantined.store(false, Ordering::SeqCst);
    }

    fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::SeqCst);
        } else {
            let n = self.failures.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.spec.quarantine_after {
                self.quarantined.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl PolicyEngine {
    /// Reads, compiles (or loads from the on-disk cache) and pre-instantiates a component.
    /// A missing or ungranted import fails here, naming the policy and the import.
    pub fn load(&self, spec: &PolicySpec) -> Result<Policy, LoadError> {
        let path = spec.component.clone();
        let policy = spec.name.clone();
        let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
            policy: policy.clone(),
            path: path.clone(),
            source,
        })?;
        if !bytes.starts_with(&[0x00, 0x61, 0x73, 0x6d]) {
            let reason = "the file does not start with the wasm magic bytes".to_owned();
            return Err(LoadError::NotComponent { policy, path, reason });
        }
        if bytes.get(4..8) != Some(&[0x0d, 0x00, 0x01, 0x00]) {
            let reason = "it is a core wasm module; make a component of it (wasm-tools component new, or build with wasm-component-ld)".to_owned();
            return Err(LoadError::NotComponent { policy, path, reason });
        }
        if let Some(initial) = largest_initial_memory(&bytes)
            && initial > spec.limits.memory_bytes
        {
            return Err(LoadError::Memory { policy, path, initial, cap: spec.limits.memory_bytes });
        }
        let component = Component::new(self.engine(), &bytes).map_err(|e| LoadError::NotComponent {
            policy: policy.clone(),
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        let linker = self.linker().map_err(|e| LoadError::Link {
            policy: policy.clone(),
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        let pre = linker.instantiate_pre(&component).map_err(|e| LoadError::Link {
            policy: policy.clone(),
            path: path.clone(),
            reason: explain_link_error(&format!("{e:#}")),
        })?;
        let pre = PolicyPre::new(pre).map_err(|e| LoadError::Link {
            policy: policy.clone(),
            path: path.clone(),
            reason: format!("the component does not export `evaluate` as warden:policy@0.1.0 expects: {e:#}"),
        })?;
        Ok(Policy {
            spec: spec.clone(),
            hash: sha256_hex(&bytes),
            pre,
            config: plugin_config(spec).into(),
            on: spec.on.iter().cloned().collect(),
            failures: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVALUATIONS)),
        })
    }

    /// The linker: WASI (deny by default) and every interface of the world. Python and
    /// JavaScript toolchains import all of them whether used or not, so an ungranted one is
    /// linked too and each call fails inside the guest with an error naming the grant.
    pub(crate) fn linker(&self) -> wasmtime::Result<Linker<PluginCtx>> {
        use bindings::warden::policy as wit;
        let mut linker = Linker::new(self.engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        wit::types::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |s| s)?;
        wit::clock::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |s| s)?;
        wit::log::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |s| s)?;
        wit::state::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |s| s)?;
        wit::config::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |s| s)?;
        wit::sql::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |s| s)?;
        wit::s3::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |s| s)?;
        Ok(linker)
    }

    /// One evaluation in a fresh sandbox. `state` is the policy's stored state; the writes
    /// come back in the `Evaluation` for the caller to commit with the actions.
    pub async fn evaluate(
        &self,
        policy: &Policy,
        job: &str,
        event: &Event,
        state: BTreeMap<String, String>,
        now: DateTime<Utc>,
        caps: Capabilities,
    ) -> Result<Evaluation, EvalError> {
        if policy.is_quarantined() {
            return Err(EvalError::Quarantined(policy.consecutive_failures()));
        }
        let started = Instant::now();
        let result = self.evaluate_inner(policy, job, event, state, now, caps).await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        policy.record(result.is_ok());
        policy.remember(EvaluationSummary {
            at: Utc::now(),
            job: job.to_owned(),
            ok: result.is_ok(),
            micros,
            actions: result.as_ref().map_or(0, |e| e.actions.len()),
            error: result.as_ref().err().map(ToString::to_string),
        });
        result.map(|mut e| {
            e.micros = micros;
            e
        })
    }

    async fn evaluate_inner(
        &self,
        policy: &Policy,
        job: &str,
        event: &Event,
        state: BTreeMap<String, String>,
        now: DateTime<Utc>,
        caps: Capabilities,
    ) -> Result<Evaluation, EvalError> {
        let ctx = PluginCtx::new(now, state, policy.config.clone(), policy.spec.limits, policy.spec.grants, caps);
        let mut store = sandbox::new_store(self, ctx, policy.spec.limits);
        let wit_event = convert::event_to_wit(event, job, now);
        let outcome = async {
            let instance = policy.pre.instantiate_async(&mut store).await?;
            instance.call_evaluate(&mut store, &wit_event).await
        }
        .await;
        let result = match outcome {
            Ok(r) => r,
            Err(e) => return Err(classify(&e, &store, policy.spec.limits)),
        };
        let actions = result.map_err(EvalError::Refused)?;
        let ctx = store.into_data();
        let mut logs = ctx.take_logs();
        let actions = convert::actions_from_wit(policy.name(), job, actions, &mut logs)?;
        Ok(Evaluation { actions, state_writes: ctx.writes, logs, micros: 0 })
    }
}

/// What the plugin's `config` interface shows: the `config` table, and `warden.jobs`, how
/// many jobs it listens to, so a policy can name the job when there are several. (A count,
/// not the names: a policy over 10,000 jobs would otherwise copy their names into every
/// evaluation.)
fn plugin_config(spec: &PolicySpec) -> Vec<(String, String)> {
    let mut config = spec.config.clone();
    if !config.iter().any(|(k, _)| k == "warden.jobs") {
        config.push(("warden.jobs".to_owned(), spec.on.len().to_string()));
    }
    config
}

fn classify(error: &wasmtime::Error, store: &wasmtime::Store<PluginCtx>, limits: Limits) -> EvalError {
    let text = format!("{error:#}");
    if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return EvalError::Deadline(limits.deadline.to_string());
    }
    if store.data().memory_denied() {
        return EvalError::Memory(format!("{} bytes allowed", limits.memory_bytes));
    }
    if let Some(reason) = store.data().abuse() {
        return EvalError::Trap(reason.to_owned());
    }
    EvalError::Trap(text)
}

/// Bytes in MiB, as `limits.memory` is written.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// The initial size in bytes of the largest memory a component's core modules define (the
/// memory cap applies to each memory): `None` if it cannot be read, and compiling says why.
fn largest_initial_memory(bytes: &[u8]) -> Option<u64> {
    let mut largest = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::MemorySection(memories) = payload.ok()? {
            for memory in memories {
                let memory = memory.ok()?;
                let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                largest = largest.max(memory.initial.saturating_mul(page));
            }
        }
    }
    Some(largest)
}

fn explain_link_error(text: &str) -> String {
    format!("imports something this host does not provide: {text}")
}

/// The SHA-256 of a component file, as `Policy::hash` records it; `None` if unreadable.
pub fn file_sha256(path: &std::path::Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| sha256_hex(&bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
