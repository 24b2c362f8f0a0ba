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
use crate::store::{Replica, StateStore, StoreError};

/// How often runs a stopped process left `running` are looked for.
const REAP_EVERY: Duration = Duration::from_secs(60);
/// How far past the longest job timeout a `running` run must be to count as abandoned.
const REAP_GRACE: chrono::Duration = chrono::Duration::minutes(5);
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

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Recorded,
    /// The store answers but did not take the heartbeat in time (a full pool, a lock):
    /// not an outage.
    Busy,
    /// The store could not be reached.
    Down,
}

/// One heartbeat: say this replica is alive and learn who else is.
pub async fn beat(store: &StateStore, listen: &str, membership: &Membership) -> Beat {
    match tokio::time::timeout(2 * HEARTBEAT, store.heartbeat(listen, LIVE_FOR)).await {
        Ok(Ok(live)) => {
            let before = membership.live();
            let ids = |l: &[Replica]| l.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
            if ids(&before) != ids(&live) {
                info!(replicas = ?ids(&live), "live replicas changed; they take turns at each job's occurrences");
            }
            membership.set(live);
            Beat::Recorded
        }
        Ok(Err(e)) if store.is_unreachable(&e) => {
            warn!(error = %e, "could not record the heartbeat: the state store is unreachable");
            Beat::Down
        }
        Ok(Err(e)) => {
            warn!(error = %e, "could not record the heartbeat; the replicas last seen keep their turns");
            Beat::Busy
        }
        Err(_) => {
            // No answer in time: busy if the store still answers a ping (or every
            // connection is in use), down if not.
            if matches!(store.after_timeout(HEARTBEAT).await, StoreError::Busy) {
                warn!("the heartbeat waited on a busy state store; the replicas last seen keep their turns");
                Beat::Busy
            } else {
                warn!("the heartbeat got no answer: the state store is unreachable");
                Beat::Down
            }
        }
    }
}

/// A replica whose clock differs from the store's by more than this says so: replicas agree
/// on occurrences by wall-clock time, so a skewed one runs its turns early or late.
const CLOCK_SKEW_LIMIT: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// How often the clock is compared (in heartbeats), and how often a lasting skew is logged.
const CLOCK_EVERY: u32 = 5;
const CLOCK_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// This replica's clock against the store's, compared every `CLOCK_EVERY` heartbeats.
#[derive(Default)]
struct ClockAgreement {
    beats: u32,
    /// When a skew over the limit was last logged; `None` while the clocks agree.
    logged: Option<std::time::Instant>,
}

impl ClockAgreement {
    async fn check(&mut self, store: &StateStore, shared: &Shared) {
        self.beats += 1;
        if self.beats % CLOCK_EVERY != 1 {
            return;
        }
        let skew = match store.clock_skew().await {
            Ok(Some(skew)) => skew,
            Ok(None) => return,
            Err(e) => return warn!(error = %e, "could not read the state store's clock"),
        };
        let seconds = skew.as_seconds_f64();
        crate::metrics::record_clock_skew(seconds);
        let over = skew.abs() > CLOCK_SKEW_LIMIT;
        shared.set_clock_skew(Some(seconds), over);
        match (over, self.logged) {
            (true, Some(at)) if at.elapsed() < CLOCK_LOG_EVERY => {}
            (true, _) => {
                warn!(
                    skew_seconds = seconds,
                    "this replica's clock is {:.1}s {} the state store's: it runs its turns of the schedule that much off (set up NTP)",
                    seconds.abs(),
                    if seconds > 0.0 { "ahead of" } else { "behind" }
                );
                self.logged = Some(std::time::Instant::now());
            }
            (false, Some(_)) => {
                info!(skew_seconds = seconds, "this replica's clock agrees with the state store's again");
                self.logged = None;
            }
            (false, None) => {}
        }
    }
}

