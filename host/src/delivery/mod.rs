//! Delivery: the dispatcher that drains the outbox. Every row a policy decided is
//! delivered at least once or marked failed where it stays visible; nothing is dropped.
//!
//! Two lanes run side by side: the urgent lane (admin email, tickets, and the fan-out of a
//! subscriber notice into one row per user) and the paced lane (the per-user notices, at
//! most `pace` per second), so a thousand notices never hold back the admin's alert. A row
//! is leased while it is sent; a crash between sending and marking resends at most that
//! row. While the state store is unreachable the urgent lane sends admin email and tickets
//! straight from the spool, holding back what the silences (as last read) and the
//! maintenance windows cover.
//!
//! Architecture invariant: the dispatcher is the only code that sends anything.

mod dispatcher;
pub mod http;
pub mod mail;
pub mod receivers;
pub mod route;
pub mod unsubscribe;
pub mod webhook;

use std::time::Duration;

use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};

use crate::base::{Alert, OutboxKind};
use crate::config::{Config, PerBackend, Secret};
use crate::health::Status;
use crate::runtime::ActionRecord;
use crate::store::{NewOutboxRow, OutboxRow};
use crate::targets::Targets;
use mail::{Draft, Mailer};
use unsubscribe::Signer;
use webhook::Tickets;

pub use dispatcher::Dispatcher;

/// How long a claimed row is held before another dispatcher may take it.
const LEASE: Duration = Duration::from_secs(60);
/// How often the lanes look for due rows when nothing wakes them.
const POLL: Duration = Duration::from_secs(1);
/// Rows the urgent lane takes at once.
const URGENT_BATCH: i64 = 16;
/// The most notices taken at once.
const NOTICE_BATCH: i64 = 64;
/// The most notices being sent at once. lettre writes a message's end in a second small
/// segment, so on Linux each message waits out the peer's delayed ACK (~40 ms): above about
/// 20 per second the pace needs sends in parallel (each on its own pooled connection).
pub const MAX_IN_FLIGHT: u32 = 16;
/// How often the outbox counts behind the metrics are refreshed.
const COUNTS_EVERY: Duration = Duration::from_secs(5);

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt later (connection refused, timeout, 4xx SMTP, 5xx HTTP).
    Retry(String),
    /// Will never succeed as it is (5xx SMTP, 4xx HTTP, no recipients): failed at once.
    Permanent(String),
    /// What it needs cannot be reached now (the target database behind the subscriber
    /// list): tried again later without spending an attempt, so an outage of any length
    /// does not fail the notice about it.
    Unavailable(String),
    /// The receiver asked to be left alone for a while (429 or 503 with `Retry-After`):
    /// retried like `Retry`, but no sooner than it said.
    Throttled(String, Duration),
}

impl Failure {
    /// The least wait before the next attempt the receiver asked for.
    pub fn retry_after(&self) -> Duration {
        match self {
            Failure::Throttled(_, after) => *after,
            _ => Duration::ZERO,
        }
    }
}

/// The most a `Retry-After` holds a row back.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A `Retry-After` value: seconds, or an HTTP date; capped at `MAX_RETRY_AFTER`.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - now).to_std().unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(e) | Failure::Permanent(e) | Failure::Unavailable(e) | Failure::Throttled(e, _) => {
                f.write_str(e)
            }
        }
    }
}

/// A subscriber notice, as one outbox row per user holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    pub user: String,
    pub email: String,
    pub status: Status,
    pub previous: Option<Status>,
}

/// Status notices to users: where they come from and how they are signed and paced.
#[derive(Debug, Clone)]
pub struct SubscriberChannel {
    pub query: PerBackend,
    pub opt_out: PerBackend,
    pub signer: Signer,
    pub pace: u32,
}

/// Everything delivery needs from the configuration; rebuilt on reload.
#[derive(Debug, Clone)]
pub struct Channels {
    pub product: String,
    pub from: Mailbox,
    pub admin: Vec<String>,
    pub mailer: Mailer,
    pub tickets: Tickets,
    /// The configured receivers by name (routed rows name theirs).
    pub receivers: std::collections::HashMap<String, crate::config::Receiver>,
    pub http: http::HttpClient,
    pub subscribers: Option<SubscriberChannel>,
    pub public_url: String,
    pub targets: Targets,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub maintenance: Vec<crate::config::MaintenanceWindow>,
}

impl Channels {
    /// Builds the channels (reading or creating the signing secret). Inside the runtime.
    pub fn new(config: &Config, targets: Targets) -> anyhow::Result<Channels> {
        Self::with_secret(config, targets, None)
    }

