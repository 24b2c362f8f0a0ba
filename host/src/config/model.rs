//! The checked configuration: what `read/` builds from `schedules.toml`.

use std::path::{Path, PathBuf};

use crate::base::Duration;
use crate::schedule::ScheduleSpec;

/// A whole, valid `schedules.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub product: String,
    /// The most job runs in flight at once; due runs beyond it wait in a queue (and that
    /// wait is their lateness). Defaults to the state store's pool size.
    pub max_running: usize,
    pub targets: TargetsConfig,
    pub state: StateConfig,
    pub alerts: Alerts,
    /// Shared: the daemon, its runs and the admin API hold the same jobs, never copies.
    pub jobs: Vec<std::sync::Arc<Job>>,
    pub policies: Vec<PolicySpec>,
    /// Recurring windows during which matching alerts are silenced (as Gatus does).
    pub maintenance: Vec<MaintenanceWindow>,
    /// Which public routes are served (`[http]`); all by default.
    pub http: PublicRoutes,
    /// Where alerts can go besides the built-in `admin` (email) and `tickets` receivers.
    pub receivers: Vec<Receiver>,
    /// Which actions go to which receivers, in order; none matching: the default route
    /// (email to `admin`, tickets to `tickets`).
    pub routes: Vec<Route>,
}

/// The built-in receiver of admin email (`alerts.admin` over `alerts.smtp`).
pub const ADMIN_RECEIVER: &str = "admin";
/// The built-in receiver of tickets (`alerts.tickets`).
pub const TICKETS_RECEIVER: &str = "tickets";

/// What a receiver is: how its messages are shaped and where they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    Email,
    Webhook,
    Slack,
    Teams,
    Discord,
    Pagerduty,
    Opsgenie,
    Ntfy,
}

impl ReceiverKind {
    pub const ALL: [ReceiverKind; 8] = [
        ReceiverKind::Email,
        ReceiverKind::Webhook,
        ReceiverKind::Slack,
        ReceiverKind::Teams,
        ReceiverKind::Discord,
        ReceiverKind::Pagerduty,
        ReceiverKind::Opsgenie,
        ReceiverKind::Ntfy,
    ];

    pub fn outbox_kind(self) -> crate::base::OutboxKind {
        use crate::base::OutboxKind as K;
        match self {
            ReceiverKind::Email => K::Email,
            ReceiverKind::Webhook => K::Webhook,
            ReceiverKind::Slack => K::Slack,
            ReceiverKind::Teams => K::Teams,
            ReceiverKind::Discord => K::Discord,
            ReceiverKind::Pagerduty => K::Pagerduty,
            ReceiverKind::Opsgenie => K::Opsgenie,
            ReceiverKind::Ntfy => K::Ntfy,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.outbox_kind().as_str()
    }

    pub fn parse(text: &str) -> Option<ReceiverKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether it keeps incidents open until the recovery resolves them (the others are
    /// told the recovery as a message of its own).
    pub fn has_incidents(self) -> bool {
        matches!(self, ReceiverKind::Pagerduty | ReceiverKind::Opsgenie)
    }
}

/// `[receivers.NAME]`. Its URL, key and header values are secrets: `Debug` and every
/// message show the URL's host only.
#[derive(Clone, PartialEq)]
pub struct Receiver {
    pub name: String,
    pub kind: ReceiverKind,
    /// Off when a secret it needs expanded to nothing (its environment variable is unset):
    /// routes pass it by.
    pub enabled: bool,
    /// The webhook, the Events API, the Opsgenie API base or the ntfy topic URL.
    pub url: String,
    /// PagerDuty's routing key, Opsgenie's API key or ntfy's access token.
    pub key: Option<String>,
    /// Extra request headers (`webhook`), e.g. `Authorization`.
    pub headers: Vec<(String, String)>,
    /// Addresses (`email`).
    pub to: Vec<String>,
    /// ntfy tags added to every message.
    pub tags: Vec<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("enabled", &self.enabled)
            .field("url", &crate::base::text::redact_webhook(&self.url))
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// Which action kinds a route can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `email-admin`.
    Email,
    /// `open-ticket`.
    Ticket,
}

/// `[[routes]]`: the actions it matches (every given field must match) go to `receivers`;
/// the first matching route ends the search unless it says `continue = true`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Route {
    pub kind: Option<RouteKind>,
    /// At least this priority (an email's is its status': error critical, degraded high).
    pub priority: Option<crate::base::Priority>,
    pub policy: Option<String>,
    pub job: Option<String>,
    pub stage: Option<crate::base::Stage>,
    pub receivers: Vec<String>,
    pub continue_matching: bool,
}

/// The public HTTP routes, each of which can be turned off. Read at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicRoutes {
    pub status_page: bool,
    pub health: bool,
    pub metrics: bool,
    pub unsubscribe: bool,
    /// `/badge/{job}.svg` and `.json`.
    pub badges: bool,
    /// `/ping/{job}` for heartbeat jobs.
    pub pings: bool,
    /// The server's limits (`admin::server::Limits`): how long a client has to send a
    /// request's head (and how long a kept-alive connection may idle), how long a public
    /// route may take, how many connections may be open. `None`: the defaults.
    pub header_timeout: Option<std::time::Duration>,
    pub request_timeout: Option<std::time::Duration>,
    pub max_connections: Option<usize>,
}

