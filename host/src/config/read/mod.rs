//! The reader: builds a `Config` from the TOML tree, collecting every problem with its
//! place (`file:line:column: field: message`) instead of stopping at the first. The root,
//! targets, state, maintenance windows and policies here; `alerts.rs` and `jobs.rs` beside.

mod alerts;
mod jobs;
mod receivers;

use std::collections::HashMap;
use std::path::Path;

use chrono_tz::Tz;

use super::error::{ConfigErrors, Diagnostics};
use super::model::*;
use super::table::{Ctx, Str, TableReader, Value};
use crate::base::Duration;
use crate::schedule::ScheduleSpec;

use alerts::{default_alerts, read_alerts};
use jobs::read_job;

pub(super) fn config(src: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx { diag: Diagnostics::new(src, path), env };
    // Each job is read as its piece of the file is parsed, and its tree dropped then: the
    // tree of 100,000 jobs is about 200 MB.
    let mut jobs = Jobs::default();
    let (root, syntax, pieces) = super::document::stream(src, &mut |restart, item| {
        if restart {
            jobs = Jobs::default();
            ctx.diag.clear();
        }
        if let Some(item) = item {
            jobs.read(&item, &mut ctx);
        }
    });
    if !syntax.is_empty() {
        ctx.diag.clear();
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            ctx.diag.error(span, "", e.message().trim().to_owned());
        }
        return Err(ctx.diag.into_errors());
    }
    let base = super::base_dir(path);
    let root_value: Value<'_> = toml::Spanned::new(root.span(), toml::de::DeValue::Table(root.into_inner()));
    let config = read_root(&root_value, jobs, &pieces, &base, path, &mut ctx);
    match config {
        Some(config) if ctx.diag.is_empty() => Ok(config),
        _ => Err(ctx.diag.into_errors()),
    }
}

/// The jobs read so far, in order.
#[derive(Default)]
struct Jobs {
    jobs: Vec<std::sync::Arc<Job>>,
    /// Where each valid job's name is written.
    seen: HashMap<String, usize>,
    /// Every job name written, valid job or not, so a policy listening to a job with a
    /// mistake in it is not also told that the job does not exist.
    declared: std::collections::HashSet<String>,
    /// `[[job]]` tables so far.
    items: usize,
}

impl Jobs {
    fn read(&mut self, item: &Value<'_>, ctx: &mut Ctx<'_>) {
        let index = self.items;
        self.items += 1;
        if let Some(name) = item.get_ref().as_table().and_then(|t| t.get("name")?.get_ref().as_str()) {
            self.declared.insert(name.to_owned());
        }
        let Some((job, name_span)) = read_job(item, index, ctx) else { return };
        // The line is counted only for a duplicate: counting it for every job would scan
        // the file once per job (100,000 jobs, minutes).
        if let Some(first) = self.seen.get(&job.name) {
            let first = super::error::line_col(ctx_src(ctx), *first).0;
            let msg = format!("duplicate job name `{}` (first defined on line {first})", job.name);
            ctx.diag.error(name_span, format!("job \"{}\".name", job.name), msg);
            return;
        }
        self.seen.insert(job.name.clone(), name_span.start);
        self.jobs.push(std::sync::Arc::new(job));
    }
}

/// A job's `[[job]]` table again, for a message about one of its fields found after the
/// jobs were read (and their trees dropped): its piece of the file is parsed once more.
struct JobItems<'a> {
    src: &'a str,
    pieces: &'a [std::ops::Range<usize>],
    at: &'a HashMap<String, usize>,
}

impl<'a> JobItems<'a> {
    fn get(&self, name: &str) -> Option<toml::de::DeTable<'a>> {
        let at = *self.at.get(name)?;
        let piece = self.pieces.iter().find(|p| p.contains(&at))?.clone();
        super::document::job_in(self.src, piece, name)
    }
}

