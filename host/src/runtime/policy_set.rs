//! The loaded policy set: built from `[[policy]]` entries, swapped whole on reload.

use std::sync::Arc;

use super::{LoadError, Policy, PolicyEngine};
use crate::config::Config;

/// The engine and every loaded policy. Runs hold an `Arc` of the set they started with.
pub struct PolicySet {
    pub engine: Arc<PolicyEngine>,
    pub policies: Vec<Arc<Policy>>,
}

impl PolicySet {
    pub fn empty(engine: Arc<PolicyEngine>) -> Self {
        PolicySet { engine, policies: Vec::new() }
    }

    /// Loads every configured policy, reusing `previous` ones whose spec and file are
    /// unchanged. Any failure refuses the whole set (the running one stays).
    pub fn load(
        engine: Arc<PolicyEngine>,
        config: &Config,
        previous: Option<&PolicySet>,
    ) -> Result<Self, Vec<LoadError>> {
        let mut policies = Vec::new();
        let mut errors = Vec::new();
        for spec in &config.policies {
            let reuse = previous.and_then(|p| {
                p.policies.iter().find(|old| {
                    old.spec == *spec && crate::runtime::file_sha256(&spec.component).as_deref() == Some(&old.hash)
                })
            });
            match reuse {
                Some(old) => policies.push(old.clone()),
                None => match engine.load(spec) {
                    Ok(p) => policies.push(Arc::new(p)),
                    Err(e) => errors.push(e),
                },
            }
        }
        if errors.is_empty() { Ok(PolicySet { engine, policies }) } else { Err(errors) }
    }

    pub fn for_job<'a>(&'a self, job: &'a str) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        self.policies.iter().filter(move |p| p.listens_to(job))
    }
}
