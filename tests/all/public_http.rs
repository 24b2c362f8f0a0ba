//! The public HTTP surface as the internet meets it, through the binary: `/health` is the
//! probes' worst newest snapshot and pings never move it; pings are checked before their body
//! is read, capped and coalesced; slow and idle clients are cut off by the server's timeouts
//! while `/health` goes on answering; the status page is cached over a million snapshots;
//! an `http` check's credentials stay with its origin; secrets are masked in logs; warden's
//! files are private; every answer carries the security headers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::schedule::{DB, probe, schedule};
use crate::support::{Daemon, free_port, http, wait_for, warden};

const TOKEN: &str = "ping-token-0123456789abcdef";
const ADMIN: &str = "public-admin-token-0123456789";

fn heartbeat(period: &str) -> String {
    format!(
        "[[job]]\nname = \"backup\"\ntask = \"heartbeat\"\nperiod = \"{period}\"\ngrace = \"1s\"\ntoken = \"{TOKEN}\"\n"
    )
}

fn ping(addr: SocketAddr, body: &str) -> u16 {
    http(addr, "POST", "/ping/backup", &[("Authorization", &format!("Bearer {TOKEN}"))], body).map_or(0, |r| r.0)
}

fn health(daemon: &Daemon) -> (u16, serde_json::Value) {
    let (code, body) = daemon.get("/health");
    (code, serde_json::from_str(&body).unwrap_or_default())
}

/// Sends `raw` on a new connection and reads the answer's status line within `within`.
fn raw_status(addr: SocketAddr, raw: &[u8], within: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(within)).ok()?;
    stream.write_all(raw).ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n]).split(' ').nth(1)?.parse().ok()
}

