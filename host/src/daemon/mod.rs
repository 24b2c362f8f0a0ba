//! `warden run`: the long-running process. Owns the scheduler, spawns job runs, serves
//! HTTP, reloads the configuration, and shuts down cleanly on SIGTERM or Ctrl-C.

mod clock;
mod deferred;
mod execute;
mod file_watch;
mod lock;
mod reload;
mod replicas;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

pub use crate::runtime::PolicySet;
pub use execute::{RunReport, Trigger, execute, execute_observed};

use deferred::execute_listened;
use execute::Occurrence;

use crate::admin::{self, Command, CommandError, Shared};
use crate::config::{self, Config, Job};
use crate::delivery::{Channels, Dispatcher};
use crate::schedule::{Fire, Scheduler};
use crate::store::{Spool, StateStore};
use crate::targets::Targets;
use crate::tasks::{Event, TaskContext};

/// How long running jobs get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The loop wakes at least this often, so a wall-clock step is noticed within a second.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long a changed schedule file settles before it is read (editors write in steps).
const RELOAD_SETTLE: Duration = Duration::from_millis(200);
/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Opens the state store, the spool beside it and the targets for a configuration.
pub async fn open(config: &Config) -> anyhow::Result<RunContext> {
    let store = StateStore::open(&config.state).await?;
    let spool_path = warden_dir(config).join("spool.jsonl");
    let spool = Spool::open(&spool_path).with_context(|| format!("cannot open the spool {}", spool_path.display()))?;
    let targets = Targets::open(&config.targets).await?;
    refuse_grants(&targets, config).await?;
    let router = Arc::new(crate::delivery::route::Router::new(config));
    Ok(RunContext { targets, store, spool, fleet: None, router })
}

/// Refuses a configuration whose `sql:read` grants reach a connection a policy could leave
/// the database through (a superuser, a role holding the server-file roles or warden's own
/// schema, warden's own SQLite file).
pub async fn refuse_grants(targets: &Targets, config: &Config) -> anyhow::Result<()> {
    let refused = targets.verify_grants(&config.policies, &config.state.url).await;
    if refused.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = refused.iter().map(|(policy, why)| format!("policy \"{policy}\": {why}")).collect();
    anyhow::bail!("{}: refused the sql:read grant:\n{}", config.path.display(), lines.join("\n"))
}

/// What a run needs: the targets its task acts on, the state store it is recorded in, and
/// the spool that stands in for the store while it is unreachable.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub targets: Targets,
    pub store: StateStore,
    pub spool: Spool,
    /// Replicas' agreement on who runs and sends while the store is unreachable (`warden
    /// run` on PostgreSQL); `None`: this process acts alone.
    pub fleet: Option<Arc<replicas::Fleet>>,
    /// Where the policies' actions go; renewed on reload (a run keeps the one it started with).
    pub router: Arc<crate::delivery::route::Router>,
}

impl RunContext {
    /// The part a task sees: the targets and (for `db = "state"` maintenance) the store.
    pub fn task(&self) -> TaskContext<'_> {
        TaskContext { targets: &self.targets, store: &self.store }
    }
}

/// warden's local folder beside the configuration: the component cache and the spool.
pub fn warden_dir(config: &Config) -> PathBuf {
    let base = config::base_dir(&config.path);
    std::path::absolute(&base).unwrap_or(base).join(".warden")
}

struct Daemon {
    path: PathBuf,
    policies: Arc<PolicySet>,
    /// The policies loading at start-up, off the loop.
    initial: Option<tokio::task::JoinHandle<Result<PolicySet, Vec<crate::runtime::LoadError>>>>,
    /// Runs waiting for the policies loading at start-up; `None` once none waits.
    deferred: Option<Arc<deferred::Deferred>>,
    /// The configuration running, the same one the admin API reads.
    config: Arc<Config>,
    jobs: HashMap<String, Arc<Job>>,
    ctx: RunContext,
    scheduler: Scheduler,
    shared: Arc<Shared>,
    /// Runs in flight: each ends with its job's name and whether it queued alerts.
    running: JoinSet<(String, bool)>,
    /// The digest of the configuration now running, so an unchanged file is not reloaded.
    loaded: Option<reload::FileDigest>,
    /// The delivery channels the dispatcher and the unsubscribe page use.
    channels: watch::Sender<Arc<Channels>>,
    wake: Arc<Notify>,
    /// One permit per run in flight (`max_running`); due runs wait here, in order.
    slots: Arc<tokio::sync::Semaphore>,
    /// The replicas sharing the store (only this one on SQLite), to know whose turn it is.
    membership: Arc<replicas::Membership>,
    /// The reload being built off the loop, and the one asked for meanwhile.
    reloads: reload::Reloads,
    /// When to read a changed file: editors write in several steps, so it settles first.
    reload_at: Option<tokio::time::Instant>,
    /// The watches on the schedule and the components it names (renewed when they change).
    _config_watch: Option<notify::PollWatcher>,
    components_watch: file_watch::ComponentWatch,
    reload_tx: mpsc::UnboundedSender<()>,
    /// The wall clock against the monotonic one, to notice a step.
    clock: clock::ClockWatch,
}

