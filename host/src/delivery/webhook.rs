//! Tickets: a JSON POST to the configured webhook with an `Idempotency-Key` header, or a
//! JSON file per ticket when no webhook is configured. A 429 or 503 with `Retry-After` is
//! retried no sooner than it says.

use std::path::PathBuf;
use std::time::Duration;

use super::Failure;
use super::http::{HttpClient, post_json};
use crate::base::text::redact_webhook;

/// Where tickets go.
#[derive(Clone)]
pub enum Tickets {
    Webhook { client: Box<HttpClient>, url: String, timeout: Duration },
    Dir(PathBuf),
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tickets::Webhook { url, .. } => write!(f, "Tickets::Webhook({})", redact_webhook(url)),
            Tickets::Dir(dir) => write!(f, "Tickets::Dir({})", dir.display()),
        }
    }
}

impl Tickets {
    pub fn new(config: &crate::config::TicketsConfig, client: &HttpClient) -> Result<Tickets, String> {
        let Some(url) = &config.webhook else { return Ok(Tickets::Dir(config.dir.clone())) };
        url.parse::<hyper::Uri>().map_err(|e| format!("invalid webhook URL `{}`: {e}", redact_webhook(url)))?;
        Ok(Tickets::Webhook { client: Box::new(client.clone()), url: url.clone(), timeout: config.timeout.std() })
    }

    /// Files or POSTs one ticket event (with an `Idempotency-Key` header).
    pub async fn send(&self, body: &serde_json::Value, idempotency_key: &str, name: &str) -> Result<String, Failure> {
        match self {
            Tickets::Dir(dir) => {
                let bytes = serde_json::to_vec_pretty(body).map_err(|e| Failure::Permanent(e.to_string()))?;
                let path = dir.join(format!("{name}.json"));
                super::mail::write_atomically(&path, &bytes)
                    .map_err(|e| Failure::Retry(format!("cannot write {}: {e}", path.display())))?;
                Ok(format!("written to {}", path.display()))
            }
            Tickets::Webhook { client, url, timeout } => {
                let headers = [("Idempotency-Key".to_owned(), idempotency_key.to_owned())];
                post_json(client, url, &headers, body, *timeout, "webhook").await
            }
        }
    }
}
