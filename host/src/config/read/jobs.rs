//! `[[job]]`: the schedule, the task and its settings, and the probe's checks.

use chrono_tz::Tz;

use crate::base::Duration;
use crate::config::model::*;
use crate::config::table::{Ctx, TableReader, Value};
use crate::schedule::ScheduleSpec;

use super::{valid_identifier, valid_name};

pub const TASK_KINDS: &[&str] = &["probe", "pool-stats", "pg-activity", "sql-gauge", "prune", "sql", "heartbeat"];
const COMMON_JOB_KEYS: &[&str] =
    &["name", "every", "align", "cron", "tz", "jitter", "timeout", "enabled", "task", "description", "health"];

fn task_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "probe" => &["checks"],
        "sql-gauge" => &["db", "metric", "query"],
        "prune" => &["db", "table", "column", "older_than", "batch_size", "time_budget"],
        "sql" => &["db", "statement", "batch_size", "time_budget"],
        "heartbeat" => &["period", "grace", "token"],
        _ => &[],
    }
}

const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_BATCH: u64 = 1000;
const DEFAULT_BUDGET: Duration = Duration::from_secs(30);
const MAX_BATCH: u64 = 1_000_000;

pub(super) fn read_job(value: &Value<'_>, index: usize, ctx: &mut Ctx<'_>) -> Option<(Job, std::ops::Range<usize>)> {
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
    let align = t.bool(ctx, "align").unwrap_or(false);
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
    let heartbeat = t.get("task").and_then(|v| v.get_ref().as_str()) == Some("heartbeat");
    let mut schedule = match (t.has("every"), t.has("cron")) {
        // A heartbeat's `period` or `cron` says when pings are due (read with its task); its
        // deadline is checked at a cadence of its own.
        _ if heartbeat => None,
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
            let job_name = name.as_ref().map(|n| n.value.clone()).unwrap_or_default();
            let spec = |p| {
                if align { ScheduleSpec::every(p, jitter) } else { ScheduleSpec::every_spread(&job_name, p, jitter) }
            };
            t.duration(ctx, "every").and_then(|p| match spec(p) {
                Ok(s) => Some(s),
                Err(msg) => {
                    let span = t.get("every").map(|v| v.span()).unwrap_or_default();
                    ctx.diag.error(span, t.field("every"), msg);
                    None
                }
            })
        }
        (false, true) => {
            if t.has("align") {
                let span = t.get("align").map(|v| v.span()).unwrap_or_default();
                ctx.diag.error(
                    span,
                    t.field("align"),
                    "`align` applies to `every` schedules only (cron times are exact)",
                );
            }
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
    let health = t.bool(ctx, "health");
    let health_span = t.get("health").map(|v| v.span()).unwrap_or_default();
    let health_field = t.field("health");
    let _description = t.string(ctx, "description");
    let kind = t.required_string(ctx, "task");
    let job_name = name.as_ref().map(|n| n.value.clone()).unwrap_or_default();
    let task = match &kind {
        Some(k) if k.value == "heartbeat" => {
            let read = read_heartbeat(&mut t, ctx, &job_name, tz.unwrap_or(Tz::UTC));
            read.map(|(heartbeat, cadence)| {
                schedule = Some(cadence);
                Task::Heartbeat(heartbeat)
            })
        }
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
    let task = task?;
    let snapshots = matches!(task, Task::Probe { .. } | Task::Heartbeat(_));
    if health == Some(true) && !snapshots {
        ctx.diag.error(health_span, health_field, "only probe and heartbeat jobs have a health to count");
    }
    let health = health.unwrap_or(matches!(task, Task::Probe { .. }));
    let job = Job { name: name.value, schedule: schedule?, timeout, enabled, task, health };
    Some((job, name.span))
}

fn read_db_role(t: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>) -> Option<DbRole> {
    match t.string(ctx, "db") {
        None => Some(DbRole::Target),
        Some(s) => match s.value.as_str() {
            "target" => Some(DbRole::Target),
            "state" => Some(DbRole::State),
            // Checked against [targets.databases] once the targets are read.
            other if valid_name(other) && other != "default" => Some(DbRole::Named(other.to_owned())),
            other => {
                let msg = format!(
                    "unknown database `{other}`, expected `target`, `state` or a name from [targets.databases]"
                );
                ctx.diag.error(s.span, t.field("db"), msg);
                None
            }
        },
    }
}

/// A string, or `{ sqlite = "...", postgres = "..." }`.
pub(super) fn read_per_backend(
    t: &mut TableReader<'_, '_>,
    ctx: &mut Ctx<'_>,
    key: &str,
    required: bool,
) -> Option<PerBackend> {
    let Some(value) = t.get(key) else {
        if required {
            ctx.diag.error(t.span.clone(), t.field(key), format!("missing required field `{key}`"));
        }
        return None;
    };
    if let Some(text) = value.get_ref().as_str() {
        return match crate::config::env::expand(text, ctx.env) {
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
            Some("http") => read_http(&mut c, ctx).map(|h| CheckKind::Http(Box::new(h))),
            Some("tcp") => read_address(&mut c, ctx).map(|address| CheckKind::Tcp { address }),
            Some("tls") => {
                let address = read_address(&mut c, ctx);
                let min_days = c.count(ctx, "min_days", 3650).map_or(14, |n| n as u32);
                let ca_file = read_ca_file(&mut c, ctx);
                address.map(|address| CheckKind::Tls { address, min_days, ca_file })
            }
            Some(other) => {
                let span = kind.as_ref().map(|k| k.span.clone()).unwrap_or_default();
                let msg = format!("unknown check kind `{other}`, expected one of: db, s3, sql, http, tcp, tls");
                ctx.diag.error(span, c.field("kind"), msg);
                None
            }
            None => None,
        };
        let critical = c.bool(ctx, "critical");
        let timeout = c.duration(ctx, "timeout").unwrap_or(DEFAULT_CHECK_TIMEOUT);
        let target = match &kind {
            Some(CheckKind::Db | CheckKind::Sql { .. }) => c.string(ctx, "database").map(|s| s.value),
            Some(CheckKind::S3) => c.string(ctx, "bucket").map(|s| s.value),
            _ => None,
        };
        let known: &[&str] = match &kind {
            Some(CheckKind::Http(_)) => &[
                "name",
                "kind",
                "critical",
                "timeout",
                "url",
                "method",
                "headers",
                "expect_status",
                "body_contains",
                "json_pointer",
                "json_equals",
                "max_latency",
                "max_redirects",
                "ca_file",
            ],
            Some(CheckKind::Tcp { .. }) => &["name", "kind", "critical", "timeout", "address"],
            Some(CheckKind::Tls { .. }) => &["name", "kind", "critical", "timeout", "address", "min_days", "ca_file"],
            Some(CheckKind::S3) => &["name", "kind", "critical", "timeout", "bucket"],
            Some(_) => &["name", "kind", "query", "critical", "timeout", "database"],
            // An unknown kind is reported already; its other fields cannot be judged.
            None => &[],
        };
        if kind.is_some() {
            c.finish(ctx, known);
        }
        match (name, kind) {
            (Some(name), Some(kind)) => {
                if checks.iter().any(|c| c.name == name.value) {
                    let msg = format!("duplicate check name `{}`", name.value);
                    ctx.diag.error(name.span, t.field("checks"), msg);
                    ok = false;
                    continue;
                }
                let critical = critical.unwrap_or(kind == CheckKind::Db);
                checks.push(Check { name: name.value, kind, target, critical, timeout });
            }
            _ => ok = false,
        }
    }
    if checks.is_empty() && ok {
        ctx.diag.error(t.span.clone(), t.field("checks"), "a probe needs at least one check");
        return None;
    }
    // A probe has a check or two: no room for four is kept per job (at 100,000 jobs, 38 MB).
    checks.shrink_to_fit();
    ok.then_some(checks)
}

/// A `tcp` or `tls` check's `host:port`.
fn read_address(c: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>) -> Option<String> {
    let address = c.required_string(ctx, "address")?;
    let valid = address
        .value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        let msg =
            format!("`{}` is not `host:port` (e.g. \"127.0.0.1:6379\" or \"app.example.org:443\")", address.value);
        ctx.diag.error(address.span, c.field("address"), msg);
        return None;
    }
    Some(address.value)
}

fn read_ca_file(c: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>) -> Option<std::path::PathBuf> {
    let file = c.string(ctx, "ca_file").filter(|s| !s.value.is_empty())?;
    // Read when the check runs, not here: this module does no IO.
    Some(crate::config::base_dir(ctx.diag.file()).join(file.value))
}

fn read_http(c: &mut TableReader<'_, '_>, ctx: &mut Ctx<'_>) -> Option<HttpCheck> {
    let url = c.required_string(ctx, "url");
    let url = url.and_then(|u| match u.value.parse::<hyper::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => Some(u.value),
        _ => {
            let msg = format!("`{}` is not an http(s) URL", crate::base::text::redact(&u.value));
            ctx.diag.error(u.span, c.field("url"), msg);
            None
        }
    });
    let method = match c.string(ctx, "method") {
        Some(m) => {
            let upper = m.value.to_ascii_uppercase();
            if ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].contains(&upper.as_str()) {
                upper
            } else {
                let msg = format!("unknown method `{}`: GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS", m.value);
                ctx.diag.error(m.span, c.field("method"), msg);
                "GET".to_owned()
            }
        }
        None => "GET".to_owned(),
    };
    let mut headers = Vec::new();
    if let Some(v) = c.get("headers")
        && let Some(mut h) = TableReader::new(v, c.field("headers"), ctx)
    {
        let names: Vec<String> = v
            .get_ref()
            .as_table()
            .map(|m| m.iter().map(|(k, _)| k.get_ref().to_string()).collect())
            .unwrap_or_default();
        for name in names {
            let Some(value) = h.string(ctx, &name) else { continue };
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || hyper::header::HeaderValue::from_str(&value.value).is_err()
            {
                let msg = format!("`{name}` is not a valid HTTP header (name, or a value of visible ASCII)");
                ctx.diag.error(value.span, h.field(&name), msg);
            } else {
                headers.push((name, value.value));
            }
        }
        h.finish(ctx, &[]);
    }
    let mut expect_status = Vec::new();
    if let Some(v) = c.get("expect_status") {
        let items: Vec<&Value<'_>> = match v.get_ref().as_array() {
            Some(items) => items.iter().collect(),
            None => vec![v],
        };
        for item in items {
            match item.get_ref().as_integer().and_then(|i| i.as_str().parse::<u16>().ok()) {
                Some(code) if (100..=599).contains(&code) => expect_status.push(code),
                _ => ctx.diag.error(
                    item.span(),
                    c.field("expect_status"),
                    "expected an HTTP status code (100 to 599) or a list of them",
                ),
            }
        }
    }
    let body_contains = c.string(ctx, "body_contains").map(|s| s.value);
    let pointer = c.string(ctx, "json_pointer");
    let equals = c.get("json_equals");
    let json = match (pointer, equals) {
        (Some(p), Some(v)) => {
            if !(p.value.is_empty() || p.value.starts_with('/')) {
                let msg = format!("`{}` is not a JSON pointer (write e.g. \"/status\")", p.value);
                ctx.diag.error(p.span.clone(), c.field("json_pointer"), msg);
            }
            let value = match v.get_ref() {
                toml::de::DeValue::String(s) => Some(serde_json::Value::String(s.to_string())),
                toml::de::DeValue::Integer(i) => i.as_str().parse::<i64>().ok().map(serde_json::Value::from),
                toml::de::DeValue::Float(f) => f.as_str().parse::<f64>().ok().map(serde_json::Value::from),
                toml::de::DeValue::Boolean(b) => Some(serde_json::Value::Bool(*b)),
                _ => None,
            };
            match value {
                Some(value) => Some((p.value, value.to_string())),
                None => {
                    ctx.diag.error(v.span(), c.field("json_equals"), "expected a string, number or boolean");
                    None
                }
            }
        }
        (Some(p), None) => {
            ctx.diag.error(
                p.span,
                c.field("json_equals"),
                "`json_pointer` needs `json_equals`: the value it must hold",
            );
            None
        }
        (None, Some(v)) => {
            ctx.diag.error(v.span(), c.field("json_pointer"), "`json_equals` needs `json_pointer`: where to look");
            None
        }
        (None, None) => None,
    };
    let max_latency = c.duration(ctx, "max_latency");
    let max_redirects = c.count(ctx, "max_redirects", 20).map_or(5, |n| n as u32);
    let ca_file = read_ca_file(c, ctx);
    Some(HttpCheck {
        url: url?,
        method,
        headers,
        expect_status,
        body_contains,
        json,
        max_latency,
        max_redirects,
        ca_file,
    })
}