#[test]
fn health_is_the_probes_worst_and_pings_never_change_it() {
    let closed = free_port();
    let down = format!(
        r#"{{ name = "cache", kind = "tcp", address = "127.0.0.1:{closed}", critical = true, timeout = "1s" }}"#
    );

    // Two probes up and a heartbeat that misses its deadline: the service is up.
    let (dir, path) =
        schedule().job(probe("web", "1s", &[DB])).job(probe("api", "1s", &[DB])).table(heartbeat("1s")).write();
    let daemon = Daemon::start(dir.path(), &path);
    wait_for(Duration::from_secs(30), "both probes", || {
        let (code, v) = health(&daemon);
        (code == 200 && v["jobs"].as_array()?.len() == 2).then_some(())
    });
    // The heartbeat pinged, and failing.
    let fail = |addr| http(addr, "POST", "/ping/backup/fail", &[("Authorization", &format!("Bearer {TOKEN}"))], "");
    assert_eq!(fail(daemon.addr).unwrap().0, 200);
    wait_for(Duration::from_secs(30), "the heartbeat down on its own badge", || {
        daemon.get("/badge/backup.json").1.contains("down").then_some(())
    });
    for _ in 0..20 {
        let (code, v) = health(&daemon);
        assert_eq!((code, v["status"].as_str()), (200, Some("operational")), "{v}");
        let jobs: Vec<&str> = v["jobs"].as_array().unwrap().iter().map(|j| j["job"].as_str().unwrap()).collect();
        assert!(!jobs.contains(&"backup"), "a heartbeat counts only where its job says so: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(daemon);

    // One probe down, the heartbeat pinged all along: the service is down, whoever reported last.
    let (dir, path) =
        schedule().job(probe("web", "1s", &[DB])).job(probe("cache", "1s", &[&down])).table(heartbeat("1h")).write();
    let daemon = Daemon::start(dir.path(), &path);
    wait_for(Duration::from_secs(30), "both probes", || {
        let (_, v) = health(&daemon);
        (v["jobs"].as_array()?.len() == 2).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(ping(daemon.addr, "ok"), 200);
        let (code, v) = health(&daemon);
        assert_eq!((code, v["status"].as_str(), v["job"].as_str()), (503, Some("error"), Some("cache")), "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `health = true` makes a heartbeat count; `health = false` takes a probe out.
    let text = schedule()
        .job(probe("web", "1s", &[DB]))
        .job(probe("cache", "1s", &[&down]).with("health = false"))
        .table(heartbeat("1h") + "health = true\n")
        .to_string();
    std::fs::write(&path, text).unwrap();
    wait_for(Duration::from_secs(30), "the reload", || {
        let (code, v) = health(&daemon);
        let jobs: Vec<String> =
            v["jobs"].as_array()?.iter().filter_map(|j| Some(j["job"].as_str()?.to_owned())).collect();
        (code == 200 && jobs.contains(&"backup".to_owned()) && !jobs.contains(&"cache".to_owned())).then_some(())
    });
}

#[test]
fn pings_are_checked_before_their_body_capped_and_coalesced() {
    let (dir, path) = schedule().table(heartbeat("1h")).write();
    let daemon = Daemon::start_with_env(dir.path(), &path, &[("WARDEN_ADMIN_TOKEN", ADMIN)]);
    // A wrong token with a 2 MB body announced: refused at once, the body never read.
    let raw = b"POST /ping/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-000000\r\nContent-Length: 2000000\r\n\r\n";
    assert_eq!(raw_status(daemon.addr, raw, Duration::from_secs(2)), Some(401));
    let raw = b"POST /ping/nobody HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n";
    assert_eq!(raw_status(daemon.addr, raw, Duration::from_secs(2)), Some(404));
    // The right token and 20 KiB: too large.
    assert_eq!(ping(daemon.addr, &"x".repeat(20 << 10)), 413);

    // 500 pings as fast as they go: at most two runs (the heartbeat also checks its deadline
    // on its own cadence: those are `schedule` runs; the pings' are `manual`), and the flood
    // refused past the burst.
    let auth = format!("Bearer {ADMIN}");
    let manual = || {
        let (_, runs) =
            http(daemon.addr, "GET", "/admin/jobs/backup/runs?limit=500", &[("Authorization", &auth)], "").unwrap();
        let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
        runs["items"].as_array().unwrap().iter().filter(|r| r["trigger"] == "manual").count() as u64
    };
    let before = manual();
    let started = Instant::now();
    let mut codes = std::collections::HashMap::new();
    for _ in 0..500 {
        *codes.entry(ping(daemon.addr, "")).or_insert(0) += 1;
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(2500));
    let runs = manual() - before;
    assert!(codes.get(&429).copied().unwrap_or(0) > 0 || took > Duration::from_secs(20), "{codes:?} in {took:?}");
    let seconds = took.as_secs() + 2;
    assert!(runs >= 1 && runs <= seconds, "{runs} runs for 500 pings in {took:?} ({codes:?})");
}

#[test]
fn slow_and_idle_clients_are_cut_off_while_health_answers() {
    let (dir, path) = schedule().table("[http]\nheader_timeout = \"2s\"").job(probe("web", "1s", &[DB])).write();
    let daemon = Daemon::start(dir.path(), &path);
    daemon.wait_operational(Duration::from_secs(30));
    let mut held = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(daemon.addr).unwrap();
        if i % 2 == 0 {
            // Slow headers: a start that never ends.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        }
        held.push(s);
    }
    let status = raw_status(daemon.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(1));
    assert_eq!(status, Some(200), "/health answers beside 200 slow clients");
    // The server closes every one of them once the header timeout passes.
    std::thread::sleep(Duration::from_secs(3));
    let mut open = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            // hyper may answer 408 before it closes; the next read is the close.
            Ok(_) => {
                if !matches!(s.read(&mut buf), Ok(0) | Err(_)) {
                    open += 1;
                }
            }
        }
    }
    assert_eq!(open, 0, "connections still open after the header timeout");
    // A head past 16 KiB is refused.
    let big = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "y".repeat(20 << 10));
    assert_eq!(raw_status(daemon.addr, big.as_bytes(), Duration::from_secs(2)), Some(431));
}

#[test]
fn the_status_page_over_a_million_snapshots_answers_and_is_cached() {
    let (dir, path) = schedule().job(probe("web", "1s", &[DB])).job(probe("quiet", "1h", &[DB])).write();
    let daemon = Daemon::start(dir.path(), &path);
    daemon.wait_operational(Duration::from_secs(30));
    // A million snapshots over the last 30 days, in one statement.
    let state = dir.path().join("warden-state.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&state).busy_timeout(Duration::from_secs(30));
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) \
             INSERT INTO health_history (job, checked_at, status, duration_ms, checks) \
             SELECT 'web', strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (i * 2.5) || ' seconds'), \
                    CASE WHEN i % 97 = 0 THEN 'error' ELSE 'operational' END, 3, '[]' FROM n",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });
    // The first render reads the million rows (seconds in a debug build beside other tests).
    let (code, _, first) = get_patiently(daemon.addr, "/");
    assert_eq!(code, 200);
    assert!(first.contains("id=\"uptime\"") && first.contains("%</strong>"), "{first}");
    daemon.wait_runs("web", 1);
    let (_, _, again) = get_patiently(daemon.addr, "/");
    assert_eq!(first, again, "served from the cache (the probe ran meanwhile)");
    let (code, headers) = head(daemon.addr, "/");
    assert_eq!(code, 200);
    assert!(headers.contains("cache-control: public, max-age=15"), "{headers}");
    // A job with few snapshots beside the million: its badge reads its own range.
    let (code, badge) = daemon.get("/badge/quiet.json");
    assert_eq!(code, 200, "{badge}");
}

/// A GET that waits up to two minutes: its status, its head (lowercased) and its body.
fn get_patiently(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_owned())
}

