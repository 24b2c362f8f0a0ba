//! The checked configuration and the reader that builds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use toml::de::DeTable;

use super::duration::Duration;
use super::error::{ConfigErrors, Diagnostics};
use super::reader::{Ctx, Str, TableReader, Value};
use crate::schedule::ScheduleSpec;

/// A whole, valid `schedules.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub product: String,
    pub targets: Targets,
    pub state: StateConfig,
    pub alerts: Alerts,
    pub jobs: Vec<Job>,
    pub policies: Vec<PolicySpec>,
    /// Recurring windows during which matching alerts are silenced (as Gatus does).
    pub maintenance: Vec<Maintenance>,
    /// Which public routes are served (`[http]`); all by default.
    pub http: PublicRoutes,
}

/// The public HTTP routes, each of which can be turned off. Read at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicRoutes {
    pub status_page: bool,
    pub health: bool,
    pub metrics: bool,
    pub unsubscribe: bool,
}

impl Default for PublicRoutes {
    fn default() -> Self {
        PublicRoutes { status_page: true, health: true, metrics: true, unsubscribe: true }
    }
}

/// A recurring maintenance window: from each `cron` occurrence for `duration`, matching
/// outbox rows are recorded as silenced.
#[derive(Debug, Clone)]
pub struct Maintenance {
    pub name: String,
    pub schedule: ScheduleSpec,
    pub duration: Duration,
    pub matchers: crate::store::Matchers,
    pub comment: String,
}

impl Maintenance {
    /// Whether `now` falls in a window.
    pub fn active(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.schedule
            .latest_at_or_before(now)
            .is_some_and(|start| now < start + chrono::Duration::from_std(self.duration.std()).unwrap_or_default())
    }
}

impl Config {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
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
pub struct Targets {
    pub database: DbUrl,
    /// Create the demo application schema in the target. Default: only for SQLite.
    pub demo_schema: bool,
    pub s3: Option<S3Target>,
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
    pub tickets: Tickets,
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
pub struct Tickets {
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
            Err(format!("unsupported database URL `{}`: expected `sqlite://FILE` or `postgres://…`", redact(text)))
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, Self::Sqlite(_))
    }

    /// For logs: never prints a password.
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite://{}", p.display()),
            Self::Postgres(url) => redact(url),
        }
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
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
}

/// Which database a maintenance task acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbRole {
    Target,
    State,
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
    Probe { checks: Vec<Check> },
    PoolStats,
    PgActivity,
    SqlGauge { db: DbRole, metric: String, query: PerBackend },
    Prune(Prune),
    Sql(SqlStatement),
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
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    pub critical: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Db,
    S3,
    Sql { query: PerBackend },
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

pub const TASK_KINDS: &[&str] = &["probe", "pool-stats", "pg-activity", "sql-gauge", "prune", "sql"];
const COMMON_JOB_KEYS: &[&str] =
    &["name", "every", "cron", "tz", "jitter", "timeout", "enabled", "task", "description"];

fn task_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "probe" => &["checks"],
        "sql-gauge" => &["db", "metric", "query"],
        "prune" => &["db", "table", "column", "older_than", "batch_size", "time_budget"],
        "sql" => &["db", "statement", "batch_size", "time_budget"],
        _ => &[],
    }
}

const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_BATCH: u64 = 1000;
const DEFAULT_BUDGET: Duration = Duration::from_secs(30);
const MAX_BATCH: u64 = 1_000_000;

pub(super) fn read(src: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx { diag: Diagnostics::new(src, path), env };
    let (root, syntax) = DeTable::parse_recoverable(src);
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        ctx.diag.error(span, "", e.message().trim().to_owned());
    }
    if !ctx.diag.is_empty() {
        return Err(ctx.diag.into_errors());
    }
    let base = super::base_dir(path);
    let root_value: Value<'_> = toml::Spanned::new(root.span(), toml::de::DeValue::Table(root.into_inner()));
    let config = read_root(&root_value, &base, path, &mut ctx);
    match config {
        Some(config) if ctx.diag.is_empty() => Ok(config),
        _ => Err(ctx.diag.into_errors()),
    }
}

