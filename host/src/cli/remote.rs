//! `warden pause|resume|reload|silence|trigger --url …`: the admin API of a running
//! instance, from the command line. Each command is one request; an error answer is printed
//! as `code: message` (and, for a refused reload, every problem) and exits 1.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A running warden's admin API.
pub struct Remote {
    base: String,
    token: String,
}

impl Remote {
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Remote> {
        let token = token.context(
            "no admin token: set WARDEN_ADMIN_TOKEN or --admin-token-file (the token `warden run` was started with)",
        )?;
        let base = url.trim_end_matches('/').to_owned();
        base.parse::<hyper::Uri>().with_context(|| format!("invalid --url `{url}`"))?;
        Ok(Remote { base, token })
    }

    /// One request: the answer's status and JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<(StatusCode, Value)> {
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let url = format!("{}{path}", self.base);
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, concat!("warden/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(bytes)))
            .with_context(|| format!("cannot build a request to {url}"))?;
        let exchange = async {
            let response = client.request(request).await.with_context(|| format!("{method} {url}"))?;
            let status = response.status();
            let body = response.into_body().collect().await.with_context(|| format!("{method} {url}"))?.to_bytes();
            let value =
                serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
            anyhow::Ok((status, value))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {url}: no answer within {}s", TIMEOUT.as_secs()))?
    }

    /// A call whose success is printed by `show`; an error answer is printed and exits 1.
    async fn run(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        show: impl FnOnce(&Value),
    ) -> anyhow::Result<ExitCode> {
        let (status, answer) = self.call(method, path, body).await?;
        if status.is_success() {
            show(&answer);
            return Ok(ExitCode::SUCCESS);
        }
        let error = &answer["error"];
        match error["code"].as_str() {
            Some(code) => eprintln!("error: {code}: {}", error["message"].as_str().unwrap_or_default()),
            None => eprintln!("error: {status}: {answer}"),
        }
        for problem in error["problems"].as_array().into_iter().flatten() {
            eprintln!("{}", problem.as_str().unwrap_or_default());
        }
        Ok(ExitCode::FAILURE)
    }

    pub async fn pause(&self, job: &str, paused: bool) -> anyhow::Result<ExitCode> {
        let action = if paused { "pause" } else { "resume" };
        self.run(Method::POST, &format!("/admin/jobs/{}/{action}", segment(job)), None, |_| {
            println!("{job}: {}", if paused { "paused" } else { "resumed" });
        })
        .await
    }

    pub async fn run_now(&self, job: &str) -> anyhow::Result<ExitCode> {
        self.run(Method::POST, &format!("/admin/jobs/{}/run", segment(job)), None, |answer| {
            println!("{job}: run {} started", answer["run_id"]);
        })
        .await
    }

    pub async fn reload(&self) -> anyhow::Result<ExitCode> {
        self.run(Method::POST, "/admin/reload", None, |_| println!("reloaded")).await
    }

    pub async fn silence(&self, new: &Value) -> anyhow::Result<ExitCode> {
        self.run(Method::POST, "/admin/silences", Some(new), |answer| {
            println!("silence {} until {}", answer["id"], answer["ends_at"].as_str().unwrap_or_default());
        })
        .await
    }

    pub async fn silences(&self, all: bool) -> anyhow::Result<ExitCode> {
        let path = if all { "/admin/silences?all=true" } else { "/admin/silences" };
        self.run(Method::GET, path, None, |answer| {
            println!("{:>5}  {:<6} {:<25} {:<25} {:<40} comment", "id", "active", "starts", "ends", "matches");
            for s in answer["items"].as_array().into_iter().flatten() {
                println!(
                    "{:>5}  {:<6} {:<25} {:<25} {:<40} {}",
                    s["id"].as_i64().unwrap_or_default(),
                    if s["active"] == json!(true) { "yes" } else { "no" },
                    s["starts_at"].as_str().unwrap_or_default(),
                    s["ends_at"].as_str().unwrap_or_default(),
                    matchers(s),
                    s["comment"].as_str().unwrap_or_default()
                );
            }
            for m in answer["maintenance"].as_array().into_iter().flatten() {
                println!(
                    "maintenance {:?}: {} for {}{}, {}: {}",
                    m["name"].as_str().unwrap_or_default(),
                    m["schedule"].as_str().unwrap_or_default(),
                    m["duration"].as_str().unwrap_or_default(),
                    if m["active"] == json!(true) { " (active now)" } else { "" },
                    matchers(&m["matchers"]),
                    m["comment"].as_str().unwrap_or_default()
                );
            }
        })
        .await
    }

    pub async fn expire(&self, id: i64) -> anyhow::Result<ExitCode> {
        self.run(Method::POST, &format!("/admin/silences/{id}/expire"), None, |_| println!("silence {id} expired"))
            .await
    }
}

/// `job=… policy=… kind=…` of a silence or window.
fn matchers(v: &Value) -> String {
    let parts: Vec<String> =
        ["job", "policy", "kind"].iter().filter_map(|k| v[k].as_str().map(|s| format!("{k}={s}"))).collect();
    parts.join(" ")
}

/// A job or policy name as one path segment.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(segment("probe"), "probe");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