impl Default for PublicRoutes {
    fn default() -> Self {
        PublicRoutes {
            status_page: true,
            health: true,
            metrics: true,
            unsubscribe: true,
            badges: true,
            pings: true,
            header_timeout: None,
            request_timeout: None,
            max_connections: None,
        }
    }
}

/// A recurring maintenance window: from each `cron` occurrence for `duration`, matching
/// outbox rows are recorded as silenced.
#[derive(Debug, Clone)]
pub struct MaintenanceWindow {
    pub name: String,
    pub schedule: ScheduleSpec,
    pub duration: Duration,
    pub matchers: crate::base::Matchers,
    pub comment: String,
}

impl MaintenanceWindow {
    /// Whether `now` falls in a window.
    pub fn active(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.schedule
            .latest_at_or_before(now)
            .is_some_and(|start| now < start + chrono::Duration::from_std(self.duration.std()).unwrap_or_default())
    }
}

impl Config {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name).map(|j| &**j)
    }
}

/// A policy plugin: a WebAssembly component fed the events of the jobs it listens to.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    pub name: String,
    pub component: PathBuf,
    pub on: Vec<String>,
    /// The `config` table, values as text (numbers and booleans rendered).
    pub config: Vec<(String, String)>,
    pub grants: Grants,
    /// The named database `sql:read:NAME` grants (`None`: the default target).
    pub sql_database: Option<String>,
    /// The named bucket `s3:head:NAME` / `s3:list:NAME` grant (`None`: the default bucket).
    pub s3_bucket: Option<String>,
    pub limits: Limits,
    /// Consecutive failed evaluations before the policy is quarantined until reload.
    pub quarantine_after: u32,
    pub enabled: bool,
}

/// Host interfaces beyond the defaults (clock, log, state, config), granted per policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grants {
    pub sql_read: bool,
    pub s3_head: bool,
    pub s3_list: bool,
}

impl Grants {
    /// Every grant by name, as written in `grants = [...]`.
    pub const NAMES: [&str; 3] = ["sql:read", "s3:head", "s3:list"];

    /// Adds the grant named `name`.
    pub fn grant(&mut self, name: &str) -> Result<(), String> {
        match name {
            "sql:read" => self.sql_read = true,
            "s3:head" => self.s3_head = true,
            "s3:list" => self.s3_list = true,
            other => return Err(format!("unknown grant `{other}`, expected one of: {}", Self::NAMES.join(", "))),
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub deadline: Duration,
    /// Rows a granted SQL query may return.
    pub sql_rows: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 16 << 20, deadline: Duration(std::time::Duration::from_millis(100)), sql_rows: 1000 }
    }
}