fn read_root(root: &Value<'_>, base: &Path, path: &Path, ctx: &mut Ctx<'_>) -> Option<Config> {
    let mut t = TableReader::new(root, "", ctx)?;
    match t.get("version").map(|v| (v, v.get_ref().as_integer().map(|i| i.as_str().to_owned()))) {
        Some((_, Some(v))) if v == "1" => {}
        Some((value, _)) => {
            ctx.diag.error(value.span(), "version", "unsupported version; this warden reads `version = 1`")
        }
        None => ctx.diag.error(0..0, "version", "missing required field `version` (write `version = 1`)"),
    }
    let product = t.string(ctx, "product").map_or_else(|| "warden".to_owned(), |s| s.value);
    let targets = t.get("targets").and_then(|v| read_targets(v, base, ctx));
    let state = match t.get("state") {
        Some(v) => read_state(v, base, ctx),
        None => Some(StateConfig { url: DbUrl::Sqlite(base.join("warden-state.db")) }),
    };
    let alerts = match t.get("alerts") {
        Some(v) => read_alerts(v, base, ctx),
        None => Some(default_alerts(base)),
    };
    let mut jobs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    // Every job name written, valid job or not, so a policy listening to a job with a
    // mistake in it is not also told that the job does not exist.
    let mut declared: Vec<String> = Vec::new();
    if let Some(items) = t.array(ctx, "job") {
        declared = items
            .iter()
            .filter_map(|item| item.get_ref().as_table()?.get("name")?.get_ref().as_str().map(str::to_owned))
            .collect();
        for (i, item) in items.iter().enumerate() {
            if let Some((job, name_span)) = read_job(item, i, ctx) {
                let line = super::error::line_col(ctx_src(ctx), name_span.start).0;
                if let Some(first) = seen.get(&job.name) {
                    let msg = format!("duplicate job name `{}` (first defined on line {first})", job.name);
                    ctx.diag.error(name_span, format!("job \"{}\".name", job.name), msg);
                    continue;
                }
                seen.insert(job.name.clone(), line);
                jobs.push(job);
            }
        }
    }
    let mut policies: Vec<PolicySpec> = Vec::new();
    if let Some(items) = t.array(ctx, "policy") {
        for (i, item) in items.iter().enumerate() {
            if let Some((policy, span)) = read_policy(item, i, base, &product, ctx) {
                if policies.iter().any(|p| p.name == policy.name) {
                    let msg = format!("duplicate policy name `{}`", policy.name);
                    ctx.diag.error(span, format!("policy \"{}\".name", policy.name), msg);
                    continue;
                }
                policies.push(policy);
            }
        }
    }
    for p in &policies {
        for job in &p.on {
            if !seen.contains_key(job) && !declared.contains(job) {
                let span = policy_on_span(root, &p.name).unwrap_or_default();
                let msg = format!(
                    "no job named `{job}` (jobs: {})",
                    jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ")
                );
                ctx.diag.error(span, format!("policy \"{}\".on", p.name), msg);
            }
        }
    }
    let mut maintenance = Vec::new();
    if let Some(items) = t.array(ctx, "maintenance") {
        for (i, item) in items.iter().enumerate() {
            if let Some(window) = read_maintenance(item, i, ctx) {
                maintenance.push(window);
            }
        }
    }
    let mut http = PublicRoutes::default();
    if let Some(v) = t.get("http")
        && let Some(mut h) = TableReader::new(v, "http", ctx)
    {
        for (key, field) in [
            ("status_page", &mut http.status_page),
            ("health", &mut http.health),
            ("metrics", &mut http.metrics),
            ("unsubscribe", &mut http.unsubscribe),
        ] {
            if let Some(on) = h.bool(ctx, key) {
                *field = on;
            }
        }
        h.finish(ctx, &["status_page", "health", "metrics", "unsubscribe"]);
    }
    t.finish(ctx, &["version", "product", "targets", "state", "alerts", "job", "policy", "maintenance", "http"]);
    let targets = match targets {
        Some(t) => t,
        None if root.get_ref().as_table().is_some_and(|t| t.get("targets").is_some()) => return None,
        None => Targets { database: DbUrl::Sqlite(base.join("demo-app.db")), demo_schema: true, s3: None },
    };
    Some(Config {
        path: path.to_path_buf(),
        product,
        targets,
        state: state?,
        alerts: alerts?,
        jobs,
        policies,
        maintenance,
        http,
    })
}

fn ctx_src<'s>(ctx: &Ctx<'s>) -> &'s str {
    ctx.diag.src()
}

fn read_targets(value: &Value<'_>, base: &Path, ctx: &mut Ctx<'_>) -> Option<Targets> {
    let mut t = TableReader::new(value, "targets", ctx)?;
    let database = match t.string(ctx, "database") {
        Some(s) => parse_url(&s, "targets.database", base, ctx),
        None => Some(DbUrl::Sqlite(base.join("demo-app.db"))),
    };
    let demo_schema = t.bool(ctx, "demo_schema");
    let s3 = match t.get("s3") {
        Some(v) => read_s3(v, ctx),
        None => Some(None),
    };
    t.finish(ctx, &["database", "demo_schema", "s3"]);
    let database = database?;
    let demo_schema = demo_schema.unwrap_or(database.is_sqlite());
    Some(Targets { database, demo_schema, s3: s3? })
}

