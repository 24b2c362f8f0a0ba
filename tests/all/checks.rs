//! The network checks against in-test servers, through the binary and `/health`: HTTP
//! 200/500/slow/redirect loop/body mismatch/JSON pointer, a closed TCP port, TLS with
//! certificates made here (rcgen) that expire in 5 and in 60 days.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::schedule::{probe, schedule};
use crate::support::{Daemon, free_port, wait_for};

const ADMIN: &str = "checks-admin-token-0123456789abcdef";

/// An HTTP server: `/ok` (JSON `{"status":"ok"}`), `/fail` (500), `/slow` (200 after 1.5 s),
/// `/loop` (a redirect to itself), `/hop` (a redirect to `/ok`), `/text` ("hello world").
fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap_or_default();
                let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                }
                let (status, extra, body) = match path.as_str() {
                    "/ok" => ("200 OK", "", r#"{"status":"ok","db":{"up":true}}"#),
                    "/fail" => ("500 Internal Server Error", "", "boom"),
                    "/slow" => {
                        std::thread::sleep(Duration::from_millis(1500));
                        ("200 OK", "", "late")
                    }
                    "/loop" => ("302 Found", "location: /loop\r\n", ""),
                    "/hop" => ("302 Found", "location: /ok\r\n", ""),
                    _ => ("200 OK", "", "hello world"),
                };
                let mut out = stream;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// A TLS acceptor for `localhost` with a certificate valid `days` more days, signed by `ca`.
pub fn tls_acceptor(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, days: u64) -> tokio_rustls::TlsAcceptor {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(now - 86_400);
    // Half a day beyond `days`, so the count of whole days left is `days`.
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(now + days * 86_400 + 43_200);
    let cert = params.signed_by(&key, ca).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A TLS server on 127.0.0.1 for `localhost` with a certificate valid `days` more days,
/// signed by `ca`.
fn tls_server(rt: &tokio::runtime::Runtime, ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, days: u64) -> u16 {
    let acceptor = tls_acceptor(ca, days);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    port
}

#[test]
fn http_tcp_and_tls_checks_report_what_they_saw_on_health() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = http_server();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let soon = tls_server(&rt, &ca, 5);
    let later = tls_server(&rt, &ca, 60);
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let url = |path: &str| format!("http://{http}{path}");
    let checks = [
        format!(
            r#"{{ name = "ok", kind = "http", url = "{}", expect_status = 200, json_pointer = "/db/up", json_equals = true }}"#,
            url("/hop")
        ),
        format!(r#"{{ name = "fail", kind = "http", url = "{}" }}"#, url("/fail")),
        format!(r#"{{ name = "slow", kind = "http", url = "{}", max_latency = "1s", timeout = "5s" }}"#, url("/slow")),
        format!(r#"{{ name = "loop", kind = "http", url = "{}", max_redirects = 3 }}"#, url("/loop")),
        format!(r#"{{ name = "text", kind = "http", url = "{}", body_contains = "goodbye" }}"#, url("/text")),
        format!(
            r#"{{ name = "json", kind = "http", url = "{}", json_pointer = "/status", json_equals = "down" }}"#,
            url("/ok")
        ),
        format!(r#"{{ name = "cache", kind = "tcp", address = "127.0.0.1:{closed}", timeout = "1s" }}"#),
        format!(
            r#"{{ name = "cert-soon", kind = "tls", address = "localhost:{soon}", min_days = 14, ca_file = "ca.pem" }}"#
        ),
        format!(
            r#"{{ name = "cert-later", kind = "tls", address = "localhost:{later}", min_days = 14, ca_file = "ca.pem" }}"#
        ),
        format!(r#"{{ name = "untrusted", kind = "tls", address = "localhost:{later}" }}"#),
    ];
    let refs: Vec<&str> = checks.iter().map(String::as_str).collect();
    let text = schedule().job(probe("edge", "1s", &refs).with("timeout = \"10s\"")).to_string();
    let path = dir.path().join("schedules.toml");
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start_with_env(dir.path(), &path, &[("WARDEN_ADMIN_TOKEN", ADMIN)]);
    let public: serde_json::Value = wait_for(Duration::from_secs(60), "a snapshot of the edge probe", || {
        let (_, body) = daemon.get("/health");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["job"] == "edge").then_some(v)
    });
    // What each check saw in detail is the admin API's; `/health` says only a class of it.
    let auth = format!("Bearer {ADMIN}");
    let (_, history) =
        crate::support::http(daemon.addr, "GET", "/admin/health?limit=1", &[("Authorization", &auth)], "").unwrap();
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let health = history["items"][0].clone();
    assert_eq!(health["job"], "edge", "{history}");
    let classes: std::collections::HashMap<String, String> = public["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["error"].as_str().unwrap_or_default().to_owned()))
        .collect();
    for (name, class) in [
        ("fail", "status 500"),
        ("slow", "too slow"),
        ("loop", "too many redirects"),
        ("text", "unexpected answer"),
        ("json", "unexpected answer"),
        ("cache", "connection refused"),
        ("cert-soon", "TLS certificate expires in 5 days"),
        ("untrusted", "TLS error"),
        ("ok", ""),
    ] {
        assert_eq!(classes[name], class, "{name} on /health: {public}");
    }
    assert!(!public.to_string().contains("hello world"), "a target's body is not published: {public}");
    let checks: std::collections::HashMap<String, (bool, String)> = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let error = c["error"].as_str().unwrap_or_default().to_owned();
            (c["name"].as_str().unwrap().to_owned(), (c["ok"].as_bool().unwrap(), error))
        })
        .collect();
    let ok = |name: &str| checks[name].0;
    let error = |name: &str| checks[name].1.clone();
    assert!(ok("ok"), "a redirect followed to a 200 whose /db/up is true: {:?}", checks["ok"]);
    assert!(ok("cert-later"), "60 days left: {:?}", checks["cert-later"]);
    assert_eq!(error("fail"), "status 500 (expected 2xx)");
    assert!(error("slow").starts_with("latency 1.") && error("slow").ends_with("s > 1s"), "{}", error("slow"));
    assert!(error("loop").starts_with("more than 3 redirects"), "{}", error("loop"));
    assert!(
        error("text").contains("does not contain \"goodbye\"") && error("text").contains("hello world"),
        "{}",
        error("text")
    );
    assert_eq!(error("json"), "/status is \"ok\", expected \"down\"");
    assert!(error("cache").starts_with(&format!("connect 127.0.0.1:{closed}:")), "{}", error("cache"));
    assert_eq!(error("cert-soon"), "certificate for localhost expires in 5 days (< 14)");
    assert!(
        error("untrusted").contains("TLS handshake") && error("untrusted").contains("UnknownIssuer"),
        "{}",
        error("untrusted")
    );
    assert_eq!(health["status"], "degraded", "none of them is critical");
}

/// Two named databases beside the default, SQLite and PostgreSQL, probed by one job, each
/// on its own pool; `/health` says which target each check reached, and one that cannot be
/// reached fails alone.
#[test]
fn one_probe_checks_named_sqlite_and_postgres_databases() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(crate::support::TestDb::create());
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let targets = format!(
        "[targets]\ndatabase = \"sqlite://app.db\"\n\
         [targets.databases.reports]\nurl = \"{}\"\npool = 2\n\
         [targets.databases.archive]\nurl = \"sqlite://archive.db\"\n\
         [targets.databases.gone]\nurl = \"postgres://postgres@127.0.0.1:{closed}/nothing\"\n",
        db.url
    );
    let checks = [
        r#"{ name = "app", kind = "db" }"#,
        r#"{ name = "reports", kind = "db", database = "reports" }"#,
        r#"{ name = "reports-sql", kind = "sql", database = "reports", query = "SELECT current_database()" }"#,
        r#"{ name = "archive", kind = "sql", database = "archive", query = "SELECT sqlite_version()" }"#,
        r#"{ name = "gone", kind = "db", database = "gone", critical = false, timeout = "2s" }"#,
    ];
    let gauge = crate::schedule::job("reports-size", "1s", "sql-gauge")
        .with("db = \"reports\"")
        .with("metric = \"reports\"")
        .with("query = \"SELECT 'all' AS part, 3.0::float8 AS rows\"");
    let text = schedule().table(targets).job(probe("dbs", "1s", &checks)).job(gauge).to_string();
    // An empty file is an empty SQLite database; warden does not make an application's.
    std::fs::File::create(dir.path().join("archive.db")).unwrap();
    let path = dir.path().join("schedules.toml");
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start(dir.path(), &path);
    let health: serde_json::Value = wait_for(Duration::from_secs(60), "a snapshot of the dbs probe", || {
        let v: serde_json::Value = serde_json::from_str(&daemon.get("/health").1).ok()?;
        (v["job"] == "dbs").then_some(v)
    });
    let by_name = |name: &str| health["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    for (name, target) in [("reports", "reports"), ("reports-sql", "reports"), ("archive", "archive")] {
        let c = by_name(name);
        assert_eq!((c["ok"].as_bool(), c["target"].as_str()), (Some(true), Some(target)), "{c}");
    }
    assert_eq!(by_name("app")["ok"], true);
    assert!(by_name("app").get("target").is_none(), "the default target is not named");
    let gone = by_name("gone");
    assert_eq!((gone["ok"].as_bool(), gone["target"].as_str()), (Some(false), Some("gone")), "{gone}");
    assert_eq!(health["status"], "degraded", "only the non-critical named database failed");
    // A job names the database it acts on too.
    wait_for(Duration::from_secs(30), "the gauge read from the named PostgreSQL", || {
        daemon
            .get("/metrics")
            .1
            .lines()
            .any(|l| l.starts_with("warden_reports_rows{") && l.ends_with(" 3"))
            .then_some(())
    });
    drop(daemon);
    rt.block_on(db.drop_db());
}

/// An application's SQLite file is probed as the application keeps it. warden leaves its
/// journal mode alone (switching it to WAL needs a lock no busy timeout waits for: the first
/// probes failed, `error`, while the application held a read), and a file that is not there
/// is a failed check, not a new empty database that passes.
#[test]
fn an_application_sqlite_file_is_probed_as_the_application_keeps_it() {
    use sqlx::Connection;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.db");
    // The application: a rollback journal, and a read transaction open the whole time.
    let mut reader = rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&app).create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::raw_sql("CREATE TABLE session (id TEXT); INSERT INTO session VALUES ('a')")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN; SELECT COUNT(*) FROM session").execute(&mut conn).await.unwrap();
        conn
    });
    let checks = [
        crate::schedule::DB,
        crate::schedule::SESSIONS,
        r#"{ name = "typo", kind = "db", database = "typo", critical = false, timeout = "2s" }"#,
    ];
    let text = schedule()
        .target(
            &format!("sqlite://{}", app.display()),
            "demo_schema = false\n[targets.databases.typo]\nurl = \"sqlite://no-such-app.db\"",
        )
        .job(probe("app", "1s", &checks))
        .to_string();
    let path = dir.path().join("schedules.toml");
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start(dir.path(), &path);
    let state = format!("sqlite://{}", dir.path().join("warden-state.db").display());
    let snapshots: Vec<(String, String)> = wait_for(Duration::from_secs(30), "three snapshots of the probe", || {
        let rows: Vec<(String, String)> = rt.block_on(async {
            let pool = sqlx::SqlitePool::connect(&state).await.ok()?;
            sqlx::query_as("SELECT status, checks FROM health_history WHERE job = 'app' ORDER BY id")
                .fetch_all(&pool)
                .await
                .ok()
        })?;
        (rows.len() >= 3).then_some(rows)
    });
    for (status, checks) in &snapshots {
        let checks: serde_json::Value = serde_json::from_str(checks).unwrap();
        let failed: Vec<&str> =
            checks.as_array().unwrap().iter().filter(|c| c["ok"] == false).filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(
            (status.as_str(), failed),
            ("degraded", vec!["typo"]),
            "only the missing file fails, from the first probe on: {checks}"
        );
    }
    let mode: (String,) = rt.block_on(sqlx::query_as("PRAGMA journal_mode").fetch_one(&mut reader)).unwrap();
    assert_eq!(mode.0, "delete", "the application's journal mode is its own");
    assert!(!dir.path().join("no-such-app.db").exists(), "a missing application database is not created");
    drop(daemon);
}
