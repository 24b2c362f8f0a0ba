//! Where each SQL text of a checked configuration was written (`file:line:column` and the
//! field), for `warden check --connect`, which prepares them on the real databases and must
//! point at the one a database refused.

use std::ops::Range;

use toml::de::DeTable;

use super::{Config, DbRole, PerBackend, Task};

/// One SQL text and its place.
#[derive(Debug, Clone)]
pub struct SqlSite {
    /// `file:line:column`.
    pub place: String,
    /// The field, as `warden check` names fields (`job "probe".checks[2].query`).
    pub field: String,
    pub db: DbRole,
    /// A named target database (`[targets.databases.NAME]`) instead of the default.
    pub named: Option<String>,
    pub sql: SqlText,
}

/// What is prepared.
#[derive(Debug, Clone)]
pub enum SqlText {
    /// A query or statement as written (`{batch}` replaced by a number).
    Text(PerBackend),
    /// A prune's table and column: prepared as the SELECT its DELETE is made of.
    Prune { table: String, column: String },
}

/// Every SQL text `config` holds, with its place in `src` (the file it was read from).
pub fn sql_sites(config: &Config, src: &str) -> Vec<SqlSite> {
    let file = config.path.display().to_string();
    let (root, _) = super::document::tree(src);
    let root = root.into_inner();
    let place = |span: Range<usize>| {
        let (line, col) = super::error::line_col(src, span.start);
        format!("{file}:{line}:{col}")
    };
    let mut out = Vec::new();
    let jobs: &[toml::Spanned<toml::de::DeValue<'_>>] =
        root.get("job").and_then(|v| v.get_ref().as_array()).map_or(&[], |a| &a[..]);
    // The first item of each name: a duplicate name is refused before a check connects.
    let mut items: std::collections::HashMap<&str, &DeTable<'_>> = std::collections::HashMap::new();
    for t in jobs.iter().filter_map(|item| item.get_ref().as_table()) {
        if let Some(name) = t.get("name").and_then(|n| n.get_ref().as_str()) {
            items.entry(name).or_insert(t);
        }
    }
    for job in &config.jobs {
        let Some(&item) = items.get(job.name.as_str()) else {
            continue;
        };
        let span_of = |t: &DeTable<'_>, key: &str| t.get(key).map(|v| v.span()).unwrap_or_default();
        let scope = format!("job \"{}\"", job.name);
        match &job.task {
            Task::Probe { checks } => {
                let raw: &[toml::Spanned<toml::de::DeValue<'_>>] =
                    item.get("checks").and_then(|v| v.get_ref().as_array()).map_or(&[], |a| &a[..]);
                for (j, check) in checks.iter().enumerate() {
                    let crate::config::CheckKind::Sql { query } = &check.kind else { continue };
                    let span = raw.get(j).and_then(|c| c.get_ref().as_table()).map(|c| span_of(c, "query"));
                    out.push(SqlSite {
                        place: place(span.unwrap_or_default()),
                        field: format!("{scope}.checks[{j}].query"),
                        db: DbRole::Target,
                        named: check.target.clone(),
                        sql: SqlText::Text(query.clone()),
                    });
                }
            }
            Task::SqlGauge { db, query, .. } => out.push(SqlSite {
                place: place(span_of(item, "query")),
                field: format!("{scope}.query"),
                db: db.clone(),
                named: None,
                sql: SqlText::Text(query.clone()),
            }),
            Task::Sql(sql) => {
                let batch = sql.batch_size.to_string();
                let replace = |s: &Option<String>| s.as_ref().map(|s| s.replace("{batch}", &batch));
                let statement =
                    PerBackend { sqlite: replace(&sql.statement.sqlite), postgres: replace(&sql.statement.postgres) };
                out.push(SqlSite {
                    place: place(span_of(item, "statement")),
                    field: format!("{scope}.statement"),
                    db: sql.db.clone(),
                    named: None,
                    sql: SqlText::Text(statement),
                })
            }
            Task::Prune(prune) => out.push(SqlSite {
                place: place(span_of(item, "table")),
                field: format!("{scope}.table"),
                db: prune.db.clone(),
                named: None,
                sql: SqlText::Prune { table: prune.table.clone(), column: prune.column.clone() },
            }),
            Task::PoolStats | Task::PgActivity | Task::Heartbeat(_) => {}
        }
    }
    if let Some(subs) = &config.alerts.subscribers {
        let raw = root
            .get("alerts")
            .and_then(|a| a.get_ref().as_table())
            .and_then(|a| a.get("subscribers"))
            .and_then(|s| s.get_ref().as_table());
        for (key, sql) in [("query", &subs.query), ("opt_out", &subs.opt_out)] {
            let span = raw.as_ref().and_then(|t| t.get(key)).map(|v| v.span()).unwrap_or_default();
            out.push(SqlSite {
                place: place(span),
                field: format!("alerts.subscribers.{key}"),
                db: DbRole::Target,
                named: None,
                sql: SqlText::Text(sql.clone()),
            });
        }
    }
    out
}

/// Where each policy's `grants` is written (`file:line:column`), by policy name.
pub fn grants_places(config: &Config, src: &str) -> std::collections::HashMap<String, String> {
    let file = config.path.display().to_string();
    let (root, _) = super::document::tree(src);
    let root = root.into_inner();
    let policies: &[toml::Spanned<toml::de::DeValue<'_>>] =
        root.get("policy").and_then(|v| v.get_ref().as_array()).map_or(&[], |a| &a[..]);
    policies
        .iter()
        .filter_map(|item| {
            let t = item.get_ref().as_table()?;
            let name = t.get("name")?.get_ref().as_str()?;
            let span = t.get("grants").map_or(item.span(), |g| g.span());
            let (line, col) = super::error::line_col(src, span.start);
            Some((name.to_owned(), format!("{file}:{line}:{col}")))
        })
        .collect()
}