/// Runs until SIGTERM or Ctrl-C. `admin_token` guards `/admin/`; without one those routes
/// are off.
pub async fn run(path: &Path, config: Config, listen: SocketAddr, admin_token: Option<String>) -> anyhow::Result<()> {
    let _only_one = lock::lock_sqlite_state(&config)?;
    let metrics = crate::metrics::install();
    // Histogram samples wait in the recorder until drained: without a scrape they would
    // grow for as long as the process runs.
    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP);
            loop {
                every.tick().await;
                metrics.run_upkeep();
            }
        })
    };
    let ctx = open(&config).await?;
    // Compiling the policies may take a minute (a cold cache, a big component): they load
    // off the loop while the jobs start on time, and the runs' events wait for them.
    let engine = Arc::new(policy_engine(Some(&config))?);
    let initial = {
        let (engine, config) = (engine.clone(), config.clone());
        tokio::task::spawn_blocking(move || PolicySet::load(engine, &config, None))
    };
    let snapshot_jobs: Vec<String> = config
        .jobs
        .iter()
        .filter(|j| matches!(j.task, config::Task::Probe { .. } | config::Task::Heartbeat(_)))
        .map(|j| j.name.clone())
        .collect();
    let latest = ctx.store.newest_of(&snapshot_jobs).await.unwrap_or_else(|e| {
        warn!(error = %e, "could not read the last health snapshots");
        Vec::new()
    });
    if let Ok(n) = ctx.store.release_stale_claims().await
        && n > 0
    {
        info!(rows = n, "outbox rows held by the previous process are due again");
    }
    // On SQLite this is the only process: a run still `running` belongs to the one before.
    if ctx.store.is_single_process()
        && ctx.spool.is_empty()
        && let Ok(n) = ctx.store.reap_abandoned(Utc::now()).await
        && n > 0
    {
        warn!(runs = n, "runs the previous process left unfinished are recorded failed (abandoned)");
    }
    let secret = crate::delivery::unsubscribe::shared_secret(&config, &ctx.store).await?;
    let channels = Arc::new(Channels::with_secret(&config, ctx.targets.clone(), secret.as_deref())?);
    info!(mail = %channels.describe(), admin = ?config.alerts.admin, subscribers = channels.subscribers.is_some(), receivers = %channels.describe_receivers(), "alert delivery ready");
    let (channels_tx, channels_rx) = watch::channel(channels.clone());
    let wake = Arc::new(Notify::new());
    let (stop_dispatch, dispatch_stop) = watch::channel(false);
    let mut dispatcher =
        Dispatcher::new(ctx.store.clone(), ctx.spool.clone(), channels_rx, wake.clone()).spawn(dispatch_stop);
    match (&admin_token, listen.ip().is_loopback()) {
        (None, false) => {
            warn!(%listen, "no admin token: /admin/ is off on this public address (set WARDEN_ADMIN_TOKEN)")
        }
        (None, true) => info!("no admin token: /admin/ is off (set WARDEN_ADMIN_TOKEN or WARDEN_ADMIN_TOKEN_FILE)"),
        (Some(_), _) => info!("admin API on /admin/ (bearer token)"),
    }
    let config = Arc::new(config);
    let shared = Shared::with_delivery(metrics, latest, ctx.store.clone(), channels, config.clone(), admin_token);

    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "serving /health and /metrics");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = admin::server::Limits::from(&config.http);
    info!(max_connections = limits.max_connections, header_timeout = ?limits.header_timeout, "HTTP limits");
    let app = admin::router_with(shared.clone(), limits);
    let server = tokio::spawn(async move {
        admin::server::serve(listener, app, limits, async move { drop(http_stopped.await) }).await;
        Ok::<(), std::io::Error>(())
    });

    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel();
    let (command_tx, mut commands) = mpsc::unbounded_channel();
    shared.set_commands(command_tx);
    let config_watch = file_watch::watch_config(path, reload_tx.clone());
    let components_watch = file_watch::watch_components(&component_paths(&config), reload_tx.clone());
    file_watch::watch_sighup(reload_tx.clone());

    // Replicas on one PostgreSQL store take turns; the first heartbeat comes before the
    // first occurrence, so this replica knows who else is live.
    let membership = Arc::new(replicas::Membership::new(ctx.store.replica()));
    let (grab_tx, mut grabs) = mpsc::unbounded_channel();
    let mut ctx = ctx;
    let keep_alive = if ctx.store.is_single_process() {
        None
    } else {
        let _ = replicas::beat(&ctx.store, &bound.to_string(), &membership).await;
        // The peers' shared token: without the store at start, this replica acts alone.
        let token = ctx.store.shared_setting("peer_token", || format!("{:032x}", rand::random::<u128>())).await;
        match token {
            Ok(token) => {
                let view = Arc::new(crate::admin::peer::PeerView {
                    id: ctx.store.replica().to_owned(),
                    token,
                    spool: ctx.spool.clone(),
                    store_up: std::sync::atomic::AtomicBool::new(true),
                });
                shared.set_peer(view.clone());
                let fleet = Arc::new(replicas::Fleet::new(membership.clone(), view, shared.clone()));
                ctx.fleet = Some(fleet.clone());
                Some(tokio::spawn(replicas::keep_alive(ctx.store.clone(), bound.to_string(), fleet, grab_tx)))
            }
            Err(e) => {
                warn!(error = %e, "state store unreachable at start: this replica cannot agree with its peers until a restart, and acts alone");
                None
            }
        }
    };

    let mut daemon = Daemon {
        path: path.to_path_buf(),
        policies: Arc::new(PolicySet::empty(engine)),
        initial: Some(initial),
        deferred: Some(deferred::Deferred::start(wake.clone())),
        jobs: HashMap::new(),
        ctx,
        scheduler: Scheduler::new(rand::random()).with_burst_limit(config.max_running.max(16)),
        shared,
        running: JoinSet::new(),
        config: config.clone(),
        loaded: reload::file_digest(path),
        channels: channels_tx,
        wake,
        slots: Arc::new(tokio::sync::Semaphore::new(config.max_running)),
        membership,
        reloads: reload::Reloads::new(),
        reload_at: None,
        _config_watch: config_watch,
        components_watch,
        reload_tx,
        clock: clock::ClockWatch::new(),
    };
    info!(
        config = %path.display(),
        jobs = config.jobs.len(),
        target = %config.targets.database.display(),
        state = %config.state.url.display(),
        "warden started"
    );
    daemon.shared.set_policies(daemon.policies.clone());
    daemon.load_jobs(&config).await;

    let reaper = tokio::spawn(replicas::reap_abandoned_runs(
        daemon.ctx.store.clone(),
        daemon.ctx.spool.clone(),
        daemon.shared.clone(),
    ));

    let served = daemon.serve(&mut reload_rx, &mut commands, &mut grabs).await;
    daemon.drain_runs().await;
    reaper.abort();
    if let Some(task) = keep_alive {
        task.abort();
        // The others take this replica's turns at once rather than after LIVE_FOR.
        if let Err(e) = daemon.ctx.store.leave().await {
            warn!(error = %e, "could not leave the replicas' table; the others take over when the heartbeat is missed");
        }
    }
    upkeep.abort();
    // The dispatcher finishes the delivery in hand; anything left is sent after the restart.
    let _ = stop_dispatch.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, async { while dispatcher.join_next().await.is_some() {} }).await.is_err() {
        warn!("the dispatcher was stopped in the middle of a delivery; it is sent again after the restart");
        dispatcher.abort_all();
    }
    let _ = stop_http.send(());
    server.await??;
    served?;
    info!("warden stopped");
    Ok(())
}

