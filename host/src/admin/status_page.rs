//! `GET /`: the status page. Server-rendered HTML with an inline SVG chart, so it works
//! without JavaScript; with JavaScript on it refreshes itself every 30 seconds.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};

use super::Shared;
use crate::config::MaintenanceWindow;
use crate::delivery::mail::escape;
use crate::health::Status;

/// The chart: the last 24 hours in 15-minute bars.
const CHART_BUCKETS: i64 = 96;
const BUCKET_MINUTES: i64 = 15;

fn colour(status: Option<Status>) -> &'static str {
    match status {
        Some(Status::Operational) => "#2da44e",
        Some(Status::Degraded) => "#d4a72c",
        Some(Status::Error) => "#cf222e",
        None => "#d0d7de",
    }
}

fn label(status: Status) -> &'static str {
    match status {
        Status::Operational => "Operational",
        Status::Degraded => "Degraded",
        Status::Error => "Down",
    }
}

/// Share of snapshots that were not `error`, as a percentage, or `None` with no data.
pub(super) fn uptime(counts: &[(String, i64)]) -> Option<f64> {
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let down: i64 = counts.iter().filter(|(s, _)| s == "error").map(|(_, n)| n).sum();
    (total > 0).then(|| 100.0 * (total - down) as f64 / total as f64)
}

/// A maintenance window worth telling visitors about: in progress (until when), or starting
/// within the next seven days.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    Now { name: String, comment: String, until: DateTime<Utc> },
    Soon { name: String, comment: String, from: DateTime<Utc>, duration: String },
}

pub fn windows(maintenance: &[MaintenanceWindow], now: DateTime<Utc>) -> Vec<Window> {
    let mut out = Vec::new();
    for m in maintenance {
        let (name, comment) = (m.name.clone(), m.comment.clone());
        if m.active(now) {
            let start = m.schedule.latest_at_or_before(now).unwrap_or(now);
            out.push(Window::Now { name, comment, until: start + m.duration.chrono() });
        } else if let Some(from) = m.schedule.upcoming(now, 1).into_iter().find(|t| *t - now <= Duration::days(7)) {
            out.push(Window::Soon { name, comment, from, duration: m.duration.to_string() });
        }
    }
    out
}

/// The page as last rendered, at most `cache::FRESH` old.
pub async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let rendering = shared.clone();
    shared.rendered.get("/", async move { render(&rendering).await }).await
}