fn read_root(
    root: &Value<'_>,
    read: Jobs,
    pieces: &[std::ops::Range<usize>],
    base: &Path,
    path: &Path,
    ctx: &mut Ctx<'_>,
) -> Option<Config> {
    let mut t = TableReader::new(root, "", ctx)?;
    match t.get("version").map(|v| (v, v.get_ref().as_integer().map(|i| i.as_str().to_owned()))) {
        Some((_, Some(v))) if v == "1" => {}
        Some((value, _)) => {
            ctx.diag.error(value.span(), "version", "unsupported version; this warden reads `version = 1`")
        }
        None => ctx.diag.error(0..0, "version", "missing required field `version` (write `version = 1`)"),
    }
    let product = t.string(ctx, "product").map_or_else(|| "warden".to_owned(), |s| s.value);
    let max_running = t.count_from(ctx, "max_running", 1, 100_000).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let targets = t.get("targets").and_then(|v| read_targets(v, base, ctx));
    let state = match t.get("state") {
        Some(v) => read_state(v, base, ctx),
        None => Some(StateConfig { url: DbUrl::Sqlite(base.join("warden-state.db")), pool: DEFAULT_POOL }),
    };
    let alerts = match t.get("alerts") {
        Some(v) => read_alerts(v, base, ctx),
        None => Some(default_alerts(base)),
    };
    // The jobs were read as the file was parsed; `job` is there to be an array of tables.
    t.array(ctx, "job");
    let Jobs { jobs, seen, declared, .. } = read;
    let items = JobItems { src: ctx_src(ctx), pieces, at: &seen };
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
            if !seen.contains_key(job) && !declared.contains(job.as_str()) {
                let span = policy_on_span(root, &p.name).unwrap_or_default();
                let msg = format!(
                    "no job named `{job}` (jobs: {})",
                    jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ")
                );
                ctx.diag.error(span, format!("policy \"{}\".on", p.name), msg);
            }
        }
    }
    // A [targets] with a mistake in it is reported already; without one, nothing is named.
    let has_targets = root.get_ref().as_table().is_some_and(|t| t.get("targets").is_some());
    if targets.is_some() || !has_targets {
        check_named_targets(&items, &jobs, targets.as_ref(), ctx);
        check_granted_databases(root, &policies, targets.as_ref(), ctx);
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
            ("badges", &mut http.badges),
            ("pings", &mut http.pings),
        ] {
            if let Some(on) = h.bool(ctx, key) {
                *field = on;
            }
        }
        for (key, field) in
            [("header_timeout", &mut http.header_timeout), ("request_timeout", &mut http.request_timeout)]
        {
            if let Some(d) = h.duration(ctx, key) {
                if d.is_zero() {
                    let span = h.get(key).map(|v| v.span()).unwrap_or_default();
                    ctx.diag.error(span, h.field(key), "must be longer than zero");
                }
                *field = Some(d.std());
            }
        }
        http.max_connections = h.count_from(ctx, "max_connections", 16, 1_000_000).map(|n| n as usize);
        h.finish(
            ctx,
            &[
                "status_page",
                "health",
                "metrics",
                "unsubscribe",
                "badges",
                "pings",
                "header_timeout",
                "request_timeout",
                "max_connections",
            ],
        );
    }
    let receivers = t.get("receivers").map(|v| receivers::read_receivers(v, ctx)).unwrap_or_default();
    let mut routes = Vec::new();
    if let Some(items) = t.array(ctx, "routes") {
        routes = items.iter().enumerate().filter_map(|(i, item)| receivers::read_route(item, i, ctx)).collect();
    }
    receivers::check_routes(root, &routes, &receivers, &jobs, &policies, ctx);
    t.finish(
        ctx,
        &[
            "version",
            "product",
            "max_running",
            "targets",
            "state",
            "alerts",
            "job",
            "policy",
            "maintenance",
            "http",
            "receivers",
            "routes",
        ],
    );
    let targets = match targets {
        Some(t) => t,
        None if root.get_ref().as_table().is_some_and(|t| t.get("targets").is_some()) => return None,
        None => TargetsConfig {
            database: DbUrl::Sqlite(base.join("demo-app.db")),
            demo_schema: true,
            s3: None,
            pool: DEFAULT_POOL,
            databases: Vec::new(),
            policy_url: None,
            buckets: Vec::new(),
        },
    };
    let state = state?;
    // Each run holds at most one store connection at a time: as many runs as the store pool
    // has connections never wait for one.
    let max_running = max_running.unwrap_or(state.pool as usize);
    Some(Config {
        path: path.to_path_buf(),
        product,
        max_running,
        targets,
        state,
        alerts: alerts?,
        jobs,
        policies,
        maintenance,
        http,
        receivers,
        routes,
    })
}

fn ctx_src<'s>(ctx: &Ctx<'s>) -> &'s str {
    ctx.diag.src()
}