impl Daemon {
    /// The loop: fire what is due, sleep until the next wake, reap finished runs, reload,
    /// carry out the admin API's commands; until SIGTERM or Ctrl-C.
    async fn serve(
        &mut self,
        reload_rx: &mut mpsc::UnboundedReceiver<()>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        grabs: &mut mpsc::UnboundedReceiver<replicas::Grab>,
    ) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            // A step of the wall clock re-plans the schedule before anything fires.
            let (now, step) = self.clock.look();
            if let Some(step) = step {
                self.clock_stepped(step, now);
            }
            // Fire what is due first, whichever branch woke us: no event can starve the timer.
            for fire in self.scheduler.due(now) {
                self.start(fire, Trigger::Schedule);
            }
            let sleep = self
                .scheduler
                .next_wake()
                .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                Some(done) = self.running.join_next() => {
                    match done {
                        Ok((job, queued_alerts)) => {
                            if self.deferred.as_ref().is_some_and(|d| d.idle_set().is_some()) {
                                self.deferred = None;
                            }
                            // It queued alerts: the dispatcher looks at once (and only then:
                            // 333 runs a second would otherwise poll the outbox 333 times).
                            if queued_alerts {
                                self.wake.notify_waiters();
                            }
                            self.scheduler.finished(&job);
                        }
                        Err(e) => error!(error = %e, "a job task panicked"),
                    }
                }
                Some(()) = reload_rx.recv() => {
                    // Let the file settle, then read it once; the loop goes on meanwhile.
                    self.reload_at = Some(tokio::time::Instant::now() + RELOAD_SETTLE);
                }
                _ = sleep_until(self.reload_at), if self.reload_at.is_some() => {
                    self.reload_at = None;
                    self.request_reload(None);
                }
                Some(built) = self.reloads.built.recv() => self.finish_reload(built).await,
                loaded = deferred::join(&mut self.initial), if self.initial.is_some() => {
                    self.initial = None;
                    self.policies_loaded(loaded)?;
                }
                Some(command) = commands.recv() => self.command(command).await,
                Some((job, scheduled)) = grabs.recv() => self.grab(&job, scheduled),
                _ = term.recv() => { info!("SIGTERM received, shutting down"); return Ok(()); }
                _ = tokio::signal::ctrl_c() => { info!("interrupt received, shutting down"); return Ok(()); }
            }
        }
    }

    fn clock_stepped(&mut self, step: chrono::TimeDelta, now: DateTime<Utc>) {
        let correction = step.abs() > crate::schedule::CORRECTION;
        warn!(
            step_seconds = step.as_seconds_f64(),
            correction,
            "the wall clock stepped {}; the schedule is re-planned{}",
            clock::describe(step),
            if correction { " from the new time (a correction)" } else { "" }
        );
        crate::metrics::record_clock_step(step.as_seconds_f64());
        self.scheduler.clock_stepped(step, now);
    }

    /// At shutdown: runs in flight get `SHUTDOWN_GRACE` to finish, then are stopped (and
    /// recorded abandoned at the next start).
    async fn drain_runs(&mut self) {
        self.drain_deferred().await;
        if self.running.is_empty() {
            return;
        }
        info!(running = self.running.len(), "waiting for running jobs");
        let drained =
            tokio::time::timeout(SHUTDOWN_GRACE, async { while self.running.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(running = self.running.len(), "jobs still running at shutdown were stopped");
            self.running.abort_all();
        }
    }
}