/// The most often a heartbeat's deadline is checked, and the least.
const HEARTBEAT_CADENCE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// A heartbeat job: `period` or `cron` (when pings are due), `grace`, `token`; and the
/// cadence its deadline is checked at (its grace, from 1 s to a minute, spread by name).
fn read_heartbeat(
    t: &mut TableReader<'_, '_>,
    ctx: &mut Ctx<'_>,
    job: &str,
    tz: Tz,
) -> Option<(Heartbeat, ScheduleSpec)> {
    if t.has("every") {
        let span = t.get("every").map(|v| v.span()).unwrap_or_default();
        let msg = "a heartbeat says when pings are due with `period` (or `cron`), not `every`";
        ctx.diag.error(span, t.field("every"), msg);
    }
    let expect = match (t.has("period"), t.has("cron")) {
        (true, true) => {
            let span = t.get("cron").map(|v| v.span()).unwrap_or_default();
            t.get("period");
            ctx.diag.error(span, t.field("cron"), "set either `period` or `cron`, not both");
            None
        }
        (false, false) => {
            let msg = "missing: when pings are due, `period = \"1h\"` or `cron = \"0 0 3 * * *\"`";
            ctx.diag.error(t.span.clone(), t.field("period"), msg);
            None
        }
        (true, false) => t.duration(ctx, "period").and_then(|p| {
            if p.is_zero() {
                let span = t.get("period").map(|v| v.span()).unwrap_or_default();
                ctx.diag.error(span, t.field("period"), "period must be longer than zero");
                None
            } else {
                Some(Expect::Period(p))
            }
        }),
        (false, true) => {
            t.parsed(ctx, "cron", |text| ScheduleSpec::cron(text, tz, Duration::default())).map(Expect::Cron)
        }
    };
    let grace = t.duration(ctx, "grace").unwrap_or(Duration::from_secs(60));
    let token = match t.string(ctx, "token") {
        Some(s) if s.value.len() >= 16 => Some(s.value),
        Some(s) if s.value.is_empty() => {
            let msg = "empty (its variable is unset?): a heartbeat needs a token of at least 16 characters";
            ctx.diag.error(s.span, t.field("token"), msg);
            None
        }
        Some(s) => {
            let msg = "too short: at least 16 characters (e.g. `openssl rand -hex 16`)";
            ctx.diag.error(s.span, t.field("token"), msg);
            None
        }
        None => {
            let msg = "missing required field `token`: the secret a ping must send as `Authorization: Bearer …`";
            ctx.diag.error(t.span.clone(), t.field("token"), msg);
            None
        }
    };
    let cadence = Duration(grace.std().clamp(HEARTBEAT_CADENCE.0.std(), HEARTBEAT_CADENCE.1.std()));
    let cadence = ScheduleSpec::every_spread(job, cadence, Duration::default()).ok()?;
    Some((Heartbeat { expect: expect?, grace, token: token? }, cadence))
}
