//! The first wall of the `sql:read` grant: the statement a guest sends is parsed in the
//! backend's dialect and accepted only when it is exactly one query (`SELECT`,
//! `WITH … SELECT` or `VALUES`; `TABLE x` is not read by the parser) that writes nothing, locks nothing and calls no
//! function that reaches outside the database or leaves state on the connection.
//!
//! It is not the only wall: the statement then runs on a connection that cannot write (a
//! read-only SQLite connection with an authorizer, a least-privilege PostgreSQL role in a
//! read-only transaction; `targets::policy`). This one answers first and names what it
//! refused, so a policy's author learns why.

use std::ops::ControlFlow;

use sqlparser::ast::{ObjectName, Query, Select, SetExpr, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

/// The longest statement a guest may send (parsing is linear in it; a query needs far less).
pub const MAX_STATEMENT_BYTES: usize = 64 << 10;

/// Whose SQL the statement is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Functions refused by name (compared lowercased, schema dropped). Each reaches outside the
/// database (files, programs, other servers), runs SQL given as text (which would skip this
/// parse), changes the server or other sessions, or leaves state on the connection.
const REFUSED_FUNCTIONS: &[&str] = &[
    // The server's files.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_logdir_ls",
    // SQL given as text, run inside the query.
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    // Settings, other sessions, the server.
    "set_config",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_logical_emit_message",
    "pg_notify",
    "pg_export_snapshot",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "nextval",
    "setval",
    // Holding the connection (the statement timeout ends it, but the pool is shared).
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    // SQLite: extensions and the shell's file functions, should a build carry them.
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
];

/// Families refused by prefix: large objects (server files), dblink (other servers),
/// advisory locks (outlive the transaction), replication, statistics resets, backups.
const REFUSED_PREFIXES: &[&str] = &[
    "pg_ls_",
    "lo_",
    "dblink",
    "pg_advisory_",
    "pg_try_advisory_",
    "pg_stat_reset",
    "pg_replication_",
    "pg_create_",
    "pg_drop_",
    "pg_wal_replay_",
    "pg_backup_",
];

/// Checks `statement` for `backend`; `Err` says what was refused.
pub fn check(backend: Backend, statement: &str) -> Result<(), String> {
    if statement.len() > MAX_STATEMENT_BYTES {
        return Err(format!("refused: the statement is {} bytes, over {MAX_STATEMENT_BYTES}", statement.len()));
    }
    let dialect: &dyn Dialect = match backend {
        Backend::Sqlite => &SQLiteDialect {},
        Backend::Postgres => &PostgreSqlDialect {},
    };
    let name = match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    };
    let statements = Parser::parse_sql(dialect, statement)
        .map_err(|e| format!("refused: not a statement warden reads as {name} SQL ({e})"))?;
    let query = match statements.as_slice() {
        [] => return Err("refused: no statement".into()),
        [Statement::Query(query)] => query,
        [other] => return Err(format!("refused: {} is not a query ({ONLY})", kind(other))),
        more => {
            return Err(format!("refused: {} statements; sql.query runs exactly one query ({ONLY})", more.len()));
        }
    };
    match query.visit(&mut ReadOnly) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(why) => Err(format!("refused: {why}")),
    }
}

const ONLY: &str = "one SELECT, WITH … SELECT or VALUES";

/// Walks every part of the query, subqueries and CTEs included.
struct ReadOnly;

impl Visitor for ReadOnly {
    type Break = String;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<String> {
        // Only reached for statements nested in the query: `WITH x AS (DELETE …)`.
        match statement {
            Statement::Query(_) => ControlFlow::Continue(()),
            other => ControlFlow::Break(format!("a data-modifying {} inside the query", kind(other))),
        }
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        if !query.locks.is_empty() {
            return ControlFlow::Break("FOR UPDATE / FOR SHARE locks rows".into());
        }
        if query.for_clause.is_some() || query.settings.is_some() || query.format_clause.is_some() {
            return ControlFlow::Break("a clause this backend does not read".into());
        }
        if !query.pipe_operators.is_empty() {
            return ControlFlow::Break("pipe operators".into());
        }
        modifying(&query.body)
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<String> {
        match &select.into {
            Some(_) => ControlFlow::Break("SELECT … INTO creates a table".into()),
            None => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
        // A set-returning function in FROM: `FROM pg_ls_dir('/')`.
        match factor {
            TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => function(name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, expr: &sqlparser::ast::Expr) -> ControlFlow<String> {
        match expr {
            sqlparser::ast::Expr::Function(f) => function(&f.name),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// A body that is itself a write (what `WITH … (INSERT …)` parses to).
fn modifying(body: &SetExpr) -> ControlFlow<String> {
    match body {
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
            ControlFlow::Break(format!("a data-modifying {} inside the query", kind(s)))
        }
        SetExpr::SetOperation { left, right, .. } => {
            modifying(left)?;
            modifying(right)
        }
        _ => ControlFlow::Continue(()),
    }
}

fn function(name: &ObjectName) -> ControlFlow<String> {
    let Some(last) = name.0.last().and_then(|part| part.as_ident()) else {
        return ControlFlow::Break(format!("a function whose name is computed ({name})"));
    };
    let lower = last.value.to_ascii_lowercase();
    let refused = REFUSED_FUNCTIONS.contains(&lower.as_str()) || REFUSED_PREFIXES.iter().any(|p| lower.starts_with(p));
    if refused {
        ControlFlow::Break(format!(
            "function {lower} reaches outside the database or changes the server or the session"
        ))
    } else {
        ControlFlow::Continue(())
    }
}

/// The statement's leading keywords, for a message: `DELETE`, `DROP TABLE`, `PRAGMA`.
fn kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let mut words = text.split_whitespace().take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic()));
    let first = words.next().unwrap_or("a statement").to_ascii_uppercase();
    match (first.as_str(), words.next()) {
        ("CREATE" | "DROP" | "ALTER" | "ATTACH" | "DETACH", Some(second)) => {
            format!("{first} {}", second.to_ascii_uppercase())
        }
        _ => first,
    }
}

#[cfg(test)]
mod tests;