/// The status line and headers (lowercased) of a GET.
fn head(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, head, _) = get_patiently(addr, path);
    (code, head)
}

#[test]
fn every_answer_has_the_security_headers_and_bearer_is_case_insensitive() {
    let (dir, path) = schedule().job(probe("web", "1s", &[DB])).write();
    let daemon = Daemon::start_with_env(dir.path(), &path, &[("WARDEN_ADMIN_TOKEN", ADMIN)]);
    daemon.wait_operational(Duration::from_secs(30));
    for route in ["/", "/health", "/badge/web.svg", "/nowhere"] {
        let (_, headers) = head(daemon.addr, route);
        for needed in
            ["x-content-type-options: nosniff", "x-frame-options: deny", "content-security-policy: default-src 'none'"]
        {
            assert!(headers.contains(needed), "{route}: {needed} in {headers}");
        }
    }
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {ADMIN}");
        let (code, _) = http(daemon.addr, "GET", "/admin/jobs", &[("Authorization", &auth)], "").unwrap();
        assert_eq!(code, 200, "{scheme}");
    }
    let (code, _) =
        http(daemon.addr, "GET", "/admin/jobs", &[("Authorization", &format!("Basic {ADMIN}"))], "").unwrap();
    assert_eq!(code, 401);
}

#[test]
fn a_postgres_password_in_the_query_is_masked_and_warden_s_files_are_private() {
    let closed = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{closed}/app?password=hunter2-secret&sslmode=disable");
    let (dir, path) = schedule().target(&url, "").job(probe("web", "1s", &[DB])).write();
    let (_, out, err) = warden(dir.path(), &["check", "--connect"]);
    assert!(!out.contains("hunter2") && !err.contains("hunter2"), "{out}{err}");
    let daemon = Daemon::start(dir.path(), &path);
    wait_for(Duration::from_secs(30), "a failed probe", || (daemon.get("/health").0 == 503).then_some(()));
    let log = daemon.log();
    assert!(!log.contains("hunter2"), "{log}");
    let (_, health) = daemon.get("/health");
    assert!(!health.contains("hunter2"), "{health}");

    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    for file in ["warden-state.db", "warden-state.db-wal"] {
        assert_eq!(mode(&dir.path().join(file)).ok(), Some(0o600), "{file}");
    }
    assert_eq!(mode(&dir.path().join(".warden")).ok(), Some(0o700), ".warden");
}

/// A server that says 302 to `location` for every request, and remembers the
/// `Authorization` header of each request it got.
fn redirecting(location: impl Fn(u16) -> String + Send + 'static) -> (u16, std::sync::mpsc::Receiver<Option<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut auth = None;
            loop {
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = Some(v.trim().to_owned());
                }
            }
            let _ = tx.send(auth);
            let mut out = stream;
            let target = location(port);
            let _ = write!(
                out,
                "HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, rx)
}

#[test]
fn a_redirect_to_another_origin_drops_the_check_s_credentials_and_https_to_http_is_refused() {
    // B answers 302 to itself on /landing (so the check ends); A sends everyone to B.
    let (b, seen_by_b) = redirecting(|port| format!("http://127.0.0.1:{port}/landing"));
    let (a, seen_by_a) = redirecting(move |_| format!("http://127.0.0.1:{b}/landing"));
    let check = format!(
        r#"{{ name = "site", kind = "http", url = "http://127.0.0.1:{a}/", max_redirects = 1, headers = {{ Authorization = "Bearer s3cret-credential" }} }}"#
    );
    let (dir, path) = schedule().job(probe("web", "1h", &[&check])).write();
    let daemon = Daemon::start(dir.path(), &path);
    let at_a = seen_by_a.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(at_a.as_deref(), Some("bearer s3cret-credential"), "the configured origin gets it");
    let at_b = seen_by_b.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(at_b, None, "another port is another origin: no credential");
    drop(daemon);

    // https → http: an error, and nothing sent to the http side.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let tls = tls_redirect(&rt, &ca, format!("http://127.0.0.1:{b}/landing"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let check = format!(
        r#"{{ name = "site", kind = "http", url = "https://localhost:{tls}/", ca_file = "ca.pem", headers = {{ Authorization = "Bearer s3cret-credential" }} }}"#
    );
    let path = dir.path().join("schedules.toml");
    std::fs::write(&path, schedule().job(probe("web", "1s", &[&check])).to_string()).unwrap();
    let daemon = Daemon::start_with_env(dir.path(), &path, &[("WARDEN_ADMIN_TOKEN", ADMIN)]);
    let public = wait_for(Duration::from_secs(30), "the check's result", || {
        let (_, v) = health(&daemon);
        v["checks"][0]["error"].as_str().map(str::to_owned)
    });
    assert_eq!(public, "redirect to http refused");
    let auth = format!("Bearer {ADMIN}");
    let (_, history) = http(daemon.addr, "GET", "/admin/health?limit=1", &[("Authorization", &auth)], "").unwrap();
    assert!(history.contains("a redirect from https to http refused"), "{history}");
    assert!(seen_by_b.try_recv().is_err(), "nothing reached the http side");
}