fn read_targets(value: &Value<'_>, base: &Path, ctx: &mut Ctx<'_>) -> Option<TargetsConfig> {
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
    let pool = pool_size(&mut t, ctx);
    let mut databases = Vec::new();
    if let Some(v) = t.get("databases") {
        for (name, item) in named_tables(v, "targets.databases", ctx) {
            let Some(mut d) = TableReader::new(item, format!("targets.databases.{name}"), ctx) else { continue };
            let field = d.field("url");
            let url = match d.required_string(ctx, "url") {
                Some(s) => parse_url(&s, &field, base, ctx),
                None => None,
            };
            let pool = pool_size(&mut d, ctx);
            let policy_url = read_policy_url(&mut d, url.as_ref(), ctx);
            d.finish(ctx, &["url", "pool", "policy_url"]);
            if let Some(url) = url {
                databases.push(NamedDatabase { name, url, pool, policy_url });
            }
        }
    }
    let mut buckets = Vec::new();
    if let Some(v) = t.get("buckets") {
        for (name, item) in named_tables(v, "targets.buckets", ctx) {
            if let Some(Some(bucket)) = read_s3_at(item, &format!("targets.buckets.{name}"), ctx) {
                buckets.push((name, bucket));
            }
        }
    }
    let policy_url = read_policy_url(&mut t, database.as_ref(), ctx);
    t.finish(ctx, &["database", "demo_schema", "s3", "pool", "databases", "buckets", "policy_url"]);
    let database = database?;
    let demo_schema = demo_schema.unwrap_or(database.is_sqlite());
    Some(TargetsConfig { database, demo_schema, s3: s3?, pool, databases, policy_url, buckets })
}

/// `policy_url`: the role policies' `sql:read` connects as, for a PostgreSQL database only (a
/// SQLite one is read through a read-only connection of its own).
fn read_policy_url(t: &mut TableReader<'_, '_>, database: Option<&DbUrl>, ctx: &mut Ctx<'_>) -> Option<String> {
    let url = t.string(ctx, "policy_url")?;
    let field = t.field("policy_url");
    if !(url.value.starts_with("postgres://") || url.value.starts_with("postgresql://")) {
        ctx.diag.error(url.span, field, "expected a `postgres://` URL (the role policies query as)");
        return None;
    }
    if database.is_some_and(DbUrl::is_sqlite) {
        ctx.diag.error(url.span, field, "only for a PostgreSQL database: this one is SQLite, which policies read through a read-only connection of their own");
        return None;
    }
    Some(url.value)
}