/// The most memory a policy may be given; the pooling allocator reserves this per slot.
pub const MAX_POLICY_MEMORY: u64 = 256 << 20;

/// Parses `64KiB`, `16MiB`, `1GiB` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..digits].parse().map_err(|_| format!("invalid size `{text}`: expected e.g. `16MiB`"))?;
    let factor = match &text[digits..] {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("invalid size `{text}`: unknown unit `{other}`, expected B, KiB, MiB or GiB")),
    };
    Ok(number.saturating_mul(factor))
}

/// What warden watches and maintains.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetsConfig {
    pub database: DbUrl,
    /// Create the demo application schema in the target. Default: only for SQLite.
    pub demo_schema: bool,
    pub s3: Option<S3Target>,
    /// The most connections to the target database.
    pub pool: u32,
    /// More databases, by name (`[targets.databases.NAME]`): checks name the one they use.
    pub databases: Vec<NamedDatabase>,
    /// PostgreSQL: the URL policies granted `sql:read` connect with, as a role of their own
    /// (`targets::policy`); absent, `database` is used and checked the same way.
    pub policy_url: Option<String>,
    /// More buckets, by name (`[targets.buckets.NAME]`).
    pub buckets: Vec<(String, S3Target)>,
}

/// `[targets.databases.NAME]`: a database a check can name (`database = "NAME"`), with a
/// pool of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDatabase {
    pub name: String,
    pub url: DbUrl,
    pub pool: u32,
    /// As `TargetsConfig::policy_url`, for `sql:read:NAME`.
    pub policy_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    /// Explicit keys; when absent the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` apply.
    pub access_key: Option<(String, String)>,
}

/// warden's own tables.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub url: DbUrl,
    /// The most connections to the state store.
    pub pool: u32,
}

/// Where alerts go and how the dispatcher delivers them.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerts {
    pub admin: Vec<String>,
    pub from: String,
    /// `smtp://`, `smtp://…?tls=required` (STARTTLS) or `smtps://` (implicit TLS); `None`:
    /// mail is written as `.eml` files to `mail_dir`.
    pub smtp: Option<String>,
    /// A PEM file of CA certificates to trust for the SMTP server's TLS (a private relay), on
    /// top of the public roots.
    pub smtp_ca: Option<PathBuf>,
    pub cooldown: Duration,
    pub mail_dir: PathBuf,
    /// Delivery attempts before a row is marked failed.
    pub max_attempts: u32,
    /// The first retry's delay; it doubles per attempt (with jitter) up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// The base of links in mail (unsubscribe), e.g. `https://status.example.org`.
    pub public_url: String,
    pub subscribers: Option<Subscribers>,
    pub tickets: TicketsConfig,
}

/// Status notices to opted-in users of the application.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribers {
    /// Returns (user id, email) of every opted-in user, on the target database.
    pub query: PerBackend,
    /// Opts one user out; `$1` is the user id (as text).
    pub opt_out: PerBackend,
    pub secret: Secret,
    /// Notices per second; 0 means no limit.
    pub pace: u32,
}

/// The HMAC key of unsubscribe links: given inline, or a file warden creates on first start.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret::Inline(<redacted>)"),
            Secret::File(p) => write!(f, "Secret::File({})", p.display()),
        }
    }
}

/// The shortest signing secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Where tickets go.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketsConfig {
    /// POSTed JSON; `None`: each ticket is written as a JSON file to `dir`.
    pub webhook: Option<String>,
    pub timeout: Duration,
    pub dir: PathBuf,
}

/// A database URL, with relative SQLite paths resolved against the configuration's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DbUrl {
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(format!("`{text}` names no file; write e.g. `sqlite://warden-state.db`"));
            }
            let path = Path::new(path);
            let path = if path.is_absolute() { path.to_path_buf() } else { base.join(path) };
            Ok(Self::Sqlite(path))
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(Self::Postgres(text.to_owned()))
        } else {
            Err(format!(
                "unsupported database URL `{}`: expected `sqlite://FILE` or `postgres://…`",
                crate::base::text::redact(text)
            ))
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, Self::Sqlite(_))
    }

    /// For logs: never prints a password.
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite://{}", p.display()),
            Self::Postgres(url) => crate::base::text::redact(url),
        }
    }
}

