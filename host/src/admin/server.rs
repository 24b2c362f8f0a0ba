//! The HTTP server the routes face the internet through: hyper's HTTP/1 connection with its
//! header limits and timer, tower-http's request and body timeouts, and a cap on open
//! connections, so slow or idle clients cannot hold warden's sockets or memory.
//!
//! - A client has `header_timeout` to send a request's head, on a new connection and between
//!   requests on a kept-alive one (hyper's header-read timer runs whenever the connection
//!   waits for a head): a slow-header client and an idle one are closed alike.
//! - Heads are capped at 16 KiB and 100 fields (431 beyond); bodies at `BODY_LIMIT` (413),
//!   read under `body_timeout` (408).
//! - Public routes answer within `request_timeout` (408): a store that hangs cannot pile up
//!   requests. The admin API has no such cap (a reload answers once it is swapped in).
//! - At most `max_connections` are open; past it new ones wait in the kernel's backlog until
//!   one closes (at the latest after `header_timeout`). The cap is kept below the file
//!   descriptors the process may open, so databases, reloads and the spool always have some.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// The largest body any route reads (the admin API's JSON; pings cap theirs lower).
pub const BODY_LIMIT: usize = 64 << 10;
const MAX_HEADER_BYTES: usize = 16 << 10;
const MAX_HEADERS: usize = 100;
/// File descriptors kept free of connections (databases, the spool, reloads, components).
const RESERVED_FDS: u64 = 128;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            max_connections: connection_cap(1024),
        }
    }
}

impl From<&crate::config::PublicRoutes> for Limits {
    fn from(http: &crate::config::PublicRoutes) -> Self {
        let defaults = Limits::default();
        Limits {
            header_timeout: http.header_timeout.unwrap_or(defaults.header_timeout),
            body_timeout: http.header_timeout.unwrap_or(defaults.body_timeout),
            request_timeout: http.request_timeout.unwrap_or(defaults.request_timeout),
            max_connections: http.max_connections.map_or(defaults.max_connections, connection_cap),
        }
    }
}

/// `wanted`, lowered to leave `RESERVED_FDS` of the process's open-file limit free.
pub fn connection_cap(wanted: usize) -> usize {
    let soft = open_files_limit().unwrap_or(1024);
    let room = soft.saturating_sub(RESERVED_FDS).max(16);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// The soft `Max open files` of this process (`/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The public routes' own limits: a request timeout, and the headers every answer carries
/// (no sniffing, no framing, a CSP that allows only the status page's own inline style and
/// script, no referrer).
pub fn public_layers(router: Router<Arc<super::Shared>>, limits: Limits) -> Router<Arc<super::Shared>> {
    router.layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
}

/// Headers on every answer.
pub fn security_headers(router: Router) -> Router {
    let csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:; \
               form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    router
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::if_not_present(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp)))
        .layer(SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight finish (up to
/// 10 s).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let app = app
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (or another transient failure): wait, rather
                    // than spin, for one to close.
                    tracing::warn!(error = %e, "could not accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}