/// The entries of a table of named tables (`[targets.databases.NAME]`), names checked.
fn named_tables<'a, 'i>(value: &'a Value<'i>, scope: &str, ctx: &mut Ctx<'_>) -> Vec<(String, &'a Value<'i>)> {
    let Some(table) = value.get_ref().as_table() else {
        let found = value.get_ref().type_str();
        ctx.diag.error(value.span(), scope, format!("expected a table of named entries, found {found}"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, item) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        if !valid_name(name) || name == "default" {
            let msg = format!("invalid name `{name}`: use lowercase letters, digits, `-` and `_` (not `default`)");
            ctx.diag.error(key.span(), format!("{scope}.{name}"), msg);
            continue;
        }
        out.push((name.to_owned(), item));
    }
    out
}

fn read_s3(value: &Value<'_>, ctx: &mut Ctx<'_>) -> Option<Option<S3Target>> {
    read_s3_at(value, "targets.s3", ctx)
}

fn read_s3_at(value: &Value<'_>, scope: &str, ctx: &mut Ctx<'_>) -> Option<Option<S3Target>> {
    let mut t = TableReader::new(value, scope, ctx)?;
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
            ctx.diag.error(s.span, scope, msg);
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
    let pool = pool_size(&mut t, ctx);
    t.finish(ctx, &["url", "pool"]);
    Some(StateConfig { url: url?, pool })
}

/// Connections in a pool, when `pool` is not given.
pub const DEFAULT_POOL: u32 = 10;

/// `pool = N`: the most connections warden opens to that database (1 to 1000).
fn pool_size(t: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>) -> u32 {
    t.count_from(ctx, "pool", 1, 1000).map_or(DEFAULT_POOL, |n| u32::try_from(n).unwrap_or(DEFAULT_POOL))
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

fn read_maintenance(value: &Value<'_>, index: usize, ctx: &mut Ctx<'_>) -> Option<MaintenanceWindow> {
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
    let mut matchers = crate::base::Matchers {
        job: t.string(ctx, "job").map(|s| s.value),
        policy: t.string(ctx, "policy").map(|s| s.value),
        kind: None,
    };
    if let Some(kind) = t.string(ctx, "kind") {
        match crate::base::OutboxKind::try_from(kind.value) {
            Ok(k) => matchers.kind = Some(k),
            Err(msg) => ctx.diag.error(kind.span, t.field("kind"), msg),
        }
    }
    let comment = t.string(ctx, "comment").map(|s| s.value).unwrap_or_default();
    t.finish(ctx, &["name", "cron", "tz", "duration", "job", "policy", "kind", "comment"]);
    Some(MaintenanceWindow { name: name?.value, schedule: schedule?, duration: duration?, matchers, comment })
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
    let mut sql_database = None;
    let mut s3_bucket = None;
    if let Some(items) = t.strings(ctx, "grants") {
        for g in items {
            if let Some(name) = g.value.strip_prefix("sql:read:") {
                grants.sql_read = true;
                sql_database = Some(name.to_owned());
                continue;
            }
            if let Some((grant, name)) = g.value.strip_prefix("s3:").and_then(|r| r.split_once(':')) {
                if let Err(msg) = grants.grant(&format!("s3:{grant}")) {
                    ctx.diag.error(g.span.clone(), t.field("grants"), msg);
                }
                s3_bucket = Some(name.to_owned());
                continue;
            }
            if let Err(msg) = grants.grant(&g.value) {
                ctx.diag.error(g.span, t.field("grants"), msg);
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
    let spec = PolicySpec {
        name: name.value,
        component: component?,
        on,
        config,
        grants,
        sql_database,
        s3_bucket,
        limits,
        quarantine_after,
        enabled,
    };
    Some((spec, name.span))
}

/// Every database or bucket a check names is configured.
fn check_named_targets(
    items: &JobItems<'_>,
    jobs: &[std::sync::Arc<Job>],
    targets: Option<&TargetsConfig>,
    ctx: &mut Ctx<'_>,
) {
    let databases: Vec<&str> = targets.iter().flat_map(|t| t.databases.iter().map(|d| d.name.as_str())).collect();
    let named = if databases.is_empty() { "none".to_owned() } else { databases.join(", ") };
    for job in jobs {
        let role = match &job.task {
            Task::SqlGauge { db, .. } => Some(db),
            Task::Prune(p) => Some(&p.db),
            Task::Sql(s) => Some(&s.db),
            _ => None,
        };
        if let Some(DbRole::Named(name)) = role
            && !databases.contains(&name.as_str())
        {
            let span = items.get(&job.name).and_then(|t| t.get("db").map(|v| v.span())).unwrap_or_default();
            let msg = format!("no database named `{name}` in [targets.databases] (named: {named})");
            ctx.diag.error(span, format!("job \"{}\".db", job.name), msg);
        }
    }
    for job in jobs {
        let Task::Probe { checks } = &job.task else { continue };
        for (j, check) in checks.iter().enumerate() {
            let Some(name) = &check.target else { continue };
            let (key, known): (&str, Vec<&str>) = match check.kind {
                CheckKind::S3 => {
                    ("bucket", targets.iter().flat_map(|t| t.buckets.iter().map(|(n, _)| n.as_str())).collect())
                }
                _ => ("database", targets.iter().flat_map(|t| t.databases.iter().map(|d| d.name.as_str())).collect()),
            };
            if known.contains(&name.as_str()) {
                continue;
            }
            let span = items
                .get(&job.name)
                .and_then(|t| {
                    t.get("checks")?.get_ref().as_array()?.get(j)?.get_ref().as_table()?.get(key).map(|v| v.span())
                })
                .unwrap_or_default();
            let which = if key == "bucket" { "targets.buckets" } else { "targets.databases" };
            let msg = format!(
                "no {key} named `{name}` in [{which}] (named: {})",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            );
            ctx.diag.error(span, format!("job \"{}\".checks[{j}].{key}", job.name), msg);
        }
    }
}

/// Every `sql:read:NAME` grant names a configured database.
fn check_granted_databases(
    root: &Value<'_>,
    policies: &[PolicySpec],
    targets: Option<&TargetsConfig>,
    ctx: &mut Ctx<'_>,
) {
    let databases: Vec<&str> = targets.iter().flat_map(|t| t.databases.iter().map(|d| d.name.as_str())).collect();
    for p in policies {
        let Some(name) = &p.sql_database else { continue };
        if databases.contains(&name.as_str()) {
            continue;
        }
        let span = grants_span(root, &p.name);
        let msg = format!("`sql:read:{name}` names no database in [targets.databases]");
        ctx.diag.error(span, format!("policy \"{}\".grants", p.name), msg);
    }
    let buckets: Vec<&str> = targets.iter().flat_map(|t| t.buckets.iter().map(|(n, _)| n.as_str())).collect();
    for p in policies {
        let Some(name) = &p.s3_bucket else { continue };
        if !buckets.contains(&name.as_str()) {
            let msg = format!("`s3:…:{name}` names no bucket in [targets.buckets]");
            ctx.diag.error(grants_span(root, &p.name), format!("policy \"{}\".grants", p.name), msg);
        }
    }
}

fn grants_span(root: &Value<'_>, policy: &str) -> std::ops::Range<usize> {
    root.get_ref()
        .as_table()
        .and_then(|t| t.get("policy"))
        .and_then(|v| v.get_ref().as_array())
        .and_then(|items| {
            items.iter().find_map(|i| {
                let t = i.get_ref().as_table()?;
                (t.get("name")?.get_ref().as_str()? == policy).then(|| t.get("grants").map(|g| g.span()))?
            })
        })
        .unwrap_or_default()
}
