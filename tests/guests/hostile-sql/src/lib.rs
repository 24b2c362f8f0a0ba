//! A hostile policy granted `sql:read`: it tries every way out of a read-only query it
//! knows, then probes whether anything it tried stayed on the connection. One log line per
//! attempt: `escape NAME: denied: …` or `escape NAME: ALLOWED: …`, then `probe NAME: …`.
//!
//! Config: `backend` (`sqlite` | `postgres`), `state` (warden's state file, SQLite), `out`
//! (a folder the file-making escapes aim at), `only` (run just the escape of that name);
//! with `s3 = "other"` it tries the S3 grants instead, reaching for the bucket `other`
//! through keys and prefixes (`s3 NAME: denied: …` or `s3 NAME: ALLOWED: …`).

use warden_policy::bindings::warden::policy::s3;
use warden_policy::bindings::warden::policy::sql::{self, Cell};
use warden_policy::{Action, Event, Guest, Level, LogEntry, config};

struct Hostile;

/// (name, statement); `{state}` and `{out}` are filled from the config.
const SQLITE: &[(&str, &str)] = &[
    ("multi-delete", "SELECT 1; PRAGMA query_only = 0; DELETE FROM session"),
    ("multi-drop", "SELECT 1; PRAGMA query_only = 0; DROP TABLE sync_log"),
    ("delete", "DELETE FROM session"),
    ("drop", "DROP TABLE sync_log"),
    ("insert", "INSERT INTO session SELECT * FROM session"),
    ("create-temp", "CREATE TEMP TABLE t AS SELECT 1"),
    ("attach-read", "ATTACH DATABASE '{state}' AS st; SELECT count(*) FROM st.job_runs"),
    ("attach-write", "ATTACH DATABASE '{state}' AS st; PRAGMA query_only = 0; DELETE FROM st.job_runs"),
    ("attach-create", "ATTACH DATABASE '{out}/attached.db' AS x"),
    ("vacuum-into", "VACUUM INTO '{out}/vacuumed.db'"),
    ("pragma-query-only", "PRAGMA query_only = 0"),
    ("pragma-writable-schema", "PRAGMA writable_schema = 1"),
    ("load-extension", "SELECT load_extension('{out}/evil')"),
    ("cte-delete", "WITH d AS (DELETE FROM session RETURNING 1) SELECT count(*) FROM d"),
    ("state-secret", "SELECT value FROM settings"),
    ("runaway", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"),
];

const POSTGRES: &[(&str, &str)] = &[
    ("multi-delete", "SELECT 1; DELETE FROM session"),
    ("delete", "DELETE FROM session"),
    ("drop", "DROP TABLE sync_log"),
    ("copy-program", "COPY (SELECT 1) TO PROGRAM 'id > {out}/program.txt'"),
    ("copy-file", "COPY (SELECT 1) TO '{out}/copied.txt'"),
    ("read-file", "SELECT pg_read_file('/etc/hostname')"),
    ("ls-dir", "SELECT count(*) FROM pg_ls_dir('/')"),
    ("lo-import", "SELECT lo_import('/etc/hostname')"),
    ("state-secret", "SELECT value FROM warden.settings"),
    ("state-runs", "SELECT count(*) FROM warden.job_runs"),
    ("advisory-lock", "SELECT pg_advisory_lock(42)"),
    ("set", "SET statement_timeout = 0"),
    ("set-config", "SELECT set_config('statement_timeout', '0', false)"),
    ("reset-role", "RESET ROLE"),
    ("cte-delete", "WITH d AS (DELETE FROM session RETURNING 1) SELECT count(*) FROM d"),
    ("select-into", "SELECT * INTO stolen FROM session"),
    ("for-update", "SELECT * FROM session FOR UPDATE"),
    ("query-to-xml", "SELECT query_to_xml('DELETE FROM session', true, true, '')"),
    ("do-block", "DO $$ BEGIN DELETE FROM session; END $$"),
    ("dblink", "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(x int)"),
    ("terminate", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"),
    ("explain-analyze", "EXPLAIN ANALYZE DELETE FROM session"),
];

/// Reads that must still work after every escape, showing what the connection holds now.
const PROBES_SQLITE: &[(&str, &str)] = &[("sessions", "SELECT count(*) FROM session")];
const PROBES_POSTGRES: &[(&str, &str)] = &[
    ("sessions", "SELECT count(*) FROM session"),
    ("advisory-locks", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
    ("statement-timeout", "SELECT current_setting('statement_timeout')"),
    ("read-only", "SELECT current_setting('transaction_read_only')"),
];

fn cells(rows: &[Vec<Cell>]) -> String {
    let cells: Vec<String> = rows
        .iter()
        .flatten()
        .map(|c| match c {
            Cell::Null => "null".to_owned(),
            Cell::Integer(i) => i.to_string(),
            Cell::Real(r) => r.to_string(),
            Cell::Text(t) => t.clone(),
        })
        .collect();
    cells.join(",")
}

fn log(message: String) -> Action {
    Action::Log(LogEntry { level: Level::Info, message })
}

/// Keys and prefixes that name another bucket (`{other}`) or smuggle a header.
const S3_ESCAPES: &[(&str, &str)] = &[
    ("dot-dot", "../{other}/secret.txt"),
    ("leading-slash", "/{other}/secret.txt"),
    ("dot-then-dot-dot", "./../{other}/secret.txt"),
    ("deep-dot-dot", "a/../../{other}/secret.txt"),
    ("header", "x\r\nHost: {other}"),
];

fn s3_escapes(other: &str) -> Vec<Action> {
    let mut actions = Vec::new();
    for (name, key) in S3_ESCAPES {
        let key = key.replace("{other}", other);
        actions.push(log(match s3::head(&key) {
            Ok(found) => format!("s3 head-{name}: ALLOWED: {found:?}"),
            Err(e) => format!("s3 head-{name}: denied: {e}"),
        }));
        actions.push(log(match s3::list_objects(&key, 10) {
            Ok(objects) => format!(
                "s3 list-{name}: ALLOWED: {}",
                objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>().join(",")
            ),
            Err(e) => format!("s3 list-{name}: denied: {e}"),
        }));
    }
    actions.push(log(match s3::list_objects("", 10) {
        Ok(objects) => {
            format!("probe own-bucket: {}", objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>().join(","))
        }
        Err(e) => format!("probe own-bucket: error: {e}"),
    }));
    actions
}

impl Guest for Hostile {
    fn evaluate(_event: Event) -> Result<Vec<Action>, String> {
        if let Some(other) = config::get("s3") {
            return Ok(s3_escapes(&other));
        }
        let postgres = config::get("backend").as_deref() == Some("postgres");
        let state = config::get("state").unwrap_or_default();
        let out = config::get("out").unwrap_or_else(|| "/tmp".into());
        let only = config::get("only");
        let (escapes, probes) = if postgres { (POSTGRES, PROBES_POSTGRES) } else { (SQLITE, PROBES_SQLITE) };
        let mut actions = Vec::new();
        for (name, statement) in escapes {
            if only.as_deref().is_some_and(|o| o != *name) || (only.is_none() && *name == "runaway") {
                continue;
            }
            let statement = statement.replace("{state}", &state).replace("{out}", &out);
            actions.push(log(match sql::query(&statement) {
                Ok(rows) => format!("escape {name}: ALLOWED: {}", cells(&rows)),
                Err(e) => format!("escape {name}: denied: {e}"),
            }));
        }
        for (name, statement) in probes {
            actions.push(log(match sql::query(statement) {
                Ok(rows) => format!("probe {name}: {}", cells(&rows)),
                Err(e) => format!("probe {name}: error: {e}"),
            }));
        }
        Ok(actions)
    }
}

warden_policy::export!(Hostile);
