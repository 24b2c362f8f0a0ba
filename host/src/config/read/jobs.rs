//! `[[job]]`: the schedule, the task and its settings, and the probe's checks.

use chrono_tz::Tz;

use crate::base::Duration;
use crate::config::model::*;
use crate::config::table::{Ctx, TableReader, Value};
use crate::schedule::ScheduleSpec;

use super::{valid_identifier, valid_name};

pub const TASK_KINDS: &[&str] = &["probe", "pool-stats", "pg-activity", "sql-gauge", "prune", "sql"];
const COMMON_JOB_KEYS: &[&str] =
    &["name", "every", "align", "cron", "tz", "jitter", "timeout", "enabled", "task", "description"];

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