/// A scheduled job.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub schedule: ScheduleSpec,
    pub timeout: Duration,
    pub enabled: bool,
    pub task: Task,
    /// Whether its snapshots count for the service's health (`/health`, the status page's
    /// overall status and uptime): `health = …`, by default every probe and no heartbeat.
    pub health: bool,
}

/// Which database a maintenance task acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbRole {
    Target,
    State,
    /// A `[targets.databases.NAME]`.
    Named(String),
}

/// SQL text for both backends, or one text that works on both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerBackend {
    pub sqlite: Option<String>,
    pub postgres: Option<String>,
}

impl PerBackend {
    pub fn for_sqlite(&self, sqlite: bool) -> Option<&str> {
        if sqlite { self.sqlite.as_deref() } else { self.postgres.as_deref() }
    }
}

#[derive(Debug, Clone)]
pub enum Task {
    Probe {
        checks: Vec<Check>,
    },
    PoolStats,
    PgActivity,
    SqlGauge {
        db: DbRole,
        metric: String,
        query: PerBackend,
    },
    Prune(Prune),
    Sql(SqlStatement),
    /// A push monitor: OK while pings arrive (`/ping/{job}` with the token) in time.
    Heartbeat(Heartbeat),
}

/// When a heartbeat job's pings are expected, how late one may be, and the secret a ping
/// must carry. The job's own schedule is the cadence its deadline is checked at.
#[derive(Clone)]
pub struct Heartbeat {
    pub expect: Expect,
    pub grace: Duration,
    pub token: String,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat").field("expect", &self.expect).field("grace", &self.grace).finish_non_exhaustive()
    }
}

/// A ping every `period`, or one by each `cron` time.
#[derive(Debug, Clone)]
pub enum Expect {
    Period(Duration),
    Cron(ScheduleSpec),
}

impl Task {
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Probe { .. } => "probe",
            Task::PoolStats => "pool-stats",
            Task::PgActivity => "pg-activity",
            Task::SqlGauge { .. } => "sql-gauge",
            Task::Prune(_) => "prune",
            Task::Sql(_) => "sql",
            Task::Heartbeat(_) => "heartbeat",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    /// The named database (`db`, `sql`) or bucket (`s3`) it checks; `None`: the default one.
    pub target: Option<String>,
    pub critical: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Db,
    S3,
    Sql {
        query: PerBackend,
    },
    Http(Box<HttpCheck>),
    /// `address` (`host:port`) accepts a connection.
    Tcp {
        address: String,
    },
    /// `address` completes a verified TLS handshake and its certificate is valid for at
    /// least `min_days` more days.
    Tls {
        address: String,
        min_days: u32,
        ca_file: Option<PathBuf>,
    },
}

/// An `http` check: the request and what its answer must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    /// Any of these; empty: any 2xx.
    pub expect_status: Vec<u16>,
    pub body_contains: Option<String>,
    /// A JSON pointer into the body and the JSON value it must equal (as JSON text).
    pub json: Option<(String, String)>,
    pub max_latency: Option<Duration>,
    pub max_redirects: u32,
    /// PEM CA certificates trusted besides the public roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Prune {
    pub db: DbRole,
    pub table: String,
    pub column: String,
    pub older_than: Duration,
    pub batch_size: u64,
    pub time_budget: Duration,
}

#[derive(Debug, Clone)]
pub struct SqlStatement {
    pub db: DbRole,
    /// Run repeatedly until it affects no rows; `{batch}` is replaced by `batch_size`.
    pub statement: PerBackend,
    pub batch_size: u64,
    pub time_budget: Duration,
}
