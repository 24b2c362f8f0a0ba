//! Reloading the schedule without stalling it. A valid file (with every component it names
//! compiled and pre-instantiated) is built in the background, because compiling one big
//! component takes seconds to a minute; the loop goes on firing with the running set and
//! swaps the new one in whole once it is ready. An invalid one is refused and the running
//! configuration stays.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::Daemon;
use crate::config::{self, Config};
use crate::delivery::Channels;
use crate::runtime::PolicySet;
use crate::store::StateStore;
use crate::targets::Targets;

/// Who waits for a reload's answer (the admin API's `POST /admin/reload`).
pub(super) type Reply = oneshot::Sender<Result<(), Vec<String>>>;

/// A reload built (`None`: the file and its components are as loaded), or every problem
/// that refused it.
pub(super) type Built = Result<Option<Prepared>, Vec<String>>;

/// What a valid reload swaps in, built before anything running is touched.
pub(super) struct Prepared {
    config: Config,
    policies: PolicySet,
    /// The new targets, when `[targets]` changed.
    targets: Option<Targets>,
    channels: Channels,
    /// The file's digest as read, so an unchanged file is not reloaded again.
    digest: Option<FileDigest>,
}

/// The loop's reloads: at most one is built at a time.
pub(super) struct Reloads {
    /// Built reloads arrive here; the loop applies them.
    pub(super) built: mpsc::UnboundedReceiver<Built>,
    done: mpsc::UnboundedSender<Built>,
    /// A reload is being built; these wait for its answer.
    building: Option<Vec<Reply>>,
    /// Asked for again while one was built (the file may have changed since it was read):
    /// built again after it, for these.
    again: Option<Vec<Reply>>,
}

impl Reloads {
    pub(super) fn new() -> Self {
        let (done, built) = mpsc::unbounded_channel();
        Reloads { built, done, building: None, again: None }
    }
}

/// Everything a reload is built from, owned, so it is built off the loop.
struct Inputs {
    path: PathBuf,
    running: Arc<PolicySet>,
    config: Arc<Config>,
    targets: Targets,
    store: StateStore,
    /// The digest of the file as the running configuration was read.
    loaded: Option<FileDigest>,
}

impl Daemon {
    /// Reads the file again and starts building it; `reply` (if any) is answered once it
    /// is swapped in or refused. Asked while one is built, it is built again after that one.
    pub(super) fn request_reload(&mut self, reply: Option<Reply>) {
        if self.initial.is_some() {
            // The start-up load comes first; this one is built once it is done.
            self.reloads.again.get_or_insert_with(Vec::new).extend(reply);
            return;
        }
        if let Some(waiting) = &mut self.reloads.building {
            self.reloads.again.get_or_insert_with(Vec::new).extend(reply);
            info!(waiting = waiting.len(), "a reload is being built; the file is read again once it is done");
            return;
        }
        self.start_reload(reply.into_iter().collect());
    }

    /// Starts the reload asked for while the start-up load ran, if any.
    pub(super) fn start_reloads_asked_meanwhile(&mut self) {
        if let Some(again) = self.reloads.again.take() {
            self.start_reload(again);
        }
    }

    fn start_reload(&mut self, replies: Vec<Reply>) {
        let inputs = Inputs {
            path: self.path.clone(),
            running: self.policies.clone(),
            config: self.config.clone(),
            targets: self.ctx.targets.clone(),
            store: self.ctx.store.clone(),
            loaded: self.loaded,
        };
        let done = self.reloads.done.clone();
        tokio::spawn(async move {
            let _ = done.send(prepare(inputs).await);
        });
        self.reloads.building = Some(replies);
    }

    /// Swaps a built reload in (or logs its refusal), answers who waited, and starts the
    /// reload asked for meanwhile.
    pub(super) async fn finish_reload(&mut self, built: Built) {
        let replies = self.reloads.building.take().unwrap_or_default();
        let result = match built {
            Ok(Some(next)) => {
                self.swap_in(next).await;
                Ok(())
            }
            Ok(None) => {
                info!("configuration unchanged");
                Ok(())
            }
            Err(problems) => {
                crate::metrics::record_reload(false);
                error!(
                    problems = problems.len(),
                    "configuration refused; the running one stays:\n{}",
                    problems.join("\n")
                );
                Err(problems)
            }
        };
        for reply in replies {
            let _ = reply.send(result.clone());
        }
        self.start_reloads_asked_meanwhile();
    }

