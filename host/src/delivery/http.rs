//! One JSON POST to a receiver, its answer read the same way for every provider: 2xx is
//! delivered; 408, 429, 5xx, a timeout or a connection error is retried (a 429 or 503 with
//! `Retry-After` no sooner than it says); any other 4xx failed at once with what the
//! provider said. URLs are secrets: messages name the host only.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Failure;
use crate::base::text::redact_webhook;

/// The HTTPS (or plain HTTP) client every receiver shares. Cheap to clone.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn client() -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// The most of a provider's answer kept in a message.
const SAID: usize = 300;

/// POSTs `body` as JSON to `url` with `headers`, under `timeout`.
pub async fn post_json(
    client: &HttpClient,
    url: &str,
    headers: &[(String, String)],
    body: &serde_json::Value,
    timeout: Duration,
    what: &str,
) -> Result<String, Failure> {
    let shown = redact_webhook(url);
    let uri: hyper::Uri = url.parse().map_err(|_| Failure::Permanent(format!("{what}: `{shown}` is not a URL")))?;
    let bytes = serde_json::to_vec(body).map_err(|e| Failure::Permanent(e.to_string()))?;
    let mut request = hyper::Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("warden/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| Failure::Permanent(format!("{what}: cannot build the request: {e}")))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| Failure::Retry(format!("{what} {shown}: {e}")))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| super::parse_retry_after(v, chrono::Utc::now()));
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let said = String::from_utf8_lossy(&body[..body.len().min(SAID)]).into_owned();
        if status.is_success() {
            Ok(format!("{what} answered {status}"))
        } else if let (429 | 503, Some(after)) = (status.as_u16(), retry_after) {
            Err(Failure::Throttled(
                format!("{what} answered {status} (retry after {}s): {said}", after.as_secs()),
                after,
            ))
        } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(Failure::Retry(format!("{what} answered {status}: {said}")))
        } else {
            Err(Failure::Permanent(format!("{what} answered {status}: {said}")))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Retry(format!("{what} {shown}: no answer within {}s", timeout.as_secs_f64()))),
    }
}
