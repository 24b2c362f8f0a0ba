//! Tickets: a JSON POST to the configured webhook with an `Idempotency-Key` header, or a
//! JSON file per ticket when no webhook is configured. A 429 or 503 with `Retry-After` is
//! retried no sooner than it says.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Failure;
use crate::base::text::redact_webhook;

/// Where tickets go.
#[derive(Clone)]
pub enum Tickets {
    Webhook {
        client: Box<Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>>,
        url: hyper::Uri,
        timeout: Duration,
    },
    Dir(PathBuf),
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tickets::Webhook { url, .. } => write!(f, "Tickets::Webhook({})", redact_webhook(&url.to_string())),
            Tickets::Dir(dir) => write!(f, "Tickets::Dir({})", dir.display()),
        }
    }
}

impl Tickets {
    pub fn new(config: &crate::config::TicketsConfig) -> Result<Tickets, String> {
        let Some(url) = &config.webhook else { return Ok(Tickets::Dir(config.dir.clone())) };
        let url: hyper::Uri = url.parse().map_err(|e| format!("invalid webhook URL `{}`: {e}", redact_webhook(url)))?;
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        let client = Box::new(Client::builder(TokioExecutor::new()).build(https));
        Ok(Tickets::Webhook { client, url, timeout: config.timeout.std() })
    }

    /// Files or POSTs one ticket. 2xx is delivered; 408, 429, 5xx, a timeout or a
    /// connection error is retried; any other 4xx is a permanent failure.
    pub async fn send(&self, body: &serde_json::Value, idempotency_key: &str, name: &str) -> Result<String, Failure> {
        let bytes = serde_json::to_vec_pretty(body).map_err(|e| Failure::Permanent(e.to_string()))?;
        match self {
            Tickets::Dir(dir) => {
                let path = dir.join(format!("{name}.json"));
                super::mail::write_atomically(&path, &bytes)
                    .map_err(|e| Failure::Retry(format!("cannot write {}: {e}", path.display())))?;
                Ok(format!("written to {}", path.display()))
            }
            Tickets::Webhook { client, url, timeout } => {
                let request = hyper::Request::post(url.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .header(hyper::header::USER_AGENT, concat!("warden/", env!("CARGO_PKG_VERSION")))
                    .header("Idempotency-Key", idempotency_key)
                    .body(Full::new(Bytes::from(bytes)))
                    .map_err(|e| Failure::Permanent(format!("cannot build the request: {e}")))?;
                // The URL's path is often its secret: messages (kept as the row's last error,
                // shown by the admin API) name the host only.
                let shown = redact_webhook(&url.to_string());
                let exchange = async {
                    let response =
                        client.request(request).await.map_err(|e| Failure::Retry(format!("webhook {shown}: {e}")))?;
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(hyper::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| super::parse_retry_after(v, chrono::Utc::now()));
                    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let said = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    if status.is_success() {
                        Ok(format!("webhook answered {status}"))
                    } else if let (429 | 503, Some(after)) = (status.as_u16(), retry_after) {
                        Err(Failure::Throttled(
                            format!("webhook answered {status} (retry after {}s): {said}", after.as_secs()),
                            after,
                        ))
                    } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                        Err(Failure::Retry(format!("webhook answered {status}: {said}")))
                    } else {
                        Err(Failure::Permanent(format!("webhook answered {status}: {said}")))
                    }
                };
                match tokio::time::timeout(*timeout, exchange).await {
                    Ok(result) => result,
                    Err(_) => {
                        Err(Failure::Retry(format!("webhook {shown}: no answer within {}s", timeout.as_secs_f64())))
                    }
                }
            }
        }
    }
}