    /// As `new`, signing unsubscribe links with `shared` (the secret replicas share,
    /// `unsubscribe::shared_secret`) when given.
    pub fn with_secret(config: &Config, targets: Targets, shared: Option<&[u8]>) -> anyhow::Result<Channels> {
        let alerts = &config.alerts;
        let from: Mailbox = alerts.from.parse().map_err(|e| anyhow::anyhow!("alerts.from `{}`: {e}", alerts.from))?;
        let subscribers = match &alerts.subscribers {
            Some(s) => {
                let secret = match (&s.secret, shared) {
                    (Secret::Inline(text), _) => text.as_bytes().to_vec(),
                    (Secret::File(_), Some(shared)) => shared.to_vec(),
                    (Secret::File(path), None) => unsubscribe::load_or_create_secret(path)
                        .map_err(|e| anyhow::anyhow!("signing secret {}: {e}", path.display()))?,
                };
                Some(SubscriberChannel {
                    query: s.query.clone(),
                    opt_out: s.opt_out.clone(),
                    signer: Signer::new(&secret),
                    pace: s.pace,
                })
            }
            None => None,
        };
        let http = http::client();
        Ok(Channels {
            product: config.product.clone(),
            from,
            admin: alerts.admin.clone(),
            mailer: Mailer::new(alerts.smtp.as_deref(), alerts.smtp_ca.as_deref(), &alerts.mail_dir)
                .map_err(anyhow::Error::msg)?,
            tickets: Tickets::new(&alerts.tickets, &http).map_err(anyhow::Error::msg)?,
            receivers: config.receivers.iter().map(|r| (r.name.clone(), r.clone())).collect(),
            http,
            subscribers,
            public_url: alerts.public_url.clone(),
            targets,
            max_attempts: alerts.max_attempts,
            backoff: alerts.backoff.std(),
            max_backoff: alerts.max_backoff.std(),
            maintenance: config.maintenance.clone(),
        })
    }

    /// Where mail goes, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.mailer {
            Mailer::Smtp { url, .. } => format!("SMTP {}", mail::redact(url)),
            Mailer::Dir(dir) => format!(".eml files in {}", dir.display()),
        }
    }

    /// The configured receivers for the start-up log: name, kind and host, or `off`.
    pub fn describe_receivers(&self) -> String {
        let mut names: Vec<&String> = self.receivers.keys().collect();
        names.sort();
        let shown: Vec<String> = names
            .into_iter()
            .map(|name| {
                let r = &self.receivers[name];
                match (r.enabled, r.kind) {
                    (false, _) => format!("{name} ({}, off)", r.kind.as_str()),
                    (true, crate::config::ReceiverKind::Email) => format!("{name} (email to {})", r.to.join(", ")),
                    (true, kind) => {
                        format!("{name} ({}, {})", kind.as_str(), crate::base::text::redact_webhook(&r.url))
                    }
                }
            })
            .collect();
        if shown.is_empty() { "none besides admin and tickets".to_owned() } else { shown.join("; ") }
    }

    /// The delay before attempt `attempts + 1`: doubling from `backoff`, capped, with
    /// ±20 % jitter so retries of many rows spread out.
    pub fn backoff_after(&self, attempts: u32) -> Duration {
        let doubled = self.backoff.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        doubled.min(self.max_backoff).mul_f64(rand::random_range(0.8..1.2))
    }

    /// Delivers one row (of any kind but `subscribers`, which needs the store).
    pub async fn deliver(
        &self,
        kind: OutboxKind,
        dedup_key: &str,
        payload: &str,
        job: Option<&str>,
        policy: Option<&str>,
    ) -> Result<String, Failure> {
        let name = format!("{}-{}", kind, mail::row_hash(dedup_key));
        match kind {
            OutboxKind::Email => {
                let (subject, body, to) = match serde_json::from_str(payload) {
                    Ok(ActionRecord::EmailAdmin { subject, body }) => {
                        if self.admin.is_empty() {
                            return Err(Failure::Permanent("no admin recipients configured (alerts.admin)".into()));
                        }
                        (subject, body, self.admin.clone())
                    }
                    _ => {
                        let alert = routed(payload)?;
                        let receiver = self.receiver(&alert)?;
                        (alert.summary, alert.body, receiver.to.clone())
                    }
                };
                let draft = Draft {
                    from: &self.from,
                    to: &to,
                    subject: &subject,
                    text: &body,
                    html: None,
                    dedup_key,
                    unsubscribe: None,
                };
                let message = draft.build().map_err(Failure::Permanent)?;
                self.mailer.send(&message, &name).await
            }
            OutboxKind::Notice => {
                let notice: Notice =
                    serde_json::from_str(payload).map_err(|e| Failure::Permanent(format!("unreadable notice: {e}")))?;
                let Some(subs) = &self.subscribers else {
                    return Err(Failure::Retry("subscribers are not configured (alerts.subscribers)".into()));
                };
                let url = subs.signer.url(&self.public_url, &notice.user);
                let (subject, text, html) = mail::notice(&self.product, notice.status, notice.previous, &url);
                let to = [notice.email.clone()];
                let draft = Draft {
                    from: &self.from,
                    to: &to,
                    subject: &subject,
                    text: &text,
                    html: Some(&html),
                    dedup_key,
                    unsubscribe: Some(&url),
                };
                let message = draft.build().map_err(Failure::Permanent)?;
                self.mailer.send(&message, &name).await
            }
            OutboxKind::Ticket => {
                let json = match serde_json::from_str(payload) {
                    Ok(ActionRecord::OpenTicket { title, body, priority, .. }) => serde_json::json!({
                        "event": "opened",
                        "title": title,
                        "body": body,
                        "priority": priority,
                        "dedup_key": dedup_key,
                        "product": self.product,
                        "job": job,
                        "policy": policy,
                    }),
                    // The recovery resolves the ticket its trouble opened, by that ticket's key.
                    _ => {
                        let alert = routed(payload)?;
                        serde_json::json!({
                            "event": "resolved",
                            "title": alert.summary,
                            "body": alert.body,
                            "dedup_key": alert.incident,
                            "product": self.product,
                            "job": job,
                            "policy": policy,
                        })
                    }
                };
                self.tickets.send(&json, dedup_key, &name).await
            }
            OutboxKind::Webhook
            | OutboxKind::Slack
            | OutboxKind::Teams
            | OutboxKind::Discord
            | OutboxKind::Pagerduty
            | OutboxKind::Opsgenie
            | OutboxKind::Ntfy => {
                let alert = routed(payload)?;
                let receiver = self.receiver(&alert)?;
                let ctx = receivers::Context { product: &self.product, job, policy, public_url: &self.public_url };
                receivers::send(&self.http, receiver, &alert, ctx).await
            }
            // Expanded by the dispatcher into notices (it needs the store), never sent itself.
            OutboxKind::Subscribers => Err(Failure::Permanent("a subscriber fan-out is expanded, not sent".into())),
        }
    }

    /// The receiver a routed row names, if it is still configured and on.
    fn receiver(&self, alert: &Alert) -> Result<&crate::config::Receiver, Failure> {
        match self.receivers.get(&alert.receiver) {
            Some(r) if r.enabled => Ok(r),
            Some(_) => Err(Failure::Permanent(format!("receiver `{}` is off (its secret is empty)", alert.receiver))),
            None => Err(Failure::Permanent(format!("receiver `{}` is no longer configured", alert.receiver))),
        }
    }

    /// The opted-in users, from the target database: one notice row per user.
    async fn fan_out(&self, parent: &OutboxRow) -> Result<Vec<NewOutboxRow>, Failure> {
        let Ok(ActionRecord::NotifySubscribers { status, previous }) = serde_json::from_str(&parent.payload) else {
            return Err(Failure::Permanent(format!("unreadable subscribers payload: {}", parent.payload)));
        };
        let Some(subs) = &self.subscribers else { return Ok(Vec::new()) };
        let db = &self.targets.db;
        let Some(query) = subs.query.for_sqlite(db.is_sqlite()) else {
            return Err(Failure::Permanent(format!("alerts.subscribers.query has no SQL for {}", db.backend())));
        };
        let users = subscribers(db, query).await.map_err(|e| {
            let message = format!("subscriber query: {e}");
            if crate::store::unreachable(&e) { Failure::Unavailable(message) } else { Failure::Retry(message) }
        })?;
        Ok(users
            .into_iter()
            .map(|(user, email)| {
                let notice = Notice { user: user.clone(), email, status, previous };
                NewOutboxRow {
                    kind: OutboxKind::Notice,
                    dedup_key: format!("{}:{user}", parent.dedup_key),
                    payload: serde_json::to_string(&notice).unwrap_or_default(),
                    recipient: Some(user),
                }
            })
            .collect())
    }
}