/// Every `HEARTBEAT`: the heartbeat, taking over replicas that stopped, and picking up
/// occurrences other replicas skipped; what may be run goes to the daemon over `grabs`.
/// While the store is unreachable: agreeing with the peers on who leads (`Fleet`).
pub async fn keep_alive(store: StateStore, listen: String, fleet: Arc<Fleet>, grabs: mpsc::UnboundedSender<Grab>) {
    let mut every = tokio::time::interval(HEARTBEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when this replica's heartbeats have been recorded without a break: after an
    // outage every replica's heartbeat is old, and none is taken over until the others had
    // their chance to beat again.
    let mut up_since = std::time::Instant::now();
    let mut clock = ClockAgreement::default();
    loop {
        every.tick().await;
        let beat = beat(&store, &listen, &fleet.membership).await;
        if beat == Beat::Busy {
            continue;
        }
        if beat == Beat::Recorded {
            clock.check(&store, &fleet.shared).await;
        }
        fleet.after_heartbeat(&store, beat == Beat::Recorded).await;
        if beat == Beat::Down {
            up_since = std::time::Instant::now();
            continue;
        }
        let takeover = if up_since.elapsed() > LIVE_FOR {
            store.take_over_stopped(LIVE_FOR).await
        } else {
            Ok(Default::default())
        };
        match takeover {
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
        // One answer from every replica: each job's newest snapshot, whoever took it (what
        // was stored since the last look, with a second's overlap).
        let since = Utc::now() - chrono::Duration::from_std(HEARTBEAT * 2).unwrap_or_default();
        if let Ok(page) = store.health_page(Some(since), None, 1000, None).await {
            for (_, snapshot) in page.into_iter().rev() {
                if fleet.shared.set_latest(snapshot.clone()) {
                    crate::metrics::record_snapshot(&snapshot);
                }
            }
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

/// What a replica does while it cannot reach the state store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The store is reachable: every replica takes its turns.
    Normal,
    /// The store is down for every replica that answers: this one (the lowest id among
    /// them) runs every occurrence, decides from the freshest state any of them knows, and
    /// alone sends from its spool.
    Leader,
    /// Another replica leads (or reaches the store and takes this one's turns once its
    /// heartbeat is missed): this one runs and sends nothing until the store is back and the
    /// leader's spool has moved in.
    Hold,
}

/// How long a computed outage role holds before the peers are asked again.
const ROLE_FOR: Duration = Duration::from_secs(1);
/// How long one peer gets to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// After the store is back, the leader keeps running every occurrence this long, so the
/// replicas that held resume without a gap.
const LINGER: Duration = Duration::from_secs(3);
/// The longest a replica that held waits for the leader's spool to move in.
const WAIT_FOR_LEADER: Duration = Duration::from_secs(30);

/// The replicas' agreement on one sender through a store outage.
pub struct Fleet {
    pub membership: Arc<Membership>,
    view: Arc<crate::admin::peer::PeerView>,
    shared: Arc<Shared>,
    role: std::sync::Mutex<(Role, std::time::Instant)>,
    /// Only one computation of the role at a time.
    asking: tokio::sync::Mutex<()>,
    /// After an outage this replica held through: the leader (its address) whose spool
    /// must move in first, and since when.
    wait_for: std::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// When this replica stopped leading (it goes on running every occurrence for `LINGER`).
    led_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("role", &self.role()).finish()
    }
}

impl Fleet {
    pub fn new(membership: Arc<Membership>, view: Arc<crate::admin::peer::PeerView>, shared: Arc<Shared>) -> Self {
        Fleet {
            membership,
            view,
            shared,
            role: std::sync::Mutex::new((Role::Normal, std::time::Instant::now())),
            asking: tokio::sync::Mutex::new(()),
            wait_for: std::sync::Mutex::new(None),
            led_until: std::sync::Mutex::new(None),
        }
    }

    pub fn role(&self) -> Role {
        self.role.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn set_role(&self, role: Role) {
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = (role, std::time::Instant::now());
    }

    /// Runs nothing: another replica leads through the outage, or its spool is moving in.
    pub fn holding(&self) -> bool {
        self.role() == Role::Hold || self.wait_for.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Runs every occurrence, whoever's turn: it leads through an outage (or just did).
    pub fn leading(&self) -> bool {
        self.role() == Role::Leader
            || self.led_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t > std::time::Instant::now())
    }

    /// The role for a run whose claim found the store unreachable: asks the peers unless
    /// that was done within `ROLE_FOR`.
    pub async fn outage_role(&self) -> Role {
        self.view.store_up.store(false, std::sync::atomic::Ordering::SeqCst);
        let _asking = self.asking.lock().await;
        let (role, at) = *self.role.lock().unwrap_or_else(|e| e.into_inner());
        if role != Role::Normal && at.elapsed() < ROLE_FOR {
            return role;
        }
        self.decide().await
    }

    /// Asks every live peer; the lowest id among those that answer (this one included)
    /// leads, unless one of them still reaches the store.
    async fn decide(&self) -> Role {
        let me = self.view.id.clone();
        let live = self.membership.live();
        let mut answering = vec![(me.clone(), String::new())];
        // A peer that does not answer still counts while its last heartbeat is recent: it
        // may only be slow, and two leaders would each send.
        let mut silent = Vec::new();
        for peer in live.iter().filter(|r| r.id != me && !r.listen.is_empty()) {
            let Some(body) = peer_get(&peer.listen, "/peer/status", &self.view.token).await else {
                if (Utc::now() - peer.heartbeat_at).to_std().unwrap_or_default() < LIVE_FOR {
                    silent.push((peer.id.clone(), peer.listen.clone()));
                }
                continue;
            };
            let Ok(status) = serde_json::from_str::<crate::admin::peer::PeerStatus>(&body) else { continue };
            if let Some(latest) = status.latest.clone()
                && self.shared.set_latest(latest.clone())
            {
                crate::metrics::record_snapshot(&latest);
            }
            if status.store_up {
                // It reaches the store, and takes this replica's turns once the heartbeat
                // is missed: nothing here to send.
                return self.become_role(Role::Hold, &peer.listen).await;
            }
            answering.push((status.id, peer.listen.clone()));
        }
        let mut candidates: Vec<(String, String)> = answering.iter().chain(silent.iter()).cloned().collect();
        candidates.sort();
        let (leader, listen) = candidates[0].clone();
        answering.sort();
        if leader == me {
            if self.role() != Role::Leader {
                // Before deciding anything: the freshest state any peer knows.
                let mut newer = 0;
                for (_, listen) in answering.iter().skip(1) {
                    if let Some(body) = peer_get(listen, "/peer/states", &self.view.token).await
                        && let Ok(states) = serde_json::from_str::<crate::admin::peer::PeerStates>(&body)
                    {
                        newer += self.view.spool.merge_newer(states);
                    }
                }
                warn!(
                    replicas = answering.len(),
                    newer_states = newer,
                    "state store unreachable for every replica that answers: this one leads (runs every occurrence and alone sends from its spool)"
                );
            }
            *self.wait_for.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.set_role(Role::Leader);
            Role::Leader
        } else {
            self.become_role(Role::Hold, &listen).await
        }
    }

    async fn become_role(&self, role: Role, leader: &str) -> Role {
        if self.role() != role {
            warn!(leader = %leader, "state store unreachable: another replica leads through the outage; this one holds");
        }
        *self.wait_for.lock().unwrap_or_else(|e| e.into_inner()) =
            (!leader.is_empty()).then(|| (leader.to_owned(), std::time::Instant::now()));
        self.set_role(role);
        role
    }

    /// Each heartbeat: a failed one asks the peers who leads; once the store is back the
    /// leader moves its spool in, and a replica that held waits until the leader's spool is
    /// empty before it runs again.
    async fn after_heartbeat(&self, store: &StateStore, ok: bool) {
        use std::sync::atomic::Ordering;
        if !ok {
            self.view.store_up.store(false, Ordering::SeqCst);
            let _asking = self.asking.lock().await;
            self.decide().await;
            return;
        }
        self.view.store_up.store(true, Ordering::SeqCst);
        match self.role() {
            Role::Leader => {
                if let Err(e) = self.view.spool.drain(store).await {
                    warn!(error = %e, "could not move the spool into the state store yet");
                    return;
                }
                *self.led_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now() + LINGER);
                info!("state store back: the spool moved in; the replicas take turns again");
                self.set_role(Role::Normal);
            }
            Role::Hold => self.set_role(Role::Normal),
            Role::Normal => {}
        }
        // Whatever this replica spooled (a run that ended as the store went away) moves in
        // now, not at its next run.
        if !self.view.spool.is_empty()
            && let Err(e) = self.view.spool.drain(store).await
        {
            warn!(error = %e, "could not move the spool into the state store yet");
        }
        let waiting = self.wait_for.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((leader, since)) = waiting {
            let drained = match peer_get(&leader, "/peer/status", &self.view.token).await {
                Some(body) => serde_json::from_str::<crate::admin::peer::PeerStatus>(&body)
                    .is_ok_and(|s| s.store_up && s.spool_runs == 0),
                None => true, // gone: nothing of its will move in
            };
            if drained || since.elapsed() > WAIT_FOR_LEADER {
                info!(leader = %leader, "state store back and the leader's spool moved in; this replica takes its turns again");
                *self.wait_for.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
    }
}

/// One GET to a peer with the peer token: the body of a 200, or `None`.
async fn peer_get(listen: &str, path: &str, token: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(listen).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {listen}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8(response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
    };
    tokio::time::timeout(PEER_TIMEOUT, exchange).await.ok().flatten()
}

/// Every minute, records as failed the runs still `running` well past the longest job
/// timeout: every run ends within its timeout, so the process running them stopped (a
/// replica that died, or jobs aborted at shutdown). Not while the spool holds runs, whose
/// outcomes are on their way.
pub(super) async fn reap_abandoned_runs(store: StateStore, spool: crate::store::Spool, shared: Arc<Shared>) {
    let mut every = tokio::time::interval(REAP_EVERY);
    loop {
        every.tick().await;
        let Some(config) = shared.config() else { continue };
        if !spool.is_empty() {
            continue;
        }
        let longest = config.jobs.iter().map(|j| j.timeout.chrono()).max().unwrap_or_default();
        let Some(before) = Utc::now().checked_sub_signed(longest).and_then(|t| t.checked_sub_signed(REAP_GRACE)) else {
            continue;
        };
        if let Ok(n) = store.reap_abandoned(before).await
            && n > 0
        {
            warn!(runs = n, "runs left unfinished by a stopped process are recorded failed (abandoned)");
        }
    }
}