/// What a run does with its snapshot as soon as it has one: `/health` and the badges show
/// it at once. The flag says whether it changed the job's status.
fn observer(shared: Arc<Shared>) -> (impl Fn(&Event) + Send + Sync, Arc<std::sync::atomic::AtomicBool>) {
    let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = changed.clone();
    let observe = move |event: &Event| {
        if let Event::Snapshot(snapshot) = event {
            let before = shared.status_of(&snapshot.job);
            shared.set_latest(snapshot.clone());
            flag.store(before != Some(snapshot.status), std::sync::atomic::Ordering::Relaxed);
        }
    };
    (observe, changed)
}

/// After the run's commit: a page rendered between the change and the commit read the store
/// without it (an uptime missing its newest run); it is rendered again.
fn after_run(shared: &Shared, job: &str, changed: &std::sync::atomic::AtomicBool) {
    if changed.load(std::sync::atomic::Ordering::Relaxed) {
        shared.forget_rendered(job);
    }
}

/// Sleeps until `at`; never wakes without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The policy engine, caching compiled components in `cache_dir`.
pub fn policy_engine(config: Option<&Config>) -> anyhow::Result<crate::runtime::PolicyEngine> {
    crate::runtime::PolicyEngine::new(Some(&cache_dir(config)))
        .map_err(|e| anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}"))
}