fn read_s3(value: &Value<'_>, ctx: &mut Ctx<'_>) -> Option<Option<S3Target>> {
    let mut t = TableReader::new(value, "targets.s3", ctx)?;
    let bucket = t.required_string(ctx, "bucket");
    let endpoint = t.string(ctx, "endpoint").map(|s| s.value).filter(|s| !s.is_empty());
    let region = t.string(ctx, "region").map_or_else(|| "us-east-1".to_owned(), |s| s.value);
    let path_style = t.bool(ctx, "path_style").unwrap_or(true);
    let key_id = t.string(ctx, "access_key_id").filter(|s| !s.value.is_empty());
    let secret = t.string(ctx, "secret_access_key").filter(|s| !s.value.is_empty());
    let access_key = match (key_id, secret) {
        (Some(id), Some(secret)) => Some((id.value, secret.value)),
        (None, None) => None,
        (Some(s), None) | (None, Some(s)) => {
            let msg = "give both `access_key_id` and `secret_access_key`, or neither";
            ctx.diag.error(s.span, "targets.s3", msg);
            None
        }
    };
    t.finish(ctx, &["bucket", "endpoint", "region", "path_style", "access_key_id", "secret_access_key"]);
    let bucket = bucket?.value;
    // An empty bucket (e.g. `${S3_BUCKET:-}`) means S3 is not configured, as in the original monitor.
    if bucket.is_empty() {
        return Some(None);
    }
    Some(Some(S3Target { bucket, endpoint, region, path_style, access_key }))
}

fn read_state(value: &Value<'_>, base: &Path, ctx: &mut Ctx<'_>) -> Option<StateConfig> {
    let mut t = TableReader::new(value, "state", ctx)?;
    let url = match t.string(ctx, "url") {
        Some(s) => parse_url(&s, "state.url", base, ctx),
        None => Some(DbUrl::Sqlite(base.join("warden-state.db"))),
    };
    t.finish(ctx, &["url"]);
    Some(StateConfig { url: url? })
}

fn default_alerts(base: &Path) -> Alerts {
    Alerts {
        admin: Vec::new(),
        from: "warden@localhost".into(),
        smtp: None,
        smtp_ca: None,
        cooldown: Duration::from_secs(300),
        mail_dir: base.join("mail"),
        max_attempts: 10,
        backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(15 * 60),
        public_url: "http://127.0.0.1:8080".into(),
        subscribers: None,
        tickets: Tickets { webhook: None, timeout: Duration::from_secs(10), dir: base.join("tickets") },
    }
}

fn read_alerts(value: &Value<'_>, base: &Path, ctx: &mut Ctx<'_>) -> Option<Alerts> {
    let mut t = TableReader::new(value, "alerts", ctx)?;
    let mut alerts = default_alerts(base);
    if let Some(admin) = t.strings(ctx, "admin") {
        for a in &admin {
            if a.value.parse::<lettre::Address>().is_err() {
                ctx.diag.error(a.span.clone(), "alerts.admin", format!("`{}` is not an email address", a.value));
            }
        }
        alerts.admin = admin.into_iter().map(|s| s.value).filter(|s| !s.is_empty()).collect();
    }
    if let Some(from) = t.string(ctx, "from") {
        if from.value.parse::<lettre::message::Mailbox>().is_err() {
            let msg = format!(
                "`{}` is not a mailbox (write `warden@example.org` or `Warden <warden@example.org>`)",
                from.value
            );
            ctx.diag.error(from.span.clone(), "alerts.from", msg);
        }
        alerts.from = from.value;
    }
    if let Some(smtp) = t.string(ctx, "smtp").filter(|s| !s.value.is_empty()) {
        match check_smtp_url(&smtp.value) {
            Ok(()) => alerts.smtp = Some(smtp.value),
            Err(msg) => ctx.diag.error(smtp.span, "alerts.smtp", msg),
        }
    }
    if let Some(ca) = t.string(ctx, "smtp_ca").filter(|s| !s.value.is_empty()) {
        // Read by `warden check` and at start, not here: this module does no IO.
        alerts.smtp_ca = Some(base.join(&ca.value));
    }
    if let Some(c) = t.duration(ctx, "cooldown") {
        alerts.cooldown = c;
    }
    if let Some(dir) = t.string(ctx, "mail_dir") {
        alerts.mail_dir = base.join(dir.value);
    }
    if let Some(n) = t.count(ctx, "max_attempts", 1000) {
        alerts.max_attempts = u32::try_from(n.max(1)).unwrap_or(1000);
    }
    if let Some(d) = t.duration(ctx, "backoff") {
        alerts.backoff = d;
    }
    if let Some(d) = t.duration(ctx, "max_backoff") {
        alerts.max_backoff = d;
    }
    if let Some(url) = t.string(ctx, "public_url") {
        if !(url.value.starts_with("http://") || url.value.starts_with("https://")) {
            ctx.diag.error(url.span, "alerts.public_url", format!("`{}` is not an http(s) URL", url.value));
        } else {
            alerts.public_url = url.value.trim_end_matches('/').to_owned();
        }
    }
    alerts.subscribers = match t.get("subscribers") {
        Some(v) => read_subscribers(v, base, ctx),
        None => None,
    };
    if let Some(v) = t.get("tickets") {
        read_tickets(v, base, &mut alerts.tickets, ctx);
    }
    t.finish(
        ctx,
        &[
            "admin",
            "from",
            "smtp",
            "smtp_ca",
            "cooldown",
            "mail_dir",
            "max_attempts",
            "backoff",
            "max_backoff",
            "public_url",
            "subscribers",
            "tickets",
        ],
    );
    Some(alerts)
}

