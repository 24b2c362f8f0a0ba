//! The public HTTP surface under load (prints a table): `cargo bench -p warden --bench
//! public_http`. The real server (`admin::server::serve`, the routes, the limits) on
//! loopback, on the daemon's one-worker runtime, over an embedded SQLite store seeded with N
//! snapshots in one statement:
//! - the status page: one render without the cache (what every request cost before it was
//!   cached) and requests per second from one keep-alive client once cached, at 10^4, 10^6
//!   and 10^7 snapshots (`--bench`; the smoke run, as `cargo test --all-targets` runs it,
//!   does 10^4);
//! - `/health` latency (median, p99) alone and while 1,000 slow-header connections are held.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use warden::health::{CheckResult, Snapshot, Status};

/// A keep-alive HTTP/1.1 client: one GET, the status and the body's length.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    fn get(&mut self, path: &str) -> (u16, usize) {
        write!(self.reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let code = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        (code, length)
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        job: "web".into(),
        status: Status::Operational,
        checked_at: Utc::now(),
        duration_ms: 3,
        checks: vec![CheckResult {
            name: "db".into(),
            kind: "db".into(),
            critical: true,
            ok: true,
            error: None,
            duration_ms: 1,
            target: None,
        }],
    }
}

/// A served warden over a state store with `snapshots` rows: its address.
fn serve(rt: &tokio::runtime::Runtime, dir: &std::path::Path, snapshots: u64) -> SocketAddr {
    let path = dir.join("schedules.toml");
    std::fs::write(
        &path,
        "version = 1\n[[job]]\nname = \"web\"\nevery = \"30s\"\ntask = \"probe\"\n\
         checks = [{ name = \"db\", kind = \"db\", critical = true }]\n",
    )
    .unwrap();
    rt.block_on(async {
        let config = warden::config::load(&path).unwrap();
        let store = warden::store::StateStore::open(&config.state).await.unwrap();
        if snapshots > 0 {
            let warden::db::Pool::Sqlite(pool) = store.pool() else { unreachable!() };
            let sql = format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {snapshots}) \
                 INSERT INTO health_history (job, checked_at, status, duration_ms, checks) \
                 SELECT 'web', strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (i * {step}) || ' seconds'), \
                        CASE WHEN i % 97 = 0 THEN 'error' ELSE 'operational' END, 3, '[]' FROM n",
                step = 30.0 * 86_400.0 / snapshots as f64
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await.unwrap();
        }
        let targets = warden::targets::Targets::open(&config.targets).await.unwrap();
        let channels = Arc::new(warden::delivery::Channels::with_secret(&config, targets, None).unwrap());
        let shared = warden::admin::Shared::with_delivery(
            warden::metrics::install(),
            vec![snapshot()],
            store,
            channels,
            Arc::new(config),
            None,
        );
        // Long enough for a cold render over 10^7 snapshots to be timed, not cut off.
        let limits = warden::admin::server::Limits {
            request_timeout: Duration::from_secs(600),
            ..warden::admin::server::Limits::default()
        };
        let app = warden::admin::router_with(shared, limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warden::admin::server::serve(listener, app, limits, std::future::pending()));
        addr
    })
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[u64] = if full { &[10_000, 1_000_000, 10_000_000] } else { &[10_000] };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    println!("public HTTP benchmark ({} run)", if full { "full" } else { "smoke" });
    println!("{:<14} {:>16} {:>18} {:>14}", "snapshots", "seed s", "uncached page ms", "cached req/s");
    let mut addr = None;
    for &n in sizes {
        let dir = std::env::temp_dir().join(format!("warden-bench-http-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Instant::now();
        let served = serve(&rt, &dir, n);
        let seed = t.elapsed().as_secs_f64();
        let mut client = Client::connect(served);
        let t = Instant::now();
        assert_eq!(client.get("/").0, 200);
        let uncached = t.elapsed().as_secs_f64() * 1e3;
        let window = Duration::from_secs(if full { 3 } else { 1 });
        let (t, mut count) = (Instant::now(), 0u64);
        while t.elapsed() < window {
            assert_eq!(client.get("/").0, 200);
            count += 1;
        }
        let rate = count as f64 / t.elapsed().as_secs_f64();
        println!("{n:<14} {seed:>16.1} {uncached:>18.1} {rate:>14.0}");
        addr = Some(served);
        if n != *sizes.last().unwrap() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let addr = addr.unwrap();
    let requests = if full { 5_000 } else { 500 };
    let health = |label: &str| {
        let mut client = Client::connect(addr);
        let mut samples = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            let (code, _) = client.get("/health");
            samples.push(t.elapsed());
            assert_eq!(code, 200);
        }
        println!(
            "/health {label:<40} median {:>7.3} ms   p99 {:>7.3} ms",
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99)
        );
    };
    health("alone");
    let slow = if full { 1_000 } else { 100 };
    let held: Vec<TcpStream> = (0..slow)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    health(&format!("with {slow} slow-header connections held"));
    drop(held);
}
