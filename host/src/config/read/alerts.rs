//! `[alerts]`: SMTP, retries, subscriber notices and tickets.

use std::path::Path;

use crate::base::Duration;
use crate::config::model::*;
use crate::config::table::{Ctx, TableReader, Value};

use super::jobs::read_per_backend;

pub(super) fn default_alerts(base: &Path) -> Alerts {
    Alerts {
        admin: Vec::new(),
        from: "warden@localhost".into(),
        smtp: None,
        smtp_ca: None,
        cooldown: Duration::from_secs(300),
        mail_dir: base.join("mail"),
        max_attempts: 10,
        backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(15 * 60),
        public_url: "http://127.0.0.1:8080".into(),
        subscribers: None,
        tickets: TicketsConfig { webhook: None, timeout: Duration::from_secs(10), dir: base.join("tickets") },
    }
}

pub(super) fn read_alerts(value: &Value<'_>, base: &Path, ctx: &mut Ctx<'_>) -> Option<Alerts> {
    let mut t = TableReader::new(value, "alerts", ctx)?;
    let mut alerts = default_alerts(base);
    if let Some(admin) = t.strings(ctx, "admin") {
        for a in &admin {
            if a.value.parse::<lettre::Address>().is_err() {
                ctx.diag.error(a.span.clone(), "alerts.admin", format!("`{}` is not an email address", a.value));
            }
        }
        alerts.admin = admin.into_iter().map(|s| s.value).filter(|s| !s.is_empty()).collect();
    }
    if let Some(from) = t.string(ctx, "from") {
        if from.value.parse::<lettre::message::Mailbox>().is_err() {
            let msg = format!(
                "`{}` is not a mailbox (write `warden@example.org` or `Warden <warden@example.org>`)",
                from.value
            );
            ctx.diag.error(from.span.clone(), "alerts.from", msg);
        }
        alerts.from = from.value;
    }
    if let Some(smtp) = t.string(ctx, "smtp").filter(|s| !s.value.is_empty()) {
        match check_smtp_url(&smtp.value) {
            Ok(()) => alerts.smtp = Some(smtp.value),
            Err(msg) => ctx.diag.error(smtp.span, "alerts.smtp", msg),
        }
    }
    if let Some(ca) = t.string(ctx, "smtp_ca").filter(|s| !s.value.is_empty()) {
        // Read by `warden check` and at start, not here: this module does no IO.
        alerts.smtp_ca = Some(base.join(&ca.value));
    }
    if let Some(c) = t.duration(ctx, "cooldown") {
        alerts.cooldown = c;
    }
    if let Some(dir) = t.string(ctx, "mail_dir") {
        alerts.mail_dir = base.join(dir.value);
    }
    if let Some(n) = t.count(ctx, "max_attempts", 1000) {
        alerts.max_attempts = u32::try_from(n.max(1)).unwrap_or(1000);
    }
    if let Some(d) = t.duration(ctx, "backoff") {
        alerts.backoff = d;
    }
    if let Some(d) = t.duration(ctx, "max_backoff") {
        alerts.max_backoff = d;
    }
    if let Some(url) = t.string(ctx, "public_url") {
        if !(url.value.starts_with("http://") || url.value.starts_with("https://")) {
            ctx.diag.error(url.span, "alerts.public_url", format!("`{}` is not an http(s) URL", url.value));
        } else {
            alerts.public_url = url.value.trim_end_matches('/').to_owned();
        }
    }
    alerts.subscribers = match t.get("subscribers") {
        Some(v) => read_subscribers(v, base, ctx),
        None => None,
    };
    if let Some(v) = t.get("tickets") {
        read_tickets(v, base, &mut alerts.tickets, ctx);
    }
    t.finish(
        ctx,
        &[
            "admin",
            "from",
            "smtp",
            "smtp_ca",
            "cooldown",
            "mail_dir",
            "max_attempts",
            "backoff",
            "max_backoff",
            "public_url",
            "subscribers",
            "tickets",
        ],
    );
    Some(alerts)
}

/// Checks an SMTP URL the way the transport will read it, without connecting.
fn check_smtp_url(url: &str) -> Result<(), String> {
    let scheme = url.split("://").next().unwrap_or_default();
    if !matches!(scheme, "smtp" | "smtps") || !url.contains("://") {
        let url = crate::base::text::redact(url);
        return Err(format!(
            "`{url}` is not an SMTP URL: write smtp://host:25, smtp://user:pass@host:587?tls=required (STARTTLS) \
             or smtps://user:pass@host:465 (implicit TLS)"
        ));
    }
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
        .map(|_| ())
        .map_err(|e| format!("invalid SMTP URL `{}`: {e}", crate::base::text::redact(url)))
}

fn read_subscribers(value: &Value<'_>, base: &Path, ctx: &mut Ctx<'_>) -> Option<Subscribers> {
    let mut t = TableReader::new(value, "alerts.subscribers", ctx)?;
    let enabled = t.bool(ctx, "enabled").unwrap_or(true);
    let query = read_per_backend(&mut t, ctx, "query", true);
    let opt_out = read_per_backend(&mut t, ctx, "opt_out", true);
    let inline = t.string(ctx, "signing_secret").filter(|s| !s.value.is_empty());
    let file = t.string(ctx, "signing_secret_file").filter(|s| !s.value.is_empty());
    let pace = t.count_from(ctx, "pace", 0, 10_000).map_or(10, |n| u32::try_from(n).unwrap_or(10_000));
    let span = t.span.clone();
    t.finish(ctx, &["enabled", "query", "opt_out", "signing_secret", "signing_secret_file", "pace"]);
    let secret = match (inline, file) {
        (Some(s), None) if s.value.len() < MIN_SECRET_LEN => {
            let msg = format!("too short: at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)");
            ctx.diag.error(s.span, "alerts.subscribers.signing_secret", msg);
            None
        }
        (Some(s), None) => Some(Secret::Inline(s.value)),
        (None, Some(f)) => Some(Secret::File(base.join(f.value))),
        (Some(s), Some(_)) => {
            let msg = "give `signing_secret` or `signing_secret_file`, not both";
            ctx.diag.error(s.span, "alerts.subscribers.signing_secret", msg);
            None
        }
        (None, None) if enabled => {
            let msg = "missing: subscribers are enabled, so unsubscribe links must be signed; set \
                       `signing_secret` (at least 16 characters) or `signing_secret_file` (created on first start)";
            ctx.diag.error(span, "alerts.subscribers.signing_secret", msg);
            None
        }
        (None, None) => None,
    };
    if !enabled {
        return None;
    }
    Some(Subscribers { query: query?, opt_out: opt_out?, secret: secret?, pace })
}

fn read_tickets(value: &Value<'_>, base: &Path, tickets: &mut TicketsConfig, ctx: &mut Ctx<'_>) {
    let Some(mut t) = TableReader::new(value, "alerts.tickets", ctx) else { return };
    if let Some(url) = t.string(ctx, "webhook").filter(|s| !s.value.is_empty()) {
        match url.value.parse::<hyper::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
                tickets.webhook = Some(url.value)
            }
            _ => ctx.diag.error(
                url.span,
                "alerts.tickets.webhook",
                format!("`{}` is not an http(s) URL", crate::base::text::redact_webhook(&url.value)),
            ),
        }
    }
    if let Some(d) = t.duration(ctx, "timeout") {
        tickets.timeout = d;
    }
    if let Some(dir) = t.string(ctx, "dir") {
        tickets.dir = base.join(dir.value);
    }
    t.finish(ctx, &["webhook", "timeout", "dir"]);
}
