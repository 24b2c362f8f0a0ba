//! Start-up while the policies still compile (a cold cache, a big component: seconds to a
//! minute). Runs go on at their times; the events of those that ended before the policies
//! were ready wait here in the order their runs ended, and are decided and committed in that
//! order once the policies are ready, none dropped. Past that, runs decide as usual.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use super::execute::{Occurrence, Ran, RunReport, execute_at, finish, start};
use super::{Daemon, RunContext, SHUTDOWN_GRACE};
use crate::config::Job;
use crate::runtime::PolicySet;
use crate::tasks::Event;

/// The policies a run hands its event to.
#[derive(Clone)]
pub enum Listeners {
    Ready(Arc<PolicySet>),
    /// Still being loaded at start-up.
    Waiting(Arc<Deferred>),
}

/// The queue of runs waiting for the policies, and its worker.
pub struct Deferred {
    ready: watch::Sender<Option<Arc<PolicySet>>>,
    queue: mpsc::UnboundedSender<Waiting>,
    /// Runs queued and not yet committed.
    outstanding: Arc<AtomicUsize>,
}

struct Waiting {
    job: Arc<Job>,
    ran: Ran,
    ctx: RunContext,
}

impl Deferred {
    /// The queue, with a worker that decides its runs in order once `set_ready` is called;
    /// `wake` tells the dispatcher of alerts they queued.
    pub fn start(wake: Arc<Notify>) -> Arc<Deferred> {
        let (ready, mut set) = watch::channel(None::<Arc<PolicySet>>);
        let (queue, mut waiting) = mpsc::unbounded_channel::<Waiting>();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let left = outstanding.clone();
        tokio::spawn(async move {
            while set.borrow_and_update().is_none() {
                if set.changed().await.is_err() {
                    return;
                }
            }
            while let Some(Waiting { job, mut ran, ctx }) = waiting.recv().await {
                // The set current now (a reload may have swapped one in since).
                let Some(current) = set.borrow().clone() else { return };
                // Decided later than it was claimed: the policies' state is read afresh.
                ran.forget_claimed_state();
                let report = finish(&job, ran, &ctx, Some(&current)).await;
                if report.queued_alerts {
                    wake.notify_waiters();
                }
                left.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Arc::new(Deferred { ready, queue, outstanding })
    }

    /// The policies are loaded (or a reload swapped others in): the queue is decided, in
    /// order, with the set given last.
    pub fn set_ready(&self, set: Arc<PolicySet>) {
        self.ready.send_replace(Some(set));
    }

    /// The set, once it is ready and no run waits for it any more: a run may decide at
    /// once without overtaking an earlier one of its job.
    pub fn idle_set(&self) -> Option<Arc<PolicySet>> {
        let set = self.ready.borrow().clone()?;
        (self.outstanding.load(Ordering::SeqCst) == 0).then_some(set)
    }

    /// Queues a run whose task ended; it is decided after every run queued before it.
    pub(super) fn push(&self, job: Arc<Job>, ran: Ran, ctx: RunContext) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        if self.queue.send(Waiting { job, ran, ctx }).is_err() {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Runs waiting for the policies.
    pub fn waiting(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }
}

/// The daemon's runs (a run-now comes already claimed, `at.claimed`; a scheduled one records
/// how long it waited for a slot, `at.lateness`); with the policies still loading at
/// start-up, the event waits for them in order.
pub(super) async fn execute_listened(
    job: &Arc<Job>,
    at: Occurrence,
    ctx: &RunContext,
    listeners: &Listeners,
    observe: &(dyn Fn(&Event) + Send + Sync),
) -> RunReport {
    let deferred = match listeners {
        Listeners::Ready(set) => {
            return execute_at(job, at, ctx, set, observe).await;
        }
        Listeners::Waiting(deferred) => deferred,
    };
    // The state read with the claim would be stale by the time the policies decide.
    let ran = match start(job, at, ctx, false, observe).await {
        Ok(ran) => ran,
        Err(report) => return report,
    };
    match deferred.idle_set() {
        Some(set) => finish(job, ran, ctx, Some(&set)).await,
        None => {
            let report = RunReport { deferred: true, ..ran.report.clone() };
            deferred.push(job.clone(), ran, ctx.clone());
            report
        }
    }
}

impl Daemon {
    /// The policies for a run starting now.
    pub(super) fn listeners(&self) -> Listeners {
        match &self.deferred {
            Some(waiting) => Listeners::Waiting(waiting.clone()),
            None => Listeners::Ready(self.policies.clone()),
        }
    }

    /// The start-up load ended: the waiting runs are decided, or warden stops (a policy
    /// that cannot load refuses the start, as `warden check` says).
    pub(super) fn policies_loaded(
        &mut self,
        loaded: Result<Result<PolicySet, Vec<crate::runtime::LoadError>>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let set = match loaded {
            Ok(Ok(set)) => set,
            Ok(Err(errors)) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::bail!("cannot load the policies:\n{}", lines.join("\n"));
            }
            Err(e) => anyhow::bail!("loading the policies stopped: {e}"),
        };
        for p in &set.policies {
            info!(policy = %p.name(), hash = %&p.hash[..12], on = ?p.spec.on, "policy loaded");
        }
        let set = Arc::new(set);
        let waiting = self.deferred.as_ref().map_or(0, |d| d.waiting());
        info!(policies = set.policies.len(), waiting, "policies ready; runs that ended before are decided in order");
        self.policies = set.clone();
        self.shared.set_policies(set.clone());
        if let Some(deferred) = &self.deferred {
            deferred.set_ready(set);
        }
        self.start_reloads_asked_meanwhile();
        Ok(())
    }
}

impl Daemon {
    /// Runs waiting for the policies are decided and recorded before the exit, within the
    /// grace period; with the policies still loading they cannot be, and the next start
    /// records them abandoned.
    pub(super) async fn drain_deferred(&mut self) {
        let Some(deferred) = self.deferred.take() else { return };
        if deferred.waiting() == 0 {
            return;
        }
        if self.initial.is_some() {
            warn!(
                runs = deferred.waiting(),
                "stopped before the policies were loaded: runs waiting for them are recorded abandoned at the next start"
            );
            return;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while deferred.waiting() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The start-up load's result, once it ends; never without one.
pub(super) async fn join<T>(task: &mut Option<tokio::task::JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}