/// Checks an SMTP URL the way the transport will read it, without connecting.
fn check_smtp_url(url: &str) -> Result<(), String> {
    let scheme = url.split("://").next().unwrap_or_default();
    if !matches!(scheme, "smtp" | "smtps") || !url.contains("://") {
        let url = crate::delivery::mail::redact(url);
        return Err(format!(
            "`{url}` is not an SMTP URL: write smtp://host:25, smtp://user:pass@host:587?tls=required (STARTTLS) \
             or smtps://user:pass@host:465 (implicit TLS)"
        ));
    }
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
        .map(|_| ())
        .map_err(|e| format!("invalid SMTP URL `{}`: {e}", crate::delivery::mail::redact(url)))
}

fn read_subscribers(value: &Value<'_>, base: &Path, ctx: &mut Ctx<'_>) -> Option<Subscribers> {
    let mut t = TableReader::new(value, "alerts.subscribers", ctx)?;
    let enabled = t.bool(ctx, "enabled").unwrap_or(true);
    let query = read_per_backend(&mut t, ctx, "query", true);
    let opt_out = read_per_backend(&mut t, ctx, "opt_out", true);
    let inline = t.string(ctx, "signing_secret").filter(|s| !s.value.is_empty());
    let file = t.string(ctx, "signing_secret_file").filter(|s| !s.value.is_empty());
    let pace = t.count_from(ctx, "pace", 0, 10_000).map_or(10, |n| u32::try_from(n).unwrap_or(10_000));
    let span = t.span.clone();
    t.finish(ctx, &["enabled", "query", "opt_out", "signing_secret", "signing_secret_file", "pace"]);
    let secret = match (inline, file) {
        (Some(s), None) if s.value.len() < MIN_SECRET_LEN => {
            let msg = format!("too short: at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)");
            ctx.diag.error(s.span, "alerts.subscribers.signing_secret", msg);
            None
        }
        (Some(s), None) => Some(Secret::Inline(s.value)),
        (None, Some(f)) => Some(Secret::File(base.join(f.value))),
        (Some(s), Some(_)) => {
            let msg = "give `signing_secret` or `signing_secret_file`, not both";
            ctx.diag.error(s.span, "alerts.subscribers.signing_secret", msg);
            None
        }
        (None, None) if enabled => {
            let msg = "missing: subscribers are enabled, so unsubscribe links must be signed; set \
                       `signing_secret` (at least 16 characters) or `signing_secret_file` (created on first start)";
            ctx.diag.error(span, "alerts.subscribers.signing_secret", msg);
            None
        }
        (None, None) => None,
    };
    if !enabled {
        return None;
    }
    Some(Subscribers { query: query?, opt_out: opt_out?, secret: secret?, pace })
}

fn read_tickets(value: &Value<'_>, base: &Path, tickets: &mut Tickets, ctx: &mut Ctx<'_>) {
    let Some(mut t) = TableReader::new(value, "alerts.tickets", ctx) else { return };
    if let Some(url) = t.string(ctx, "webhook").filter(|s| !s.value.is_empty()) {
        match url.value.parse::<hyper::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
                tickets.webhook = Some(url.value)
            }
            _ => ctx.diag.error(url.span, "alerts.tickets.webhook", format!("`{}` is not an http(s) URL", url.value)),
        }
    }
    if let Some(d) = t.duration(ctx, "timeout") {
        tickets.timeout = d;
    }
    if let Some(dir) = t.string(ctx, "dir") {
        tickets.dir = base.join(dir.value);
    }
    t.finish(ctx, &["webhook", "timeout", "dir"]);
}

