//! Status badges: `GET /badge/{job}.svg` (a flat badge: the job's name, its status and its
//! 30-day uptime) and `/badge/{job}.json` (shields.io's endpoint format, for
//! `https://img.shields.io/endpoint?url=…`). A probe or heartbeat job's badge says its newest snapshot's
//! status; any other job's, its last run's outcome. Public, like the status page; `[http]
//! badges = false` turns them off.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};

use super::Shared;
use crate::config::Task;
use crate::delivery::mail::escape;
use crate::health::Status;

/// What a badge says.
struct Said {
    label: String,
    message: String,
    /// shields.io's named colour, and its hex for the SVG.
    color: (&'static str, &'static str),
}

pub async fn badge(State(shared): State<Arc<Shared>>, Path(file): Path<String>) -> Response {
    let (job, svg) = match (file.strip_suffix(".svg"), file.strip_suffix(".json")) {
        (Some(job), _) => (job.to_owned(), true),
        (_, Some(job)) => (job.to_owned(), false),
        _ => return (StatusCode::NOT_FOUND, "a badge is /badge/{job}.svg or /badge/{job}.json\n").into_response(),
    };
    let config = shared.config();
    let Some(spec) = config.as_ref().and_then(|c| c.jobs.iter().find(|j| j.name == job).cloned()) else {
        let said = Said { label: job, message: "no such job".into(), color: ("lightgrey", "#9f9f9f") };
        let (_, content_type, body) = render(&said, svg);
        return (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, content_type)], body).into_response();
    };
    // Rendered at most once per `cache::FRESH` per badge, whoever asks.
    let rendering = shared.clone();
    shared.rendered.get(&format!("badge/{file}"), async move { said(&rendering, spec, job, svg).await }).await
}

async fn said(shared: &Shared, spec: Arc<crate::config::Job>, job: String, svg: bool) -> super::cache::Page {
    let said = match &spec.task {
        Task::Probe { .. } | Task::Heartbeat(_) => {
            let (stored, counts) =
                shared.store.job_health(&job, Utc::now() - Duration::days(30)).await.unwrap_or_default();
            // The newest status as this process knows it (the store may not have it yet).
            let status = shared.status_of(&job).or(stored);
            let uptime = super::status_page::uptime(&counts).map(|u| format!(" · {}", percent(u))).unwrap_or_default();
            let (message, color) = match status {
                Some(Status::Operational) => ("operational", ("brightgreen", "#4c1")),
                Some(Status::Degraded) => ("degraded", ("yellow", "#dfb317")),
                Some(Status::Error) => ("down", ("red", "#e05d44")),
                None => ("unknown", ("lightgrey", "#9f9f9f")),
            };
            Said { label: job.clone(), message: format!("{message}{uptime}"), color }
        }
        _ => {
            let last = shared.store.runs_page(&job, 1, None).await.ok().and_then(|r| r.into_iter().next());
            let (message, color) = match last.as_ref().map(|r| r.outcome.as_str()) {
                Some("ok") => ("ok".to_owned(), ("brightgreen", "#4c1")),
                Some("running") => ("running".to_owned(), ("blue", "#007ec6")),
                Some(other) => (other.to_owned(), ("red", "#e05d44")),
                None => ("never ran".to_owned(), ("lightgrey", "#9f9f9f")),
            };
            Said { label: job.clone(), message, color }
        }
    };
    render(&said, svg)
}

/// `99.95%`, `100%`.
fn percent(uptime: f64) -> String {
    if uptime >= 100.0 { "100%".to_owned() } else { format!("{:.2}%", (uptime * 100.0).floor() / 100.0) }
}

fn render(said: &Said, svg: bool) -> super::cache::Page {
    if !svg {
        let body = serde_json::json!({
            "schemaVersion": 1,
            "label": said.label,
            "message": said.message,
            "color": said.color.0,
        });
        return (StatusCode::OK, "application/json", body.to_string().into());
    }
    // Verdana 11px averages about 7 px per character: close enough for a flat badge.
    let width = |text: &str| 10 + 7 * text.chars().count();
    let (lw, mw) = (width(&said.label), width(&said.message));
    let (label, message) = (escape(&said.label), escape(&said.message));
    let total = lw + mw;
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total}\" height=\"20\" role=\"img\" \
         aria-label=\"{label}: {message}\"><title>{label}: {message}</title>\
         <rect width=\"{lw}\" height=\"20\" fill=\"#555\"/>\
         <rect x=\"{lw}\" width=\"{mw}\" height=\"20\" fill=\"{color}\"/>\
         <g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,Geneva,DejaVu Sans,sans-serif\" font-size=\"11\">\
         <text x=\"{lx}\" y=\"14\">{label}</text><text x=\"{mx}\" y=\"14\">{message}</text></g></svg>",
        color = said.color.1,
        lx = lw / 2,
        mx = lw + mw / 2,
    );
    (StatusCode::OK, "image/svg+xml", svg.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime_is_rounded_down_so_a_bad_minute_shows() {
        assert_eq!(super::percent(100.0), "100%");
        assert_eq!(super::percent(99.999), "99.99%");
        assert_eq!(super::percent(99.987), "99.98%");
        assert_eq!(super::percent(50.0), "50.00%");
    }
}
