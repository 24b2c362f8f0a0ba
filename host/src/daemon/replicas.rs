//! Replicas on one PostgreSQL store: each one's heartbeat, whose turn each occurrence is,
//! taking over a replica that stopped, and the fleet's newest snapshot for `/health`. The claim stays the safety net: two replicas
//! that disagree for a moment about who is live still run an occurrence once.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::admin::Shared;
use crate::config::Job;
use crate::schedule::{ScheduleSpec, turn};
use crate::store::{Replica, StateStore};

/// How often each replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica silent this long is taken to have stopped: its turns pass to the others, its
/// running runs are recorded abandoned and run again, its outbox leases are released.
pub const LIVE_FOR: Duration = Duration::from_secs(8);
/// How far back an occurrence another replica skipped or abandoned is still worth running.
const GRAB_WINDOW: Duration = Duration::from_secs(10);

/// The live replicas as this one last saw them, sorted by id.
#[derive(Debug)]
pub struct Membership {
    me: String,
    live: RwLock<Arc<Vec<Replica>>>,
}

impl Membership {
    /// Alone until the first heartbeat says otherwise.
    pub fn new(me: &str) -> Self {
        let alone = Replica { id: me.to_owned(), listen: String::new(), heartbeat_at: Utc::now() };
        Membership { me: me.to_owned(), live: RwLock::new(Arc::new(vec![alone])) }
    }

    pub fn live(&self) -> Arc<Vec<Replica>> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, live: Vec<Replica>) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
    }

    /// Whether this occurrence is this replica's turn.
    pub fn owns(&self, job: &Job, scheduled: DateTime<Utc>) -> bool {
        let live = self.live();
        let i = turn(&job.name, &job.schedule, scheduled, live.len());
        live.get(i).is_none_or(|r| r.id == self.me)
    }
}

/// An occurrence another replica could not run (it skipped it, or stopped while running
/// it) that this one may run: the job and the occurrence.
pub type Grab = (String, DateTime<Utc>);

/// Whether an occurrence left `ago` is still worth running: within the job's period (or
/// `GRAB_WINDOW`, whichever is longer); older, the job's next occurrence has come.
pub fn worth_grabbing(job: &Job, ago: chrono::Duration) -> bool {
    let period = match &job.schedule {
        ScheduleSpec::Every { period, .. } => period.std(),
        ScheduleSpec::Cron { .. } => GRAB_WINDOW,
    };
    ago.to_std().unwrap_or_default() < period.max(GRAB_WINDOW)
}

/// One heartbeat: say this replica is alive and learn who else is.
pub async fn beat(store: &StateStore, listen: &str, membership: &Membership) {
    match store.heartbeat(listen, LIVE_FOR).await {
        Ok(live) => {
            let before = membership.live();
            let ids = |l: &[Replica]| l.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
            if ids(&before) != ids(&live) {
                info!(replicas = ?ids(&live), "live replicas changed; they take turns at each job's occurrences");
            }
            membership.set(live);
        }
        Err(e) => warn!(error = %e, "could not record the heartbeat; the replicas last seen keep their turns"),
    }
}

/// Every `HEARTBEAT`: the heartbeat, taking over replicas that stopped, and picking up
/// occurrences other replicas skipped; what may be run goes to the daemon over `grabs`.
pub async fn keep_alive(
    store: StateStore,
    listen: String,
    membership: Arc<Membership>,
    shared: Arc<Shared>,
    grabs: mpsc::UnboundedSender<Grab>,
) {
    let mut every = tokio::time::interval(HEARTBEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        beat(&store, &listen, &membership).await;
        match store.take_over_stopped(LIVE_FOR).await {
            Ok(t) if !t.replicas.is_empty() => {
                warn!(
                    replicas = ?t.replicas,
                    abandoned_runs = t.abandoned.len(),
                    released_leases = t.leases,
                    "replicas stopped (no heartbeat for {}s): their runs are recorded abandoned and run again",
                    LIVE_FOR.as_secs()
                );
                for grab in t.abandoned {
                    let _ = grabs.send(grab);
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not look for stopped replicas"),
        }
        // One answer from every replica: the fleet's newest snapshot, whoever took it.
        if let Ok(Some(snapshot)) = store.latest_health().await
            && shared.set_latest(snapshot.clone())
        {
            crate::metrics::record_snapshot(&snapshot);
        }
        let since = Utc::now() - chrono::Duration::from_std(GRAB_WINDOW).unwrap_or_default();
        match store.skipped_elsewhere(since).await {
            Ok(skipped) => {
                for grab in skipped {
                    let _ = grabs.send(grab);
                }
            }
            Err(e) => warn!(error = %e, "could not look for occurrences other replicas skipped"),
        }
    }
}