/// The page: the service's health (the worst newest snapshot of the jobs that count, each
/// failed check with its reason class only), uptime and the chart over the same jobs.
async fn render(shared: &Shared) -> super::cache::Page {
    let now = Utc::now();
    let product = shared.config().map(|c| c.product.clone()).unwrap_or_else(|| "warden".into());
    let health = shared.health();
    let latest = health.worst.clone();
    let jobs = shared.health_jobs();
    let store = &shared.store;
    // Everything below is counted in SQL: the page reads a few rows, however many
    // snapshots there are (the time the database spends counting them still grows).
    let since = [now - Duration::days(30), now - Duration::days(7), now - Duration::days(1)];
    let counts = store.uptime_windows(since, &jobs).await.ok();
    let up: Vec<(i64, Option<f64>)> = [30, 7, 1]
        .into_iter()
        .enumerate()
        .map(|(i, days)| {
            let share = counts.and_then(|c| {
                let (total, down) = c[i];
                (total > 0).then(|| 100.0 * (total - down) as f64 / total as f64)
            });
            (days, share)
        })
        .rev()
        .collect();
    let start = now - Duration::minutes(CHART_BUCKETS * BUCKET_MINUTES);
    let bars = store
        .status_buckets(start, BUCKET_MINUTES * 60, CHART_BUCKETS as usize, &jobs)
        .await
        .unwrap_or_else(|_| vec![None; CHART_BUCKETS as usize]);
    let changes = store.status_changes(now - Duration::days(7), 20, &jobs).await.unwrap_or_default();
    let mut html = String::with_capacity(16 << 10);
    let p = escape(&product);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{p} status</title>\n<style>\
         body{{font-family:system-ui,sans-serif;max-width:52em;margin:2em auto;padding:0 1em;color:#1f2328}}\
         .badge{{display:inline-block;padding:.3em .8em;border-radius:1em;color:#fff;font-weight:600}}\
         table{{border-collapse:collapse;width:100%}}td,th{{text-align:left;padding:.35em .5em;border-bottom:1px solid #d0d7de}}\
         .ok{{color:#2da44e}}.fail{{color:#cf222e}}.muted{{color:#59636e;font-size:.9em}}\
         </style></head>\n<body>\n<h1>{p} status</h1>\n"
    );
    match &latest {
        Some(s) => {
            let _ = writeln!(
                html,
                "<p id=\"overall\"><span class=\"badge\" style=\"background:{}\">{}</span> \
                 <span class=\"muted\">checked {} in {} ms</span></p>",
                colour(Some(s.status)),
                label(s.status),
                s.checked_at.format("%Y-%m-%d %H:%M:%S UTC"),
                s.duration_ms
            );
            if health.counted > 1 {
                let _ = writeln!(html, "<h2>Checks of {}</h2>", escape(&s.job));
            } else {
                html.push_str("<h2>Checks</h2>\n");
            }
            html.push_str("<table id=\"checks\"><tr><th>check</th><th>state</th><th>time</th><th></th></tr>\n");
            for c in &s.checks {
                let (class, state) = if c.ok { ("ok", "OK") } else { ("fail", "FAIL") };
                let reason = c.error.as_deref().map(crate::health::reason_class).unwrap_or_default();
                let _ = writeln!(
                    html,
                    "<tr><td>{}</td><td class=\"{class}\">{state}</td><td>{} ms</td><td class=\"muted\">{}</td></tr>",
                    escape(&c.name),
                    c.duration_ms,
                    escape(&reason)
                );
            }
            if health.counted > 1 {
                html.push_str("</table>\n<h2>Jobs</h2>\n");
                let [up, degraded, down] = health.by_status;
                let _ = writeln!(
                    html,
                    "<p id=\"counts\" class=\"muted\">{up} operational, {degraded} degraded, {down} down, {} not yet checked</p>",
                    health.counted - health.reported
                );
                html.push_str("<table id=\"jobs\"><tr><th>job</th><th>state</th><th>checked</th></tr>\n");
                for (job, status, at) in &health.jobs {
                    let _ = writeln!(
                        html,
                        "<tr><td>{}</td><td style=\"color:{}\">{}</td><td class=\"muted\">{}</td></tr>",
                        escape(job),
                        colour(Some(*status)),
                        label(*status),
                        at.format("%H:%M:%S UTC")
                    );
                }
            }
            html.push_str("</table>\n");
        }
        None => html.push_str("<p id=\"overall\"><span class=\"badge\" style=\"background:#59636e\">Unknown</span> no check has run yet</p>\n"),
    }
    let maintenance = shared.config().map(|c| windows(&c.maintenance, now)).unwrap_or_default();
    if !maintenance.is_empty() {
        html.push_str("<h2>Maintenance</h2>\n<ul id=\"maintenance\">\n");
        for w in &maintenance {
            let _ = match w {
                Window::Now { name, comment, until } => writeln!(
                    html,
                    "<li><strong>{}</strong>: in progress until {} — {}</li>",
                    escape(name),
                    until.format("%Y-%m-%d %H:%M UTC"),
                    escape(comment)
                ),
                Window::Soon { name, comment, from, duration } => writeln!(
                    html,
                    "<li><strong>{}</strong>: from {} for {} — {}</li>",
                    escape(name),
                    from.format("%Y-%m-%d %H:%M UTC"),
                    escape(duration),
                    escape(comment)
                ),
            };
        }
        html.push_str("</ul>\n");
    }
    let heartbeats: Vec<String> = shared
        .config()
        .map(|c| {
            c.jobs
                .iter()
                .filter(|j| matches!(j.task, crate::config::Task::Heartbeat(_)))
                .map(|j| j.name.clone())
                .collect()
        })
        .unwrap_or_default();
    if !heartbeats.is_empty() {
        let pings = store.all_pings().await.unwrap_or_default();
        html.push_str(
            "<h2>Heartbeats</h2>\n<table id=\"heartbeats\"><tr><th>job</th><th>last ping</th><th></th></tr>\n",
        );
        for job in &heartbeats {
            let (when, what) = match pings.iter().find(|p| &p.job == job) {
                Some(p) => (p.last_ping_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(), p.last_kind.as_str()),
                None => ("never".to_owned(), ""),
            };
            let _ = writeln!(html, "<tr><td>{}</td><td>{when}</td><td class=\"muted\">{what}</td></tr>", escape(job));
        }
        html.push_str("</table>\n");
    }
    html.push_str("<h2>Uptime</h2>\n<p id=\"uptime\">");
    for (days, value) in &up {
        let text = value.map_or_else(|| "no data".to_owned(), |v| format!("{v:.2} %"));
        let window = if *days == 1 { "24 h".to_owned() } else { format!("{days} d") };
        let _ = write!(html, "<span>{window}: <strong>{text}</strong></span> &nbsp; ");
    }
    html.push_str("</p>\n<h2>Last 24 hours</h2>\n");
    let _ = write!(
        html,
        "<svg id=\"chart\" role=\"img\" aria-label=\"status over the last 24 hours\" viewBox=\"0 0 {} 40\" \
         width=\"100%\" height=\"48\" preserveAspectRatio=\"none\">",
        CHART_BUCKETS * 6
    );
    for (i, status) in bars.iter().enumerate() {
        let from = start + Duration::minutes(i as i64 * BUCKET_MINUTES);
        let _ = write!(
            html,
            "<rect x=\"{}\" y=\"0\" width=\"5\" height=\"40\" fill=\"{}\"><title>{} {}</title></rect>",
            i * 6,
            colour(*status),
            from.format("%H:%M"),
            status.map_or("no data", |s| s.as_str())
        );
    }
    html.push_str(
        "</svg>\n<p class=\"muted\">24 h ago … now; green operational, yellow degraded, red down, grey no data.</p>\n",
    );
    html.push_str("<h2>Recent changes</h2>\n<ul id=\"transitions\">\n");
    if changes.is_empty() {
        html.push_str("<li class=\"muted\">none in the last 7 days</li>\n");
    }
    for (at, job, from, to) in changes {
        let of = if health.counted > 1 { format!("{}: ", escape(&job)) } else { String::new() };
        let _ = writeln!(
            html,
            "<li>{} — {of}{} → <strong>{}</strong></li>",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            label(from),
            label(to)
        );
    }
    html.push_str("</ul>\n<script>setTimeout(function () { location.reload(); }, 30000);</script>\n</body></html>\n");
    (StatusCode::OK, "text/html; charset=utf-8", html.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_the_share_not_down() {
        assert_eq!(uptime(&[("operational".into(), 3), ("error".into(), 1)]), Some(75.0));
        assert_eq!(uptime(&[("degraded".into(), 1)]), Some(100.0));
        assert_eq!(uptime(&[]), None);
    }

    #[test]
    fn maintenance_windows_show_while_on_and_a_week_ahead() {
        let src = r#"version = 1
[[maintenance]]
name = "backup"
cron = "0 0 2 * * Sun"
duration = "2h"
job = "probe"
comment = "weekly backup"
[[maintenance]]
name = "yearly"
cron = "0 0 0 1 1 *"
duration = "1h"
job = "probe"
comment = "far away"
"#;
        let config = crate::config::parse(src, std::path::Path::new("schedules.toml"), &|_| None).unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // Sunday 2026-11-29 03:00 UTC: the backup runs until 04:00; New Year is a month away.
        assert_eq!(
            windows(&config.maintenance, at("2026-11-29T03:00:00Z")),
            [Window::Now { name: "backup".into(), comment: "weekly backup".into(), until: at("2026-11-29T04:00:00Z") }]
        );
        // Friday: the backup is two days ahead.
        assert_eq!(
            windows(&config.maintenance, at("2026-11-27T12:00:00Z")),
            [Window::Soon {
                name: "backup".into(),
                comment: "weekly backup".into(),
                from: at("2026-11-29T02:00:00Z"),
                duration: "2h".into()
            }]
        );
        // Monday: the next backup is six days ahead, still shown; late December shows New Year.
        assert_eq!(windows(&config.maintenance, at("2026-11-30T12:00:00Z")).len(), 1);
        let december = windows(&config.maintenance, at("2026-12-28T12:00:00Z"));
        assert_eq!(december.len(), 2, "{december:?}");
    }
}
