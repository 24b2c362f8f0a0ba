//! The statement classifier as a table: each case, the backend it is read as, whether it
//! runs, and why.

use rand::{Rng, SeedableRng};

use super::{Backend, check};

use Backend::{Postgres as Pg, Sqlite as Lite};

/// (backend, statement, accepted, why).
const CASES: &[(Backend, &str, bool, &str)] = &[
    // --- Queries a policy needs: accepted.
    (Pg, "SELECT 1", true, "the simplest query"),
    (Lite, "SELECT 1", true, "the same on SQLite"),
    (Pg, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'", true, "the saturation query"),
    (Pg, "SELECT current_setting('max_connections')::int", true, "reading a setting is not changing one"),
    (Pg, "WITH t AS (SELECT 1 AS x) SELECT x FROM t", true, "a CTE that only reads"),
    (
        Pg,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT i FROM n",
        true,
        "recursion reads",
    ),
    (Pg, "VALUES (1, 'a'), (2, 'b')", true, "VALUES is a query"),
    (Pg, "TABLE session", false, "TABLE is a query, but the parser does not read it: refused, write SELECT * FROM"),
    (Pg, "SELECT 1 UNION SELECT 2 EXCEPT SELECT 3", true, "set operations of reads"),
    (Pg, "SELECT * FROM (SELECT 1) AS s WHERE EXISTS (SELECT 1)", true, "subqueries that read"),
    (Pg, "SELECT ';' AS semi, 'DELETE FROM session' AS text", true, "a semicolon and a keyword inside quotes are text"),
    (Pg, "SELECT 1 -- ; DROP TABLE session", true, "a line comment is not a second statement"),
    (Pg, "SELECT /* ; DELETE FROM session */ 1", true, "a block comment is not a second statement"),
    (Lite, "SELECT EXISTS(SELECT 1 FROM session)", true, "the shipped sessions probe"),
    (
        Lite,
        "SELECT count(*) FROM sync_log WHERE created_at < datetime('now', '-90 days')",
        true,
        "SQLite date functions",
    ),
    (Pg, "SELECT 1;", true, "one trailing semicolon ends the one statement"),
    (Pg, "select \"pg_read_file\" from t", true, "a column that shares a refused function's name is a column"),
    (
        Pg,
        "SELECT usename, application_name, client_addr, state, count(*)\nFROM pg_stat_activity \
         WHERE backend_type = 'client backend'\nGROUP BY 1, 2, 3, 4 ORDER BY 5 DESC;",
        true,
        "the shipped pg-saturation's diagnostic query",
    ),
    (
        Pg,
        "SELECT count(*) FILTER (WHERE state = 'active')::float / current_setting('max_connections')::int FROM pg_stat_activity",
        true,
        "casts, FILTER and settings: what a saturation policy reads",
    ),
    (Lite, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name LIMIT 10", true, "the schema, read"),
    // --- More than one statement: refused before any of it runs.
    (Lite, "SELECT 1; PRAGMA query_only = 0; DELETE FROM session", false, "the measured SQLite escape"),
    (Pg, "SELECT 1; SELECT 2", false, "two reads are still two statements"),
    (Pg, "SELECT 1;;", true, "empty statements between semicolons are nothing: still one query"),
    (Pg, "", false, "nothing to run"),
    (Pg, "   -- only a comment", false, "a comment is no statement"),
    // --- Not a query.
    (Lite, "DELETE FROM session", false, "a write"),
    (Pg, "UPDATE session SET id = id", false, "a write"),
    (Pg, "INSERT INTO session VALUES (1)", false, "a write"),
    (Lite, "DROP TABLE sync_log", false, "DDL"),
    (Pg, "CREATE TEMP TABLE x AS SELECT 1", false, "DDL, even on a temporary table"),
    (Lite, "PRAGMA query_only = 0", false, "pragmas change the connection"),
    (Lite, "ATTACH DATABASE 'warden-state.db' AS st", false, "attaching reaches another file"),
    (Lite, "VACUUM INTO '/tmp/x.db'", false, "writes a file where the policy chooses"),
    (Pg, "COPY (SELECT 1) TO PROGRAM 'id'", false, "runs a program on the server"),
    (Pg, "COPY session TO '/tmp/out'", false, "writes a server file"),
    (Pg, "CALL do_something()", false, "a procedure may write"),
    (Pg, "DO $$ BEGIN PERFORM 1; END $$", false, "an anonymous block is code"),
    (Pg, "LOCK TABLE session", false, "locks outlive the statement's intent"),
    (Pg, "LISTEN channel", false, "session state"),
    (Pg, "SET statement_timeout = 0", false, "session state"),
    (Pg, "SET ROLE postgres", false, "changes who runs the next statement"),
    (Pg, "RESET ROLE", false, "changes who runs the next statement"),
    (Pg, "BEGIN", false, "transaction control is the host's"),
    (Pg, "EXPLAIN ANALYZE DELETE FROM session", false, "EXPLAIN ANALYZE executes its statement"),
    (Pg, "SHOW data_directory", false, "not a query"),
    (Pg, "PREPARE p AS SELECT 1", false, "session state"),
    (Pg, "DECLARE c CURSOR WITH HOLD FOR SELECT 1", false, "a held cursor outlives the transaction"),
    // --- Queries that write or lock.
    (Pg, "WITH d AS (DELETE FROM session RETURNING *) SELECT count(*) FROM d", false, "a CTE with DML"),
    (Pg, "WITH u AS (UPDATE session SET id = id RETURNING id) SELECT 1", false, "a CTE with DML"),
    (Pg, "WITH i AS (INSERT INTO session VALUES (1) RETURNING 1) SELECT * FROM i", false, "a CTE with DML"),
    (Pg, "SELECT * INTO copy_of_session FROM session", false, "SELECT INTO creates a table"),
    (Pg, "SELECT * FROM session FOR UPDATE", false, "row locks"),
    (Pg, "SELECT * FROM (SELECT * FROM session FOR SHARE) s", false, "row locks in a subquery"),
    // --- Functions that reach outside the database or leave state behind.
    (Pg, "SELECT pg_read_file('/etc/hostname')", false, "a server file"),
    (Pg, "SELECT count(*) FROM pg_ls_dir('/')", false, "a server directory, as a table function"),
    (Pg, "SELECT pg_catalog.pg_read_binary_file('/etc/passwd')", false, "schema-qualified, still refused"),
    (Pg, "SELECT PG_READ_FILE('/etc/hostname')", false, "case does not hide it"),
    (Pg, "SELECT \"pg_read_file\"('/etc/hostname')", false, "quoting does not hide it"),
    (Pg, "SELECT lo_import('/etc/passwd')", false, "a large object from a server file"),
    (Pg, "SELECT set_config('role', 'postgres', false)", false, "SET by another name"),
    (Pg, "SELECT pg_advisory_lock(42)", false, "a session lock outlives the call"),
    (Pg, "SELECT pg_try_advisory_lock(42)", false, "the same, trying"),
    (Pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity", false, "ends other sessions"),
    (Pg, "SELECT * FROM dblink('host=x', 'DELETE FROM t') AS t(x int)", false, "another server, SQL as text"),
    (Pg, "SELECT query_to_xml('DELETE FROM session', true, true, '')", false, "SQL as text skips this parse"),
    (Pg, "SELECT 1 WHERE EXISTS (SELECT pg_sleep(10))", false, "holds the pool's connection"),
    (Pg, "SELECT nextval('s')", false, "a sequence write"),
    (Lite, "SELECT load_extension('/tmp/evil.so')", false, "native code"),
    (Lite, "SELECT writefile('/tmp/x', 'y')", false, "a file, should the build have the function"),
];

#[test]
fn the_classifier_decides_every_case() {
    assert!(CASES.len() >= 40);
    let mut wrong = Vec::new();
    for (backend, statement, accepted, why) in CASES {
        let got = check(*backend, statement);
        if got.is_ok() != *accepted {
            wrong.push(format!("{backend:?} {statement:?} ({why}): {got:?}"));
        }
        if let Err(message) = &got {
            assert!(message.starts_with("refused: "), "{message}");
        }
    }
    assert!(wrong.is_empty(), "decided wrongly:\n{}", wrong.join("\n"));
}

#[test]
fn a_refusal_names_what_it_refused() {
    let cases = [
        (Lite, "DELETE FROM session", "DELETE is not a query"),
        (Lite, "DROP TABLE sync_log", "DROP TABLE is not a query"),
        (Lite, "PRAGMA query_only = 0", "PRAGMA is not a query"),
        (Pg, "COPY (SELECT 1) TO PROGRAM 'id'", "COPY is not a query"),
        (Lite, "SELECT 1; DELETE FROM session", "2 statements"),
        (Pg, "WITH d AS (DELETE FROM t RETURNING 1) SELECT 1", "a data-modifying DELETE"),
        (Pg, "SELECT pg_read_file('/etc/hostname')", "function pg_read_file"),
        (Pg, "SELECT * INTO x FROM t", "SELECT … INTO"),
    ];
    for (backend, statement, expected) in cases {
        let message = check(backend, statement).unwrap_err();
        assert!(message.contains(expected), "{statement}: {message}");
    }
    let long = format!("SELECT '{}'", "x".repeat(super::MAX_STATEMENT_BYTES));
    assert!(check(Pg, &long).unwrap_err().contains("bytes"));
}

/// Property: no input panics the classifier, and nothing but a single query is accepted.
/// Inputs are built from SQL's own tokens (keywords, quotes, comments, separators, deep
/// nesting), which reach far more of the parser than random bytes do.
#[test]
fn no_input_panics_it_and_only_queries_pass() {
    const TOKENS: &[&str] = &[
        "SELECT",
        "1",
        "FROM",
        "t",
        "WHERE",
        "(",
        ")",
        ",",
        ";",
        "'",
        "\"",
        "--",
        "/*",
        "*/",
        "$$",
        "WITH",
        "AS",
        "DELETE",
        "INSERT",
        "INTO",
        "UPDATE",
        "SET",
        "VALUES",
        "TABLE",
        "UNION",
        "PRAGMA",
        "ATTACH",
        "COPY",
        "TO",
        "PROGRAM",
        "pg_read_file",
        "x",
        "=",
        "*",
        "\n",
        "\\",
        "E'",
        "[",
        "]",
        "::",
        "->",
        "é",
        "\0",
        "RETURNING",
        "FOR",
        "UPDATE",
        "LIMIT",
        "ORDER",
        "BY",
        "CASE",
        "WHEN",
        "END",
        "NOT",
        "EXISTS",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(27);
    for _ in 0..20_000 {
        let n = rng.random_range(0..24);
        let text: Vec<&str> = (0..n).map(|_| TOKENS[rng.random_range(0..TOKENS.len())]).collect();
        let text = text.join(if rng.random_bool(0.5) { " " } else { "" });
        for backend in [Pg, Lite] {
            if check(backend, &text).is_ok() {
                // What was accepted is one query, and reads the same once printed back.
                let dialect: &dyn sqlparser::dialect::Dialect = match backend {
                    Pg => &sqlparser::dialect::PostgreSqlDialect {},
                    Lite => &sqlparser::dialect::SQLiteDialect {},
                };
                let parsed = sqlparser::parser::Parser::parse_sql(dialect, &text).unwrap();
                assert!(matches!(parsed.as_slice(), [sqlparser::ast::Statement::Query(_)]), "{text:?}");
                let printed = parsed[0].to_string();
                assert!(check(backend, &printed).is_ok(), "{text:?} accepted, printed {printed:?} refused");
            }
        }
        // Random bytes too, valid UTF-8 or not once made lossy.
        let bytes: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let _ = check(Pg, &String::from_utf8_lossy(&bytes));
    }
    // Deep nesting is refused by the parser's recursion limit, not by a stack overflow.
    let deep = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    assert!(check(Pg, &deep).is_err());
    let deep = format!("{}SELECT 1{}", "SELECT * FROM (".repeat(2_000), ") s".repeat(2_000));
    assert!(check(Lite, &deep).is_err());
}