/// Where compiled components are kept: `WARDEN_CACHE_DIR` when set (one cache for several
/// schedules), else `.warden/cache` beside the schedule, else (a bare component under
/// `warden plugin test`) the user's cache folder.
/// Returns the heap that parsing and loading a schedule freed to the system. The TOML
/// parser holds the whole file's tokens and events at once (at 100,000 jobs about 400 MB,
/// for a moment), and glibc keeps what was freed mapped: without this the process stays
/// that big (375 MB against 235 MB after it, measured at 100,000 jobs).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers and only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every file and folder this process creates from here on is its owner's alone (0600,
/// 0700): the state store and its WAL, the spool, mail written as `.eml`, the secret.
pub fn private_files() {
    #[allow(unsafe_code)]
    // SAFETY: umask takes a mode and returns the previous one; it touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}

pub fn cache_dir(config: Option<&Config>) -> PathBuf {
    if let Some(dir) = std::env::var_os("WARDEN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(config) = config {
        return warden_dir(config).join("cache");
    }
    let user = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    user.join("warden")
}

pub(super) fn component_paths(config: &Config) -> Vec<PathBuf> {
    config.policies.iter().map(|p| p.component.clone()).collect()
}

impl Daemon {
    async fn load_jobs(&mut self, config: &Config) {
        let last_ran = self.ctx.store.last_ran().await.unwrap_or_else(|e| {
            warn!(error = %e, "could not read past runs; catch-up assumes none");
            HashMap::new()
        });
        let paused = self.ctx.store.paused_jobs().await.unwrap_or_else(|e| {
            warn!(error = %e, "could not read which jobs are paused; none are");
            Default::default()
        });
        // State kept from before it was per job goes to the jobs its policy listens to.
        for policy in &config.policies {
            match self.ctx.store.assign_unscoped_state(&policy.name, &policy.on).await {
                Ok(0) => {}
                Ok(_) => {
                    info!(policy = %policy.name, jobs = ?policy.on, "the policy's state from before it was per job now belongs to each job it listens to")
                }
                Err(e) => {
                    warn!(policy = %policy.name, error = %e, "could not assign the policy's earlier state to its jobs")
                }
            }
        }
        self.jobs = config.jobs.iter().map(|j| (j.name.clone(), Arc::clone(j))).collect();
        crate::metrics::retain_jobs(|job| self.jobs.contains_key(job));
        for job in config.jobs.iter().filter(|j| j.enabled) {
            if let Some(period) = job.schedule.period(Utc::now()) {
                crate::metrics::record_job_period(&job.name, period);
            }
        }
        let specs =
            config.jobs.iter().map(|j| (j.name.clone(), j.schedule.clone(), j.enabled && !paused.contains(&j.name)));
        for fire in self.scheduler.load(specs, Utc::now(), &last_ran) {
            self.start(fire, Trigger::CatchUp);
        }
        give_back_freed_memory();
    }

    fn start(&mut self, fire: Fire, trigger: Trigger) {
        let Some(job) = self.jobs.get(fire.job()).cloned() else { return };
        match fire {
            // Another replica's turn: it claims the occurrence (and the claim would refuse
            // this one anyway); this replica does not even try.
            // Through a store outage one replica runs everything and the others hold.
            Fire::Run { .. } if self.holding() => self.scheduler.finished(&job.name),
            Fire::Run { scheduled, .. } if !self.leading() && !self.membership.owns(&job, scheduled) => {
                self.scheduler.finished(&job.name);
            }
            Fire::SkipOverlap { .. } if self.holding() => {}
            Fire::SkipOverlap { scheduled, .. } if !self.leading() && !self.membership.owns(&job, scheduled) => {}
            Fire::Run { scheduled, fire_at, .. } => self.spawn_run(job, scheduled, fire_at, trigger),
            Fire::SkipOverlap { scheduled, .. } => {
                warn!(job = %job.name, %scheduled, "previous run still going; occurrence skipped (an idle replica may run it)");
                crate::metrics::record_run(&job.name, "skipped", 0.0);
                let store = self.ctx.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.record_skip(&job.name, scheduled, "previous run still going").await {
                        warn!(job = %job.name, error = %e, "could not record the skip");
                    }
                });
            }
        }
    }

    fn holding(&self) -> bool {
        self.ctx.fleet.as_ref().is_some_and(|f| f.holding())
    }

    fn leading(&self) -> bool {
        self.ctx.fleet.as_ref().is_some_and(|f| f.leading())
    }

    /// Runs an occurrence another replica skipped or abandoned, if this one is idle for the
    /// job and the occurrence is recent; the claim takes it over (or finds it taken).
    fn grab(&mut self, name: &str, scheduled: DateTime<Utc>) {
        let Some(job) = self.jobs.get(name).cloned() else { return };
        if !replicas::worth_grabbing(&job, Utc::now() - scheduled) || !self.scheduler.start_manual(name) {
            return;
        }
        info!(job = %name, %scheduled, "running an occurrence another replica skipped or abandoned");
        self.spawn_run(job, scheduled, Utc::now(), Trigger::Takeover);
    }

    /// Starts a run in its own task once a slot (`max_running`) is free.
    fn spawn_run(&mut self, job: Arc<Job>, scheduled: DateTime<Utc>, fire_at: DateTime<Utc>, trigger: Trigger) {
        let ctx = self.ctx.clone();
        let shared = self.shared.clone();
        let listeners = self.listeners();
        let slots = self.slots.clone();
        self.running.spawn(async move {
            // Bounded work: wait for a slot; the wait is lateness, not the task's time.
            let Ok(_slot) = slots.acquire_owned().await else { return (job.name.clone(), false) };
            let lateness = (Utc::now() - fire_at).to_std().unwrap_or_default();
            let (observe, changed) = observer(shared.clone());
            let at = Occurrence { scheduled, trigger, claimed: None, lateness: Some(lateness) };
            let report = execute_listened(&job, at, &ctx, &listeners, &observe).await;
            after_run(&shared, &job.name, &changed);
            (job.name.clone(), report.queued_alerts)
        });
    }

    /// Carries out what the admin API asked.
    async fn command(&mut self, command: Command) {
        match command {
            Command::RunNow { job, reply } => {
                let _ = reply.send(self.run_now(&job).await);
            }
            Command::SetPaused { job, paused, reply } => {
                let result = if !self.jobs.contains_key(&job) {
                    Err(CommandError::NotFound(format!("no job `{job}`")))
                } else {
                    match self.ctx.store.set_paused(&job, paused).await {
                        Ok(()) => {
                            info!(job = %job, paused, "job {} by the admin API", if paused { "paused" } else { "resumed" });
                            let config = self.config.clone();
                            self.load_jobs(&config).await;
                            Ok(())
                        }
                        Err(e) => Err(CommandError::Unavailable(e.to_string())),
                    }
                };
                let _ = reply.send(result);
            }
            Command::Reload { reply } => self.request_reload(Some(reply)),
        }
    }

    /// Claims an occurrence now (like a scheduled one) and starts it; the run id comes back
    /// at once, before the run ends.
    async fn run_now(&mut self, name: &str) -> Result<i64, CommandError> {
        let job = self.jobs.get(name).cloned().ok_or_else(|| CommandError::NotFound(format!("no job `{name}`")))?;
        if !self.scheduler.start_manual(name) {
            return Err(CommandError::Conflict(format!("`{name}` is running; try again when it ends")));
        }
        let scheduled = Utc::now();
        let id = match self.ctx.store.claim(name, scheduled, Trigger::Manual.as_str()).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                self.scheduler.finished(name);
                return Err(CommandError::Conflict(format!("`{name}` at {scheduled} is claimed already")));
            }
            Err(e) => {
                self.scheduler.finished(name);
                return Err(CommandError::Unavailable(e.to_string()));
            }
        };
        let (ctx, shared, listeners) = (self.ctx.clone(), self.shared.clone(), self.listeners());
        self.running.spawn(async move {
            let (observe, changed) = observer(shared.clone());
            let at = Occurrence { scheduled, trigger: Trigger::Manual, claimed: Some(id), lateness: None };
            let report = execute_listened(&job, at, &ctx, &listeners, &observe).await;
            after_run(&shared, &job.name, &changed);
            (job.name.clone(), report.queued_alerts)
        });
        Ok(id)
    }
}