fn parse_url(s: &Str, field: &str, base: &Path, ctx: &mut Ctx<'_>) -> Option<DbUrl> {
    match DbUrl::parse(&s.value, base) {
        Ok(url) => Some(url),
        Err(message) => {
            ctx.diag.error(s.span.clone(), field, message);
            None
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// `table` or `schema.table`, each part a plain SQL identifier.
pub fn valid_identifier(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            let mut chars = p.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn read_maintenance(value: &Value<'_>, index: usize, ctx: &mut Ctx<'_>) -> Option<Maintenance> {
    let mut t = TableReader::new(value, format!("maintenance #{}", index + 1), ctx)?;
    let name = t.required_string(ctx, "name");
    if let Some(n) = &name {
        t.scope = format!("maintenance \"{}\"", n.value);
    }
    let tz = match t.string(ctx, "tz") {
        Some(s) => match s.value.parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                let msg = format!("unknown time zone `{}`: use an IANA name such as `Europe/Berlin` or `UTC`", s.value);
                ctx.diag.error(s.span, t.field("tz"), msg);
                Tz::UTC
            }
        },
        None => Tz::UTC,
    };
    if !t.has("cron") {
        ctx.diag.error(t.span.clone(), t.field("cron"), "missing required field `cron` (when each window starts)");
    }
    let schedule = t.parsed(ctx, "cron", |text| ScheduleSpec::cron(text, tz, Duration::default()));
    if !t.has("duration") {
        ctx.diag.error(t.span.clone(), t.field("duration"), "missing required field `duration` (e.g. \"2h\")");
    }
    let duration = t.duration(ctx, "duration");
    let mut matchers = crate::store::Matchers {
        job: t.string(ctx, "job").map(|s| s.value),
        policy: t.string(ctx, "policy").map(|s| s.value),
        kind: None,
    };
    if let Some(kind) = t.string(ctx, "kind") {
        if crate::store::OUTBOX_KINDS.contains(&kind.value.as_str()) {
            matchers.kind = Some(kind.value);
        } else {
            let msg = format!("unknown kind `{}`: email, subscribers, notice or ticket", kind.value);
            ctx.diag.error(kind.span, t.field("kind"), msg);
        }
    }
    let comment = t.string(ctx, "comment").map(|s| s.value).unwrap_or_default();
    t.finish(ctx, &["name", "cron", "tz", "duration", "job", "policy", "kind", "comment"]);
    Some(Maintenance { name: name?.value, schedule: schedule?, duration: duration?, matchers, comment })
}

fn read_job(value: &Value<'_>, index: usize, ctx: &mut Ctx<'_>) -> Option<(Job, std::ops::Range<usize>)> {
    let mut t = TableReader::new(value, format!("job #{}", index + 1), ctx)?;
    let name = t.required_string(ctx, "name");
    if let Some(n) = &name {
        if valid_name(&n.value) {
            t.scope = format!("job \"{}\"", n.value);
        } else {
            let msg = format!("invalid job name `{}`: use lowercase letters, digits, `-` and `_`", n.value);
            ctx.diag.error(n.span.clone(), t.field("name"), msg);
        }
    }
    let jitter = t.duration(ctx, "jitter").unwrap_or_default();
    let tz = match t.string(ctx, "tz") {
        Some(s) => match s.value.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                let msg = format!("unknown time zone `{}`: use an IANA name such as `Europe/Berlin` or `UTC`", s.value);
                ctx.diag.error(s.span, t.field("tz"), msg);
                None
            }
        },
        None => Some(Tz::UTC),
    };
    let schedule = match (t.has("every"), t.has("cron")) {
        (true, true) => {
            let span = t.get("cron").map(|v| v.span()).unwrap_or(t.span.clone());
            t.get("every");
            ctx.diag.error(span, t.field("cron"), "set either `every` or `cron`, not both");
            None
        }
        (false, false) => {
            ctx.diag.error(
                t.span.clone(),
                t.field("every"),
                "missing schedule: set `every = \"30s\"` or `cron = \"0 15 3 * * *\"`",
            );
            None
        }
        (true, false) => {
            if t.has("tz") {
                let span = t.get("tz").map(|v| v.span()).unwrap_or_default();
                ctx.diag.error(span, t.field("tz"), "`tz` applies to `cron` schedules only");
            }
            t.duration(ctx, "every").and_then(|p| match ScheduleSpec::every(p, jitter) {
                Ok(s) => Some(s),
                Err(msg) => {
                    let span = t.get("every").map(|v| v.span()).unwrap_or_default();
                    ctx.diag.error(span, t.field("every"), msg);
                    None
                }
            })
        }
        (false, true) => {
            let tz = tz.unwrap_or(Tz::UTC);
            t.parsed(ctx, "cron", |text| ScheduleSpec::cron(text, tz, jitter))
        }
    };
    let timeout = t.duration(ctx, "timeout").unwrap_or(DEFAULT_JOB_TIMEOUT);
    if timeout.is_zero() {
        let span = t.get("timeout").map(|v| v.span()).unwrap_or_default();
        ctx.diag.error(span, t.field("timeout"), "timeout must be longer than zero");
    }
    let enabled = t.bool(ctx, "enabled").unwrap_or(true);
    let _description = t.string(ctx, "description");
    let kind = t.required_string(ctx, "task");
    let task = match &kind {
        Some(k) if TASK_KINDS.contains(&k.value.as_str()) => read_task(&k.value, &mut t, ctx),
        Some(k) => {
            let msg = format!("unknown task kind `{}`, expected one of: {}", k.value, TASK_KINDS.join(", "));
            ctx.diag.error(k.span.clone(), t.field("task"), msg);
            None
        }
        None => None,
    };
    let kind_name = kind.as_ref().map(|k| k.value.clone()).unwrap_or_default();
    let mut known: Vec<&str> = COMMON_JOB_KEYS.to_vec();
    known.extend_from_slice(task_keys(&kind_name));
    let valid_kind = TASK_KINDS.contains(&kind_name.as_str());
    t.finish_with(ctx, &known, &|key| {
        if !valid_kind {
            // The task is already reported; its own keys cannot be judged.
            return TASK_KINDS.iter().any(|k| task_keys(k).contains(&key)).then(String::new);
        }
        let owners: Vec<&str> = TASK_KINDS.iter().copied().filter(|k| task_keys(k).contains(&key)).collect();
        (!owners.is_empty()).then(|| {
            format!("field `{key}` does not apply to task `{kind_name}` (it belongs to: {})", owners.join(", "))
        })
    });
    let name = name?;
    let job = Job { name: name.value, schedule: schedule?, timeout, enabled, task: task? };
    Some((job, name.span))
}