/// A routed row's alert.
fn routed(payload: &str) -> Result<Alert, Failure> {
    serde_json::from_str::<Alert>(payload).map_err(|e| Failure::Permanent(format!("unreadable alert payload: {e}")))
}

/// Runs the subscriber query: (user id as text, email) per row.
async fn subscribers(db: &crate::db::Pool, query: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    use sqlx::Row;
    let text = sqlx::AssertSqlSafe(query.to_owned());
    let rows = crate::with_pool!(db, |p| {
        let rows = sqlx::query(text).fetch_all(p).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let user = match row.try_get::<i64, _>(0) {
                Ok(id) => id.to_string(),
                Err(_) => row.try_get::<String, _>(0)?,
            };
            out.push((user, row.try_get::<String, _>(1)?));
        }
        out
    });
    Ok(rows)
}

/// Opts a user out through the configured statement; `$1` is the user id as text.
pub async fn opt_out(channels: &Channels, user: &str) -> Result<u64, String> {
    let Some(subs) = &channels.subscribers else { return Err("subscribers are not configured".into()) };
    let db = &channels.targets.db;
    let Some(statement) = subs.opt_out.for_sqlite(db.is_sqlite()) else {
        return Err(format!("alerts.subscribers.opt_out has no SQL for {}", db.backend()));
    };
    let text = sqlx::AssertSqlSafe(statement.to_owned());
    let done = crate::with_pool!(db, |p| sqlx::query(text).bind(user).execute(p).await.map(|r| r.rows_affected()));
    done.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date_and_capped() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").unwrap().to_utc();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Thu, 03 Dec 2026 10:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Thu, 03 Dec 2026 09:00:00 GMT", now), Some(Duration::ZERO), "in the past");
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(Failure::Throttled("x".into(), Duration::from_secs(5)).retry_after(), Duration::from_secs(5));
        assert_eq!(Failure::Retry("x".into()).retry_after(), Duration::ZERO);
    }
}