    /// Everything was built: the new configuration is swapped in whole. Runs in flight
    /// finish with the job and the policies they started with.
    async fn swap_in(&mut self, next: Prepared) {
        crate::metrics::record_reload(true);
        if next.config.state != self.config.state {
            warn!("`state.url` changes take effect at the next restart; the running store stays");
        }
        if let Some(targets) = next.targets {
            self.ctx.targets = targets;
        }
        let channels = Arc::new(next.channels);
        self.shared.set_channels(channels.clone());
        info!(mail = %channels.describe(), receivers = %channels.describe_receivers(), "alert delivery reconfigured");
        self.channels.send_replace(channels);
        for p in &next.policies.policies {
            if !self.policies.policies.iter().any(|old| Arc::ptr_eq(old, p)) {
                info!(policy = %p.name(), hash = %&p.hash[..12], "policy loaded");
            }
        }
        self.policies = Arc::new(next.policies);
        // Runs still waiting from the start-up are decided with the new set, still in order.
        if let Some(waiting) = &self.deferred {
            waiting.set_ready(self.policies.clone());
        }
        let new = Arc::new(next.config);
        self.ctx.router = Arc::new(crate::delivery::route::Router::new(&new));
        info!(jobs = new.jobs.len(), policies = new.policies.len(), "configuration reloaded");
        self.shared.set_config(new.clone());
        // A component added (or moved) by this reload is watched from now on.
        let components = super::component_paths(&new);
        if components != super::component_paths(&self.config) {
            self.components_watch = super::file_watch::watch_components(&components, self.reload_tx.clone());
        }
        self.loaded = next.digest;
        self.load_jobs(&new).await;
        self.config = new;
        self.shared.set_policies(self.policies.clone());
    }
}

/// Builds everything a reload swaps in (the configuration, its policies, the targets if
/// they changed, the delivery channels) without touching what runs; any problem refuses
/// the whole reload. Reading the file, hashing the components (an 18 MB one takes tens of
/// milliseconds) and compiling run on a blocking thread.
async fn prepare(inputs: Inputs) -> Built {
    let Inputs { path, running, config: current, targets: current_targets, store, loaded } = inputs;
    let loaded = tokio::task::spawn_blocking(move || {
        let digest = file_digest(&path);
        if digest.is_some() && digest == loaded && !components_changed(&running) {
            return Ok(None);
        }
        let config =
            config::load(&path).map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<String>>())?;
        let policies = PolicySet::load(running.engine.clone(), &config, Some(&running))
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<String>>())?;
        Ok::<_, Vec<String>>(Some((config, policies, digest)))
    })
    .await
    .map_err(|e| vec![format!("the reload stopped: {e}")])?;
    let Some((config, policies, digest)) = loaded? else { return Ok(None) };
    let targets = if config.targets != current.targets {
        Some(Targets::open(&config.targets).await.map_err(|e| vec![format!("{e:#}")])?)
    } else {
        None
    };
    // Always rebuilt: cheap, and it carries the maintenance windows too.
    let for_channels = targets.clone().unwrap_or(current_targets);
    super::refuse_grants(&for_channels, &config).await.map_err(|e| vec![format!("{e:#}")])?;
    let secret =
        crate::delivery::unsubscribe::shared_secret(&config, &store).await.map_err(|e| vec![format!("{e:#}")])?;
    let channels =
        Channels::with_secret(&config, for_channels, secret.as_deref()).map_err(|e| vec![format!("{e:#}")])?;
    Ok(Some(Prepared { config, policies, targets, channels, digest }))
}

/// Whether a loaded component's file changed on disk since it was loaded.
fn components_changed(running: &PolicySet) -> bool {
    running.policies.iter().any(|p| crate::runtime::file_sha256(&p.spec.component).as_deref() != Some(&p.hash))
}

/// A file's SHA-256: what tells an unchanged file, without keeping its text (16 MB at
/// 100,000 jobs).
pub(super) type FileDigest = [u8; 32];

/// The file's digest; `None` when it cannot be read.
pub(super) fn file_digest(path: &std::path::Path) -> Option<FileDigest> {
    use sha2::{Digest, Sha256};
    std::fs::read(path).ok().map(|bytes| Sha256::digest(bytes).into())
}