fn read_db_role(t: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>) -> Option<DbRole> {
    match t.string(ctx, "db") {
        None => Some(DbRole::Target),
        Some(s) => match s.value.as_str() {
            "target" => Some(DbRole::Target),
            "state" => Some(DbRole::State),
            other => {
                let msg = format!("unknown database `{other}`, expected `target` or `state`");
                ctx.diag.error(s.span, t.field("db"), msg);
                None
            }
        },
    }
}

/// A string, or `{ sqlite = "...", postgres = "..." }`.
fn read_per_backend(t: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>, key: &str, required: bool) -> Option<PerBackend> {
    let Some(value) = t.get(key) else {
        if required {
            ctx.diag.error(t.span.clone(), t.field(key), format!("missing required field `{key}`"));
        }
        return None;
    };
    if let Some(text) = value.get_ref().as_str() {
        return match super::env::expand(text, ctx.env) {
            Ok(text) => Some(PerBackend { sqlite: Some(text.clone()), postgres: Some(text) }),
            Err(msg) => {
                ctx.diag.error(value.span(), t.field(key), msg);
                None
            }
        };
    }
    let mut inner = TableReader::new(value, t.field(key), ctx)?;
    let sqlite = inner.string(ctx, "sqlite").map(|s| s.value);
    let postgres = inner.string(ctx, "postgres").map(|s| s.value);
    inner.finish(ctx, &["sqlite", "postgres"]);
    if sqlite.is_none() && postgres.is_none() {
        ctx.diag.error(value.span(), t.field(key), "give SQL for `sqlite`, `postgres` or both");
        return None;
    }
    Some(PerBackend { sqlite, postgres })
}

