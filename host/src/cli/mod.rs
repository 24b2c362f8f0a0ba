//! The command line: `run`, `check`, `jobs`, `trigger`, `outbox`, `plugin`, and the
//! commands that call a running instance's admin API (`remote.rs`).

mod plugin;
mod remote;
mod scaffold;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};
use crate::daemon::{self, Trigger};
use crate::store::Outcome;
use crate::tasks::Event;

#[derive(Debug, Parser)]
#[command(name = "warden", version, about = "Keeps a web service healthy from the outside")]
pub struct Cli {
    /// The schedule file.
    #[arg(long, global = true, default_value = "schedules.toml", env = "WARDEN_CONFIG")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler, the jobs and the HTTP endpoint until SIGTERM.
    Run {
        /// Address for /health and /metrics.
        #[arg(long, env = "WARDEN_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// A file holding the bearer token of /admin/ (or set WARDEN_ADMIN_TOKEN).
        #[arg(long, env = "WARDEN_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// Check the schedule file and list every problem in it.
    Check {
        /// Also connect to every target, prepare every SQL statement (without running it)
        /// and check the bucket, reporting each refusal at its line.
        #[arg(long)]
        connect: bool,
    },
    /// List jobs: schedule, next three fire times, last run.
    Jobs,
    /// Run one job now and print its outcome; exits non-zero when it fails. With --url, ask
    /// a running warden to run it (claimed like a scheduled run) and print the run id.
    Trigger {
        /// The job's name.
        job: String,
        /// A running warden's address, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: Option<String>,
        /// A file holding the admin token (or set WARDEN_ADMIN_TOKEN).
        #[arg(long, env = "WARDEN_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// Pause a job of a running warden; kept across its restarts.
    Pause {
        job: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Let a paused job of a running warden fire again.
    Resume {
        job: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Make a running warden read its schedule file again; prints every problem when the
    /// new file is refused (the running configuration stays).
    Reload {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Silences of a running warden: add, list, expire.
    #[command(subcommand)]
    Silence(SilenceCommand),
    /// Print the admin API's OpenAPI document (what /admin/openapi.json serves).
    Openapi,
    /// Policy plugins: scaffold one, or run one evaluation in the sandbox.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The alert outbox: list rows, or re-drive failed ones.
    Outbox {
        #[command(subcommand)]
        command: Option<OutboxCommand>,
    },
}

/// Where the running warden is, and its admin token.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The running warden's address.
    #[arg(long, env = "WARDEN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A file holding the admin token (or set WARDEN_ADMIN_TOKEN).
    #[arg(long, env = "WARDEN_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
}

impl RemoteArgs {
    fn remote(&self) -> anyhow::Result<remote::Remote> {
        remote::Remote::new(&self.url, admin_token(self.admin_token_file.as_deref())?)
    }
}

#[derive(Debug, Subcommand)]
pub enum SilenceCommand {
    /// Hold back matching alerts: they are recorded `silenced` in the outbox, never sent.
    Add {
        /// Only this job's alerts.
        #[arg(long)]
        job: Option<String>,
        /// Only this policy's alerts.
        #[arg(long)]
        policy: Option<String>,
        /// email, subscribers, notice or ticket.
        #[arg(long)]
        kind: Option<String>,
        /// How long, e.g. 2h (or give --until).
        #[arg(long = "for", conflicts_with = "until", required_unless_present = "until")]
        duration: Option<String>,
        /// When it ends (RFC 3339).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        /// When it starts (RFC 3339); default now.
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Why: shown with every alert it holds back.
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Running and coming silences, and the configured maintenance windows.
    List {
        /// Include silences that ended.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// End a silence now.
    Expire {
        id: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List rows, newest first.
    List {
        /// Only rows in this state: pending, delivered, failed or silenced.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Make a failed row (or, with --all-failed, every failed row) pending again.
    Retry {
        /// The row's id (from `warden outbox list`).
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all_failed: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Scaffold a policy that builds and passes its own test.
    New {
        name: String,
        /// Where it goes.
        #[arg(long, default_value = "plugins")]
        dir: PathBuf,
        /// Its language: a Rust crate, or Python (componentize-py) or JavaScript
        /// (componentize-js) with the world in `wit/`.
        #[arg(long, value_enum, default_value = "rust")]
        lang: scaffold::Lang,
        /// The warden-policy SDK, relative to the new crate or absolute.
        #[arg(long, default_value = "../sdk")]
        sdk: PathBuf,
        /// Give the crate a workspace of its own (outside this repository).
        #[arg(long)]
        standalone: bool,
    },
    /// Run one evaluation of a policy (a configured name or a .wasm file) and print the
    /// actions, state writes and logs.
    Test {
        plugin: String,
        /// The event, as JSON (`{"kind": "snapshot", …}`, `"gauges"` or `"run-finished"`).
        #[arg(long)]
        event: PathBuf,
        /// The policy's state before the evaluation, as a JSON object of strings.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The job the event comes from (default: the policy's first `on` job).
        #[arg(long)]
        job: Option<String>,
        /// The evaluation's clock (RFC 3339); default now.
        #[arg(long)]
        now: Option<DateTime<Utc>>,
        /// Grant a capability for this evaluation (`sql:read`, `s3:head`, `s3:list`),
        /// reaching the schedule's targets (the defaults without one). Repeatable.
        #[arg(long = "grant", value_name = "GRANT")]
        grants: Vec<String>,
        /// A config value for the policy, `KEY=VALUE` (over the schedule's). Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Print an example event as `warden plugin test --event` takes it (and as policies
    /// receive it): `snapshot` (a probe), `gauges` (pool-stats, storage) or `run-finished`.
    Event {
        #[arg(default_value = "snapshot")]
        kind: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // warden's own files (the state store, the spool, mail, the cache) are private; a
    // scaffolded plugin is the user's source, made as their other files are.
    if !matches!(cli.command, Command::Plugin(PluginCommand::New { .. })) {
        crate::daemon::private_files();
    }
    init_logging();
    // One runtime worker unless WARDEN_WORKERS says more: a run spends its time waiting on
    // its databases, and a second worker mostly wakes the first (a context switch each time;
    // measured in benches/fleet.rs). Guests yield at every epoch tick, compiles and SQLite
    // statements have threads of their own, so one worker is never held for long.
    let workers = match std::env::var("WARDEN_WORKERS") {
        Err(_) => 1,
        Ok(text) => match text.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("error: WARDEN_WORKERS: expected a number of threads above 0, got `{text}`");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a worker, not the main thread: the daemon's loop wakes for every run it fires and
    // reaps, and each wake of a thread outside the pool is a context switch.
    match runtime.block_on(async { tokio::spawn(dispatch(cli)).await }) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("WARDEN_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads the file or prints every problem in it.
fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{}: {} problem(s) found", path.display(), errors.0.len());
        ExitCode::FAILURE
    })
}

/// Every command, in one `match`. The commands that only talk to a running instance (or
/// test a bare component) need no schedule file; the others load it first.
async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    macro_rules! schedule {
        () => {
            match load(&cli.config) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            }
        };
    }
    match cli.command {
        Command::Plugin(PluginCommand::New { name, dir, lang, sdk, standalone }) => {
            scaffold::new(&name, &dir, lang, &sdk, standalone)
        }
        Command::Plugin(PluginCommand::Event { kind }) => plugin::example_event(&kind),
        Command::Plugin(PluginCommand::Test { plugin, event, state, job, now, grants, set }) => {
            // A bare component file needs no schedule; a policy name does.
            let config = if cli.config.exists() {
                Some(load(&cli.config).map_err(|_| anyhow::anyhow!("the schedule is invalid"))?)
            } else {
                None
            };
            let options = plugin::TestOptions { state: state.as_deref(), job: job.as_deref(), now, grants, set };
            plugin::test(config.as_ref(), &plugin, &event, options).await
        }
        Command::Pause { job, remote } => remote.remote()?.pause(&job, true).await,
        Command::Resume { job, remote } => remote.remote()?.pause(&job, false).await,
        Command::Reload { remote } => remote.remote()?.reload().await,
        Command::Trigger { job, url: Some(url), admin_token_file } => {
            let token = admin_token(admin_token_file.as_deref())?;
            remote::Remote::new(&url, token)?.run_now(&job).await
        }
        Command::Silence(command) => silence(&command).await,
        Command::Openapi => {
            println!("{}", crate::admin::openapi().to_pretty_json()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { connect } => check_build(&cli.config, &schedule!(), connect).await,
        Command::Run { listen, admin_token_file } => {
            let token = admin_token(admin_token_file.as_deref())?;
            daemon::run(&cli.config, schedule!(), listen, token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs => jobs(&schedule!()).await,
        Command::Trigger { job, url: None, .. } => trigger(&schedule!(), &job).await,
        Command::Outbox { command } => outbox(&schedule!(), command).await,
    }
}

/// The admin token: from its file, or `WARDEN_ADMIN_TOKEN`; at least 16 characters.
fn admin_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("WARDEN_ADMIN_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
    };
    if let Some(t) = &token
        && t.len() < 16
    {
        anyhow::bail!("the admin token is too short: at least 16 characters (e.g. `openssl rand -hex 32`)");
    }
    Ok(token)
}

async fn silence(command: &SilenceCommand) -> anyhow::Result<ExitCode> {
    match command {
        SilenceCommand::Add { job, policy, kind, duration, until, from, comment, remote } => {
            let mut new = serde_json::json!({ "comment": comment, "created_by": whoami() });
            for (field, value) in [("job", job), ("policy", policy), ("kind", kind), ("duration", duration)] {
                if let Some(v) = value {
                    new[field] = serde_json::json!(v);
                }
            }
            if let Some(t) = until {
                new["ends_at"] = serde_json::json!(t);
            }
            if let Some(t) = from {
                new["starts_at"] = serde_json::json!(t);
            }
            remote.remote()?.silence(&new).await
        }
        SilenceCommand::List { all, remote } => remote.remote()?.silences(*all).await,
        SilenceCommand::Expire { id, remote } => remote.remote()?.expire(*id).await,
    }
}

/// Who creates a silence from the command line: `cli:$USER`.
fn whoami() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

async fn outbox(config: &Config, command: Option<OutboxCommand>) -> anyhow::Result<ExitCode> {
    let store = crate::store::StateStore::open(&config.state).await?;
    match command.unwrap_or(OutboxCommand::List { state: None, limit: 50 }) {
        OutboxCommand::List { state, limit } => {
            let state = state.map(crate::base::OutboxState::try_from).transpose().map_err(|e| anyhow::anyhow!(e))?;
            let rows = store.outbox_page(state, limit, None).await?;
            println!("    id  kind        state     attempts  created              key / last error");
            for r in rows {
                println!(
                    "{:>6}  {:<11} {:<9} {:>8}  {:<20} {}",
                    r.id,
                    r.kind,
                    r.state,
                    r.attempts,
                    r.created_at.0.format("%Y-%m-%d %H:%M:%S"),
                    r.dedup_key
                );
                if let Some(e) = r.last_error.filter(|_| r.state != crate::base::OutboxState::Delivered) {
                    println!("{:>6}  {e}", "");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OutboxCommand::Retry { id, all_failed } => {
            if id.is_none() && !all_failed {
                anyhow::bail!("give a row id, or --all-failed");
            }
            let n = store.redrive(id).await?;
            println!("{n} row(s) pending again");
            Ok(if n == 0 && id.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

/// Loads and pre-instantiates every configured plugin, and reads the files the
/// configuration names (the SMTP CA), so a bad component, a missing import or an unreadable
/// certificate is found now, not at 3 a.m.
async fn check_build(path: &Path, config: &Config, connect: bool) -> anyhow::Result<ExitCode> {
    let engine = crate::daemon::policy_engine(Some(config))?;
    let mut problems = 0;
    for spec in &config.policies {
        if let Err(e) = engine.load(spec) {
            eprintln!("{}: {e}", path.display());
            problems += 1;
        }
    }
    if let Some(ca) = &config.alerts.smtp_ca
        && let Err(e) = crate::delivery::mail::read_ca(ca)
    {
        eprintln!("{}: alerts.smtp_ca: {e}", path.display());
        problems += 1;
    }
    if connect && problems == 0 {
        problems += check_connect(path, config).await?;
    }
    if problems > 0 {
        eprintln!("{}: {problems} problem(s) found", path.display());
        return Ok(ExitCode::FAILURE);
    }
    let connected = if connect { "; every target answered and every statement prepared" } else { "" };
    println!("{}: OK ({} jobs, {} policies{connected})", path.display(), config.jobs.len(), config.policies.len());
    if let Some(subscribers) = &config.alerts.subscribers {
        let signer = match (&subscribers.secret, &config.state.url) {
            (crate::config::Secret::Inline(_), _) => {
                "the inline signing_secret (every replica must be given the same)".to_owned()
            }
            (crate::config::Secret::File(file), crate::config::DbUrl::Postgres(_)) => format!(
                "the secret the replicas share in the state store (the first replica puts {} there, or a new one)",
                file.display()
            ),
            (crate::config::Secret::File(file), crate::config::DbUrl::Sqlite(_)) => file.display().to_string(),
        };
        println!("unsubscribe links are signed with {signer}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `warden check --connect`: every target reached, every SQL text prepared on the database
/// it runs on (nothing is run), the bucket checked. Each refusal is printed as
/// `file:line:column: field: <what the server said>`; returns how many.
async fn check_connect(path: &Path, config: &Config) -> anyhow::Result<usize> {
    use crate::config::sites::{SqlText, sql_sites};
    let src = std::fs::read_to_string(path)?;
    let file = path.display();
    let mut problems = 0;
    let mut report = |field: &str, place: &str, message: String| {
        eprintln!("{place}: {field}: {message}");
        problems += 1;
    };
    let targets = match crate::targets::Targets::open(&config.targets).await {
        Ok(t) => {
            for (name, (pool, _)) in t.databases.iter() {
                if let Err(e) = pool.execute("SELECT 1").await {
                    report(&format!("targets.databases.{name}"), &file.to_string(), e.to_string());
                }
            }
            for (name, bucket) in t.buckets.iter() {
                if let Err(e) = bucket.head().await {
                    report(&format!("targets.buckets.{name}"), &file.to_string(), e);
                }
            }
            match t.db.execute("SELECT 1").await {
                Ok(_) => Some(t),
                Err(e) => {
                    report("targets.database", &file.to_string(), e.to_string());
                    None
                }
            }
        }
        Err(e) => {
            report("targets.database", &file.to_string(), e.to_string());
            None
        }
    };
    if let Some(bucket) = targets.as_ref().and_then(|t| t.s3.as_ref())
        && let Err(e) = bucket.head().await
    {
        report("targets.s3", &file.to_string(), e);
    }
    if let Some(t) = &targets {
        let places = crate::config::sites::grants_places(config, &src);
        for (policy, why) in t.verify_grants(&config.policies, &config.state.url).await {
            let place = places.get(&policy).cloned().unwrap_or_else(|| file.to_string());
            report(&format!("policy \"{policy}\".grants"), &place, format!("refused: {why}"));
        }
    }
    let store = match crate::store::StateStore::open(&config.state).await {
        Ok(store) => Some(store),
        Err(e) => {
            report("state.url", &file.to_string(), e.to_string());
            None
        }
    };
    for site in sql_sites(config, &src) {
        let pool = match &site.db {
            crate::config::DbRole::Target => {
                targets.as_ref().and_then(|t| t.database(site.named.as_deref())).map(|(p, _)| p)
            }
            crate::config::DbRole::Named(name) => targets.as_ref().and_then(|t| t.database(Some(name))).map(|(p, _)| p),
            crate::config::DbRole::State => store.as_ref().map(|s| s.pool()),
        };
        // An unreachable database is reported once, above.
        let Some(pool) = pool else { continue };
        let text = match &site.sql {
            SqlText::Text(sql) => match sql.for_sqlite(pool.is_sqlite()) {
                Some(text) => text.to_owned(),
                None => continue,
            },
            SqlText::Prune { table, column } => {
                format!("SELECT {} FROM {} WHERE 1 = 0", crate::db::quote_ident(column), crate::db::quote_ident(table))
            }
        };
        let prepared = crate::with_pool!(pool, |p| {
            use sqlx::Executor;
            p.prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(text))).await.map(|_| ())
        });
        if let Err(e) = prepared {
            let said = match &e {
                sqlx::Error::Database(db) => db.message().to_owned(),
                other => other.to_string(),
            };
            report(&site.field, &site.place, said);
        }
    }
    Ok(problems)
}

async fn jobs(config: &Config) -> anyhow::Result<ExitCode> {
    let store = crate::store::StateStore::open(&config.state).await?;
    let last = store.last_runs().await?;
    let now = Utc::now();
    for job in &config.jobs {
        let state = if job.enabled { "" } else { " (disabled)" };
        println!("{}{state}", job.name);
        println!("  task      {}", job.task.kind());
        println!("  schedule  {}", job.schedule);
        if let crate::schedule::ScheduleSpec::Every { period, offset, .. } = &job.schedule {
            let how = if offset.is_zero() {
                "aligned to the epoch grid".to_owned()
            } else {
                "from the job's name".to_owned()
            };
            println!("  offset    {} into each {period} ({how})", crate::schedule::Millis(*offset));
        }
        let tz = job.schedule.tz();
        let next: Vec<String> = job
            .schedule
            .upcoming(now, 3)
            .iter()
            .map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z").to_string())
            .collect();
        println!("  next      {}", if next.is_empty() { "never".to_owned() } else { next.join(", ") });
        match last.get(&job.name) {
            Some(run) => {
                let error = run.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                println!(
                    "  last run  {} {} ({}){error}",
                    run.scheduled_at.0.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z"),
                    run.outcome,
                    run.trigger
                );
            }
            None => println!("  last run  never"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn trigger(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let job = config.job(name).with_context(|| {
        let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        format!("no job `{name}` in {}; jobs: {}", config.path.display(), names.join(", "))
    })?;
    let _metrics = crate::metrics::install();
    let ctx = daemon::open(config).await?;
    let report = daemon::execute(job, Utc::now(), Trigger::Manual, &ctx).await;
    println!("job      {}", report.job);
    println!("outcome  {}", report.outcome.as_str());
    println!("took     {:.3}s", report.seconds);
    if let Some(rows) = report.rows_affected {
        println!("rows     {rows}");
    }
    if let Some(detail) = &report.detail {
        println!("detail   {detail}");
    }
    if let Some(error) = &report.error {
        println!("error    {error}");
    }
    match &report.event {
        Some(Event::Snapshot(s)) => println!("{}", serde_json::to_string_pretty(s)?),
        Some(event @ (Event::Gauges { .. } | Event::RunFinished(_))) => {
            println!("{}", serde_json::to_string_pretty(event)?)
        }
        None => {}
    }
    Ok(if report.outcome == Outcome::Ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
