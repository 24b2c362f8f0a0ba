//! Support for `benches/policy.rs`: the same component evaluated the ways the issue
//! compares. Not part of warden's API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use wasmtime::component::{Component, Linker};

use super::bindings::{Policy as Bindings, types as wit};
use super::sandbox::{Capabilities, PluginCtx, arm_deadline, new_store};
use super::{Policy, PolicyEngine, convert};
use crate::tasks::Event;

/// A component with what each mode needs.
pub struct Modes<'a> {
    engine: &'a PolicyEngine,
    policy: &'a Policy,
    component: Component,
    linker: Linker<PluginCtx>,
    event: wit::Event,
    now: DateTime<Utc>,
}

impl<'a> Modes<'a> {
    pub fn new(
        engine: &'a PolicyEngine,
        policy: &'a Policy,
        event: &Event,
        now: DateTime<Utc>,
    ) -> wasmtime::Result<Self> {
        let component = Component::from_file(engine.engine(), &policy.spec.component)?;
        let linker = engine.linker()?;
        Ok(Modes { engine, policy, component, linker, event: convert::event_to_wit(event, "health-probe", now), now })
    }

    fn ctx(&self) -> PluginCtx {
        PluginCtx::new(
            self.now,
            BTreeMap::new(),
            self.policy.config.clone(),
            self.policy.spec.limits,
            self.policy.spec.grants,
            Capabilities::default(),
        )
    }

    /// Spin-style: link and instantiate from the component on every call (no InstancePre).
    pub async fn instantiate_per_call(&self) -> wasmtime::Result<usize> {
        let mut store = new_store(self.engine, self.ctx(), self.policy.spec.limits);
        let instance = Bindings::instantiate_async(&mut store, &self.component, &self.linker).await?;
        let out = instance.call_evaluate(&mut store, &self.event).await?;
        Ok(out.map(|a| a.len()).unwrap_or(0))
    }

    /// One store and instance reused for every call: no isolation between calls (the floor).
    pub async fn reused(&self) -> wasmtime::Result<Reused> {
        let mut store = new_store(self.engine, self.ctx(), self.policy.spec.limits);
        let instance = self.policy.pre.instantiate_async(&mut store).await?;
        Ok(Reused { store, instance })
    }

    pub async fn call_reused(&self, reused: &mut Reused) -> wasmtime::Result<usize> {
        arm_deadline(&mut reused.store, self.policy.spec.limits.deadline.std());
        let out = reused.instance.call_evaluate(&mut reused.store, &self.event).await?;
        Ok(out.map(|a| a.len()).unwrap_or(0))
    }
}

pub struct Reused {
    store: wasmtime::Store<PluginCtx>,
    instance: Bindings,
}

/// Instantiates a raw component (e.g. from WAT) with a policy's linker and sandbox, and
/// calls its export `name: func() -> u32`. For sandbox tests of guests that cannot be
/// built with the toolchain here.
pub async fn call_u32(engine: &PolicyEngine, component: &[u8], name: &str) -> wasmtime::Result<u32> {
    let component = Component::new(engine.engine(), component)?;
    let limits = crate::config::Limits::default();
    let linker = engine.linker()?;
    let ctx = PluginCtx::new(
        Utc::now(),
        BTreeMap::new(),
        Vec::new().into(),
        limits,
        Default::default(),
        Capabilities::default(),
    );
    let mut store = new_store(engine, ctx, limits);
    let instance = linker.instantiate_async(&mut store, &component).await?;
    let func = instance.get_typed_func::<(), (u32,)>(&mut store, name)?;
    let (out,) = func.call_async(&mut store, ()).await?;
    Ok(out)
}