fn read_task(kind: &str, t: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>) -> Option<Task> {
    match kind {
        "probe" => read_checks(t, ctx).map(|checks| Task::Probe { checks }),
        "pool-stats" => Some(Task::PoolStats),
        "pg-activity" => Some(Task::PgActivity),
        "sql-gauge" => {
            let db = read_db_role(t, ctx);
            let metric = t.required_string(ctx, "metric");
            if let Some(m) = metric.as_ref().filter(|m| !valid_identifier(&m.value) || m.value.contains('.')) {
                let msg = format!("invalid metric name `{}`: use letters, digits and `_`", m.value);
                ctx.diag.error(m.span.clone(), t.field("metric"), msg);
            }
            let query = read_per_backend(t, ctx, "query", true);
            Some(Task::SqlGauge { db: db?, metric: metric?.value, query: query? })
        }
        "prune" => {
            let db = read_db_role(t, ctx);
            let ident = |t: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>, key: &str| {
                let s = t.required_string(ctx, key)?;
                if valid_identifier(&s.value) {
                    Some(s.value)
                } else {
                    let msg = format!("invalid SQL identifier `{}`: expected `name` or `schema.name`", s.value);
                    ctx.diag.error(s.span, t.field(key), msg);
                    None
                }
            };
            let table = ident(t, ctx, "table");
            let column = ident(t, ctx, "column");
            let older_than = t.duration(ctx, "older_than");
            if older_than.is_none() && !t.has("older_than") {
                ctx.diag.error(t.span.clone(), t.field("older_than"), "missing required field `older_than`");
            }
            let batch_size = t.count(ctx, "batch_size", MAX_BATCH).unwrap_or(DEFAULT_BATCH);
            let time_budget = t.duration(ctx, "time_budget").unwrap_or(DEFAULT_BUDGET);
            Some(Task::Prune(Prune {
                db: db?,
                table: table?,
                column: column?,
                older_than: older_than?,
                batch_size,
                time_budget,
            }))
        }
        "sql" => {
            let db = read_db_role(t, ctx);
            let statement = read_per_backend(t, ctx, "statement", true);
            let batch_size = t.count(ctx, "batch_size", MAX_BATCH).unwrap_or(DEFAULT_BATCH);
            let time_budget = t.duration(ctx, "time_budget").unwrap_or(DEFAULT_BUDGET);
            Some(Task::Sql(SqlStatement { db: db?, statement: statement?, batch_size, time_budget }))
        }
        _ => None,
    }
}

fn read_checks(t: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>) -> Option<Vec<Check>> {
    if !t.has("checks") {
        ctx.diag.error(t.span.clone(), t.field("checks"), "missing required field `checks`");
        return None;
    }
    let items = t.array(ctx, "checks")?;
    let mut checks: Vec<Check> = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let Some(mut c) = TableReader::new(item, format!("{}[{i}]", t.field("checks")), ctx) else {
            ok = false;
            continue;
        };
        let name = c.required_string(ctx, "name");
        let kind = c.required_string(ctx, "kind");
        let kind = match kind.as_ref().map(|k| k.value.as_str()) {
            Some("db") => Some(CheckKind::Db),
            Some("s3") => Some(CheckKind::S3),
            Some("sql") => read_per_backend(&mut c, ctx, "query", true).map(|query| CheckKind::Sql { query }),
            Some(other) => {
                let span = kind.as_ref().map(|k| k.span.clone()).unwrap_or_default();
                let msg = format!("unknown check kind `{other}`, expected one of: db, s3, sql");
                ctx.diag.error(span, c.field("kind"), msg);
                None
            }
            None => None,
        };
        let critical = c.bool(ctx, "critical");
        let timeout = c.duration(ctx, "timeout").unwrap_or(DEFAULT_CHECK_TIMEOUT);
        c.finish(ctx, &["name", "kind", "query", "critical", "timeout"]);
        match (name, kind) {
            (Some(name), Some(kind)) => {
                if checks.iter().any(|c| c.name == name.value) {
                    let msg = format!("duplicate check name `{}`", name.value);
                    ctx.diag.error(name.span, t.field("checks"), msg);
                    ok = false;
                    continue;
                }
                let critical = critical.unwrap_or(kind == CheckKind::Db);
                checks.push(Check { name: name.value, kind, critical, timeout });
            }
            _ => ok = false,
        }
    }
    if checks.is_empty() && ok {
        ctx.diag.error(t.span.clone(), t.field("checks"), "a probe needs at least one check");
        return None;
    }
    ok.then_some(checks)
}

/// The span of a policy's `on` array, for errors found after it was read.
fn policy_on_span(root: &Value<'_>, name: &str) -> Option<std::ops::Range<usize>> {
    let items = root.get_ref().as_table()?.get("policy")?.get_ref().as_array()?;
    items.iter().find_map(|item| {
        let t = item.get_ref().as_table()?;
        (t.get("name")?.get_ref().as_str()? == name).then(|| t.get("on").map(|v| v.span()))?
    })
}