/// An HTTPS server for `localhost` (signed by `ca`) that answers every request with a 302
/// to `location`.
fn tls_redirect(
    rt: &tokio::runtime::Runtime,
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    location: String,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = crate::checks::tls_acceptor(ca, 60);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (acceptor, location) = (acceptor.clone(), location.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut buf = vec![0u8; 8192];
                let _ = tls.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// The status page's numbers, counted in SQL, the same on SQLite and PostgreSQL: uptime per
/// window, the worst status per bucket, each job's changes (newest first).
#[tokio::test]
async fn the_status_page_counts_in_sql_on_both_backends() {
    use chrono::Utc;
    use warden::health::Status;
    let pg = crate::support::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let minutes = |m: i64| now - chrono::Duration::minutes(m);
    for url in [format!("sqlite://{}", dir.path().join("state.db").display()), pg.url.clone()] {
        let config =
            warden::config::StateConfig { url: warden::config::DbUrl::parse(&url, dir.path()).unwrap(), pool: 2 };
        let store = warden::store::StateStore::open(&config).await.unwrap();
        // web: up, down 20 minutes ago for 5 minutes, up; api: degraded an hour ago; other: ignored.
        let rows = [
            ("web", 100, "operational"),
            ("web", 20, "error"),
            ("web", 16, "error"),
            ("web", 14, "operational"),
            ("api", 70, "operational"),
            ("api", 59, "degraded"),
            ("other", 10, "error"),
        ];
        for (job, ago, status) in rows {
            let sql = "INSERT INTO health_history (job, checked_at, status, duration_ms, checks) VALUES ($1, $2, $3, 1, '[]')";
            warden::with_pool!(store.pool(), |p| sqlx::query(sql)
                .bind(job)
                .bind(warden::db::Ts(minutes(ago)))
                .bind(status)
                .execute(p)
                .await
                .map(|_| ())
                .unwrap());
        }
        let jobs = vec!["web".to_owned(), "api".to_owned()];
        let windows = store.uptime_windows([minutes(90), minutes(30), minutes(15)], &jobs).await.unwrap();
        assert_eq!(windows, [(5, 2), (3, 2), (1, 0)], "{url}");
        let buckets = store.status_buckets(minutes(120), 15 * 60, 8, &jobs).await.unwrap();
        // Buckets of 15 minutes from two hours ago: 100 min ago in #1, 70 and 59 in #3 and #4,
        // 20 and 16 in #6, 14 in #7.
        assert_eq!(
            buckets,
            [
                None,
                Some(Status::Operational),
                None,
                Some(Status::Operational),
                Some(Status::Degraded),
                None,
                Some(Status::Error),
                Some(Status::Operational)
            ],
            "{url}"
        );
        let changes: Vec<(String, Status, Status)> = store
            .status_changes(minutes(120), 10, &jobs)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, job, from, to)| (job, from, to))
            .collect();
        assert_eq!(
            changes,
            [
                ("web".to_owned(), Status::Error, Status::Operational),
                ("web".to_owned(), Status::Operational, Status::Error),
                ("api".to_owned(), Status::Operational, Status::Degraded),
            ],
            "{url}"
        );
        let newest = store.newest_of(&["web".to_owned(), "api".to_owned(), "never".to_owned()]).await.unwrap();
        let mut newest: Vec<(String, Status)> = newest.into_iter().map(|s| (s.job, s.status)).collect();
        newest.sort();
        assert_eq!(newest, [("api".to_owned(), Status::Degraded), ("web".to_owned(), Status::Operational)], "{url}");
        store.pool().close().await;
    }
    pg.drop_db().await;
}
