//! The network checks of a probe: `http` (status, body, JSON pointer, latency, redirects
//! followed up to a bound, TLS verified), `tcp` (a connection) and `tls` (a verified
//! handshake and days left on the certificate). Each error says what was seen.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

use crate::config::HttpCheck;

/// The most of a body an `http` check reads.
const MAX_BODY: usize = 1 << 20;

/// The TLS configuration: the public roots, and the PEM certificates of `ca_file` if given.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    static PUBLIC: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let build = |extra: Vec<CertificateDer<'static>>| -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for cert in extra {
            roots.add(cert).map_err(|e| format!("a CA certificate is not usable: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    };
    match ca_file {
        None => match PUBLIC.get() {
            Some(config) => Ok(config.clone()),
            None => Ok(PUBLIC.get_or_init(|| build(Vec::new()).expect("the public roots load")).clone()),
        },
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            build(certs)
        }
    }
}

/// `1.2s`, `850ms`.
fn shown(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{}ms", d.as_millis()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

/// Scheme, host and port (the default port made explicit).
fn origin_of(uri: &hyper::Uri) -> (Option<String>, Option<String>, Option<u16>) {
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    let port = uri.port_u16().or(match scheme.as_deref() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    (scheme, uri.host().map(str::to_ascii_lowercase), port)
}

/// Where a redirect's `Location` points, from `base`.
fn resolve(base: &hyper::Uri, location: &str) -> Option<hyper::Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let origin = format!("{}://{}", base.scheme_str()?, base.authority()?);
    if location.starts_with('/') {
        return format!("{origin}{location}").parse().ok();
    }
    let path = base.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{origin}{dir}{location}").parse().ok()
}

/// One `http` check: the answer (after redirects) must have an expected status, contain the
/// text, hold the JSON value, and come within `max_latency`.
pub async fn http(check: &HttpCheck) -> Result<(), String> {
    let config = tls_config(check.ca_file.as_deref())?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let started = Instant::now();
    let mut uri: hyper::Uri = check.url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let mut method: hyper::Method = check.method.parse().map_err(|_| format!("invalid method {}", check.method))?;
    let mut redirects = 0;
    // The configured headers (credentials among them) go to the configured origin only: a
    // redirect to another scheme, host or port drops them, as curl does.
    let origin = origin_of(&uri);
    let response = loop {
        let mut request = hyper::Request::builder().method(method.clone()).uri(uri.clone());
        request = request.header(hyper::header::USER_AGENT, concat!("warden/", env!("CARGO_PKG_VERSION")));
        if origin_of(&uri) == origin {
            for (name, value) in &check.headers {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let request = request.body(Empty::new()).map_err(|e| format!("cannot build the request: {e}"))?;
        let response = client.request(request).await.map_err(|e| {
            use std::error::Error;
            let mut text = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            text
        })?;
        let status = response.status();
        if !status.is_redirection() || check.expect_status.contains(&status.as_u16()) {
            break response;
        }
        let Some(location) = response.headers().get(hyper::header::LOCATION).and_then(|v| v.to_str().ok()) else {
            break response;
        };
        if redirects == check.max_redirects {
            return Err(format!("more than {} redirects (last to {location})", check.max_redirects));
        }
        redirects += 1;
        let next = resolve(&uri, location).ok_or_else(|| format!("status {status}: a redirect to `{location}`"))?;
        if uri.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
            return Err(format!(
                "status {status}: a redirect from https to {} refused",
                next.scheme_str().unwrap_or("?")
            ));
        }
        uri = next;
        if status == hyper::StatusCode::SEE_OTHER {
            method = hyper::Method::GET;
        }
    };
    let status = response.status().as_u16();
    let expected = if check.expect_status.is_empty() {
        (200..300).contains(&status)
    } else {
        check.expect_status.contains(&status)
    };
    if !expected {
        let want = match check.expect_status.as_slice() {
            [] => "2xx".to_owned(),
            [one] => one.to_string(),
            many => many.iter().map(u16::to_string).collect::<Vec<_>>().join(" or "),
        };
        return Err(format!("status {status} (expected {want})"));
    }
    let mut body = Vec::new();
    let mut stream = response.into_body();
    while let Some(frame) = stream.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            body.extend_from_slice(&data[..data.len().min(MAX_BODY - body.len())]);
            if body.len() >= MAX_BODY {
                break;
            }
        }
    }
    let latency = started.elapsed();
    if let Some(max) = check.max_latency
        && latency > max.std()
    {
        return Err(format!("latency {} > {max}", shown(latency)));
    }
    if let Some(text) = &check.body_contains
        && !String::from_utf8_lossy(&body).contains(text.as_str())
    {
        let start: String = String::from_utf8_lossy(&body).chars().take(80).collect();
        return Err(format!("the body does not contain {text:?} (it starts {start:?})"));
    }
    if let Some((pointer, want)) = &check.json {
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("the body is not JSON ({e}), so {pointer} cannot be read"))?;
        let want: serde_json::Value = serde_json::from_str(want).unwrap_or(serde_json::Value::Null);
        match doc.pointer(pointer) {
            Some(found) if *found == want => {}
            Some(found) => return Err(format!("{pointer} is {found}, expected {want}")),
            None => return Err(format!("{pointer} is absent, expected {want}")),
        }
    }
    Ok(())
}

/// One `tcp` check: a connection is accepted.
pub async fn tcp(address: &str) -> Result<(), String> {
    tokio::net::TcpStream::connect(address).await.map(|_| ()).map_err(|e| format!("connect {address}: {e}"))
}

/// The host part of `host:port` (`[::1]:443` → `::1`).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One `tls` check: a handshake verified against the roots (and `ca_file`), and the
/// certificate valid for at least `min_days` more days.
pub async fn tls(address: &str, min_days: u32, ca_file: Option<&Path>) -> Result<(), String> {
    let config = tls_config(ca_file)?;
    let host = host_of(address);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("`{host}` is not a server name: {e}"))?;
    let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect {address}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {address}: {e}"))?;
    let (_, session) = tls.get_ref();
    let cert =
        session.peer_certificates().and_then(|c| c.first()).ok_or_else(|| format!("{address} sent no certificate"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("the certificate of {address} cannot be read: {e}"))?;
    let left = parsed.validity().not_after.timestamp() - chrono::Utc::now().timestamp();
    let days = left.div_euclid(86_400);
    if days < i64::from(min_days) {
        let unit = if days == 1 { "day" } else { "days" };
        return Err(format!("certificate for {host} expires in {days} {unit} (< {min_days})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_current_url() {
        let base: hyper::Uri = "http://a.example:8080/x/y?q=1".parse().unwrap();
        assert_eq!(resolve(&base, "/z").unwrap().to_string(), "http://a.example:8080/z");
        assert_eq!(resolve(&base, "w").unwrap().to_string(), "http://a.example:8080/x/w");
        assert_eq!(resolve(&base, "https://b.example/").unwrap().to_string(), "https://b.example/");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("app.example.org:443"), "app.example.org");
        assert_eq!(shown(Duration::from_millis(2300)), "2.3s");
        assert_eq!(shown(Duration::from_millis(850)), "850ms");
    }
}