fn read_policy(
    value: &Value<'_>,
    index: usize,
    base: &Path,
    product: &str,
    ctx: &mut Ctx<'_>,
) -> Option<(PolicySpec, std::ops::Range<usize>)> {
    let mut t = TableReader::new(value, format!("policy #{}", index + 1), ctx)?;
    let name = t.required_string(ctx, "name");
    if let Some(n) = &name {
        if valid_name(&n.value) {
            t.scope = format!("policy \"{}\"", n.value);
        } else {
            let msg = format!("invalid policy name `{}`: use lowercase letters, digits, `-` and `_`", n.value);
            ctx.diag.error(n.span.clone(), t.field("name"), msg);
        }
    }
    let component = t.required_string(ctx, "component").map(|c| base.join(c.value));
    let on: Vec<String> = t.strings(ctx, "on").unwrap_or_default().into_iter().map(|s| s.value).collect();
    if on.is_empty() {
        ctx.diag.error(
            t.span.clone(),
            t.field("on"),
            "list the jobs whose events this policy receives, e.g. `on = [\"health-probe\"]`",
        );
    }
    let mut config = Vec::new();
    if let Some(table) = t.get("config")
        && let Some(mut c) = TableReader::new(table, t.field("config"), ctx)
    {
        let keys: Vec<String> = table
            .get_ref()
            .as_table()
            .map(|m| m.iter().map(|(k, _)| k.get_ref().to_string()).collect())
            .unwrap_or_default();
        for key in &keys {
            let Some(v) = c.get(key) else { continue };
            let text = match v.get_ref() {
                toml::de::DeValue::String(s) => super::env::expand(s, ctx.env).map_err(|e| (v.span(), e)),
                toml::de::DeValue::Integer(i) => Ok(i.as_str().replace('_', "")),
                toml::de::DeValue::Float(f) => Ok(f.as_str().replace('_', "")),
                toml::de::DeValue::Boolean(b) => Ok(b.to_string()),
                other => Err((v.span(), format!("expected a string, number or boolean, found {}", other.type_str()))),
            };
            match text {
                Ok(text) => config.push((key.clone(), text)),
                Err((span, msg)) => ctx.diag.error(span, c.field(key), msg),
            }
        }
        c.finish(ctx, &[]);
    }
    if !config.iter().any(|(k, _)| k == "product") {
        config.push(("product".into(), product.to_owned()));
    }
    let mut grants = Grants::default();
    if let Some(items) = t.strings(ctx, "grants") {
        for g in items {
            match g.value.as_str() {
                "sql:read" => grants.sql_read = true,
                "s3:head" => grants.s3_head = true,
                "s3:list" => grants.s3_list = true,
                other => {
                    let msg = format!("unknown grant `{other}`, expected one of: sql:read, s3:head, s3:list");
                    ctx.diag.error(g.span, t.field("grants"), msg);
                }
            }
        }
    }
    let mut limits = Limits::default();
    if let Some(v) = t.get("limits")
        && let Some(mut l) = TableReader::new(v, t.field("limits"), ctx)
    {
        if let Some(mem) = l.string(ctx, "memory") {
            match parse_size(&mem.value) {
                Ok(n) if (64 << 10..=MAX_POLICY_MEMORY).contains(&n) => limits.memory_bytes = n,
                Ok(_) => ctx.diag.error(mem.span, l.field("memory"), "memory must be between 64KiB and 256MiB"),
                Err(e) => ctx.diag.error(mem.span, l.field("memory"), e),
            }
        }
        if let Some(d) = l.duration(ctx, "deadline") {
            if d.is_zero() || d.std() > std::time::Duration::from_secs(60) {
                let span = l.get("deadline").map(|v| v.span()).unwrap_or_default();
                ctx.diag.error(span, l.field("deadline"), "deadline must be between 1ms and 60s");
            } else {
                limits.deadline = d;
            }
        }
        if let Some(rows) = l.count(ctx, "sql_rows", 100_000) {
            limits.sql_rows = rows as u32;
        }
        l.finish(ctx, &["memory", "deadline", "sql_rows"]);
    }
    let quarantine_after = t.count(ctx, "quarantine_after", 1000).unwrap_or(5) as u32;
    let enabled = t.bool(ctx, "enabled").unwrap_or(true);
    t.finish(ctx, &["name", "component", "on", "config", "grants", "limits", "quarantine_after", "enabled"]);
    let name = name?;
    let spec =
        PolicySpec { name: name.value, component: component?, on, config, grants, limits, quarantine_after, enabled };
    Some((spec, name.span))
}
