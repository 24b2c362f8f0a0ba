//! Test helpers: a fresh Postgres database per test, the warden binary as a child
//! process, a plain HTTP GET, free ports, and servers that misbehave on purpose.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The server tests create their databases on (trust auth, as on these machines).
pub fn pg_admin_url() -> String {
    std::env::var("WARDEN_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test; dropped by `drop_db` (and swept by the test script).
pub struct TestDb {
    pub name: String,
    pub url: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = unique("warden_t");
        let admin =
            sqlx::PgPool::connect(&pg_admin_url()).await.expect("Postgres must be running (see scripts/test.sh)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
        admin.close().await;
        let base = pg_admin_url();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        TestDb { name, url }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.unwrap()
    }

    pub async fn drop_db(self) {
        let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await.unwrap();
        admin.close().await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port that accepts TCP connections and never says a word.
pub fn silent_server() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
            if held.len() > 64 {
                break;
            }
        }
    });
    (addr, handle)
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http(addr, "GET", path, &[], "")
}

/// A minimal HTTP/1.1 request with extra headers: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    let body = if response.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(&body) } else { body };
    Ok((status, body))
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn warden_bin() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

/// Runs a warden subcommand to completion: (exit code, stdout, stderr).
/// The compiled-component cache every test shares (`WARDEN_CACHE_DIR` for the binary, the
/// in-process engine's too): each component compiles once per machine, not once per test.
pub fn shared_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm-cache")
}

pub fn warden(dir: &Path, args: &[&str]) -> (i32, String, String) {
    warden_with_env(dir, args, &[])
}

/// As `warden`, with extra environment variables.
pub fn warden_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(warden_bin())
        .args(args)
        .current_dir(dir)
        .env("WARDEN_LOG", "warn")
        .env("NO_COLOR", "1")
        .env("WARDEN_CACHE_DIR", shared_cache())
        .env_remove("WARDEN_ADMIN_TOKEN")
        .env_remove("WARDEN_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `warden run`; killed on drop if still alive.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, config: &Path) -> Daemon {
        Self::start_with_env(dir, config, &[])
    }

    /// As `start`, with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.join(format!("warden-{port}.log"));
        let child = Command::new(warden_bin())
            .args(["run", "--config", config.to_str().unwrap(), "--listen", &addr.to_string()])
            .current_dir(dir)
            .env("WARDEN_LOG", "info")
            .env("NO_COLOR", "1")
            .env("WARDEN_CACHE_DIR", shared_cache())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, addr, log };
        wait_for(Duration::from_secs(30), "warden to listen", || http_get(addr, "/metrics").ok());
        daemon
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).unwrap()
    }

    /// Waits until `/health` says operational (a degraded status answers 200 too).
    pub fn wait_operational(&self, within: Duration) {
        wait_for(within, "an operational status", || {
            let (code, body) = self.get("/health");
            (code == 200 && body.contains("\"status\":\"operational\"")).then_some(())
        });
    }

    /// Finished runs of `job` so far, every outcome, from `/metrics`.
    pub fn runs(&self, job: &str) -> u64 {
        let (_, body) = self.get("/metrics");
        let prefix = format!("warden_job_runs_total{{job=\"{job}\",");
        let total: f64 = body
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        total as u64
    }

    /// Waits until `n` more runs of `job` finished (recorded, or spooled): the proof that
    /// the daemon went on working, where a fixed sleep would only hope so. Assertions that
    /// "nothing else happened" come after it.
    pub fn wait_runs(&self, job: &str, n: u64) {
        let start = self.runs(job);
        let what = format!("{n} more runs of `{job}`");
        wait_for(Duration::from_secs(30 + 5 * n), &what, || (self.runs(job) >= start + n).then_some(()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then the exit code (panics if it does not exit within `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> Option<i32> {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "warden did not exit after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3-compatible server (moto) on a free port, stopped on drop.
pub struct S3Server {
    pub child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_owned());
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{bin}` ({e}); scripts/test.sh installs it (pip install 'moto[server]')")
            });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for(Duration::from_secs(30), "the S3 server", || http_get(addr, "/").ok());
        S3Server { child, endpoint: format!("http://{addr}") }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A temporary folder holding a schedule file with `body`.
pub fn schedule_dir(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schedules.toml");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

/// A TCP proxy the test can cut and restore, to make a server unreachable without
/// stopping it. While cut, open connections are closed and new ones refused at once.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (cut2, gen2) = (cut.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if cut2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let born = gen2.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let (cut3, gen3) = (cut2.clone(), gen2.clone());
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if cut3.load(Ordering::SeqCst) || gen3.load(Ordering::SeqCst) != born {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, generation }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
