//! `[receivers.NAME]` (where alerts can go) and `[[routes]]` (which actions go where).

use crate::base::{Duration, Priority, Stage, text::redact_webhook};
use crate::config::model::*;
use crate::config::table::{Ctx, TableReader, Value};

/// The default request timeout of a receiver.
const TIMEOUT: Duration = Duration::from_secs(10);
/// PagerDuty's Events API v2.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// Opsgenie's API (the EU instance is `https://api.eu.opsgenie.com`).
pub const OPSGENIE_API_URL: &str = "https://api.opsgenie.com";

pub(super) fn read_receivers(value: &Value<'_>, ctx: &mut Ctx<'_>) -> Vec<Receiver> {
    let Some(table) = value.get_ref().as_table() else {
        let found = value.get_ref().type_str();
        ctx.diag.error(value.span(), "receivers", format!("expected a table of receivers, found {found}"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, item) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        if !super::valid_name(name) {
            let msg = format!("invalid receiver name `{name}`: use lowercase letters, digits, `-` and `_`");
            ctx.diag.error(key.span(), format!("receivers.{name}"), msg);
            continue;
        }
        if name == ADMIN_RECEIVER || name == TICKETS_RECEIVER {
            let msg = format!(
                "`{name}` is built in (`{ADMIN_RECEIVER}`: alerts.admin over alerts.smtp; `{TICKETS_RECEIVER}`: \
                 alerts.tickets); give this receiver another name"
            );
            ctx.diag.error(key.span(), format!("receivers.{name}"), msg);
            continue;
        }
        if let Some(receiver) = read_receiver(name, item, ctx) {
            out.push(receiver);
        }
    }
    out
}

fn read_receiver(name: &str, value: &Value<'_>, ctx: &mut Ctx<'_>) -> Option<Receiver> {
    let mut t = TableReader::new(value, format!("receivers.{name}"), ctx)?;
    let kinds = ReceiverKind::ALL.map(ReceiverKind::as_str);
    let kind = match t.required_string(ctx, "kind") {
        Some(k) => match ReceiverKind::parse(&k.value) {
            Some(kind) => Some(kind),
            None => {
                let msg = format!("unknown receiver kind `{}`: {}", k.value, crate::base::names(&kinds));
                ctx.diag.error(k.span, t.field("kind"), msg);
                None
            }
        },
        None => None,
    };
    let kind = kind?;
    let default_url = match kind {
        ReceiverKind::Pagerduty => Some(PAGERDUTY_EVENTS_URL),
        ReceiverKind::Opsgenie => Some(OPSGENIE_API_URL),
        _ => None,
    };
    let mut enabled = true;
    let mut url = String::new();
    if kind != ReceiverKind::Email {
        match t.string(ctx, "url") {
            Some(u) if u.value.trim().is_empty() && default_url.is_none() => enabled = false,
            Some(u) if u.value.trim().is_empty() => url = default_url.unwrap_or_default().to_owned(),
            Some(u) => match u.value.parse::<hyper::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => url = u.value,
                _ => {
                    let msg = format!("`{}` is not an http(s) URL", redact_webhook(&u.value));
                    ctx.diag.error(u.span, t.field("url"), msg);
                }
            },
            None => match default_url {
                Some(d) => url = d.to_owned(),
                None => ctx.diag.error(t.span.clone(), t.field("url"), "missing required field `url`"),
            },
        }
    }
    // The key a provider needs; an empty one (its variable unset) turns the receiver off.
    let key_field = match kind {
        ReceiverKind::Pagerduty => Some(("routing_key", true)),
        ReceiverKind::Opsgenie => Some(("api_key", true)),
        ReceiverKind::Ntfy => Some(("token", false)),
        _ => None,
    };
    let mut key = None;
    if let Some((field, required)) = key_field {
        match t.string(ctx, field) {
            Some(k) if k.value.trim().is_empty() => enabled &= !required,
            Some(k) => key = Some(k.value),
            None if required => {
                let msg = format!("missing required field `{field}` (an empty value turns the receiver off)");
                ctx.diag.error(t.span.clone(), t.field(field), msg);
            }
            None => {}
        }
    }
    let mut to = Vec::new();
    if kind == ReceiverKind::Email {
        match t.strings(ctx, "to") {
            Some(list) => {
                for a in &list {
                    if a.value.parse::<lettre::Address>().is_err() {
                        ctx.diag.error(a.span.clone(), t.field("to"), format!("`{}` is not an email address", a.value));
                    }
                }
                to = list.into_iter().map(|s| s.value).collect();
                enabled = !to.is_empty();
            }
            None => ctx.diag.error(t.span.clone(), t.field("to"), "missing required field `to` (email addresses)"),
        }
    }
    let mut headers = Vec::new();
    if let Some(v) = t.get("headers")
        && let Some(mut h) = TableReader::new(v, t.field("headers"), ctx)
    {
        if kind != ReceiverKind::Webhook {
            ctx.diag.error(v.span(), t.field("headers"), "only a `webhook` receiver takes extra headers");
        }
        let names: Vec<String> = v
            .get_ref()
            .as_table()
            .map(|m| m.iter().map(|(k, _)| k.get_ref().to_string()).collect())
            .unwrap_or_default();
        for header in names {
            let Some(value) = h.string(ctx, &header) else { continue };
            let valid_name = hyper::header::HeaderName::from_bytes(header.as_bytes()).is_ok();
            let valid_value = hyper::header::HeaderValue::from_str(&value.value).is_ok();
            if !valid_name || !valid_value {
                let msg = format!("`{header}` is not a valid HTTP header (name, or a value of visible ASCII)");
                ctx.diag.error(value.span, h.field(&header), msg);
            } else if !value.value.is_empty() {
                headers.push((header, value.value));
            }
        }
        h.finish(ctx, &[]);
    }
    let tags_span = value.get_ref().as_table().and_then(|m| m.get("tags")).map(|v| v.span()).unwrap_or_default();
    let tags = match t.strings(ctx, "tags") {
        Some(tags) if kind == ReceiverKind::Ntfy => tags.into_iter().map(|s| s.value).collect(),
        Some(_) => {
            ctx.diag.error(tags_span, t.field("tags"), "only an `ntfy` receiver takes `tags`");
            Vec::new()
        }
        None => Vec::new(),
    };
    let timeout = t.duration(ctx, "timeout").unwrap_or(TIMEOUT);
    t.finish(ctx, &["kind", "url", "routing_key", "api_key", "token", "to", "headers", "tags", "timeout"]);
    Some(Receiver { name: name.to_owned(), kind, enabled, url, key, headers, to, tags, timeout })
}

pub(super) fn read_route(value: &Value<'_>, index: usize, ctx: &mut Ctx<'_>) -> Option<Route> {
    let mut t = TableReader::new(value, format!("routes #{}", index + 1), ctx)?;
    let mut route = Route::default();
    if let Some(k) = t.string(ctx, "kind") {
        route.kind = match k.value.as_str() {
            "email" => Some(RouteKind::Email),
            "ticket" => Some(RouteKind::Ticket),
            other => {
                let msg = format!(
                    "unknown action kind `{other}`: email or ticket (subscriber notices are not routed; \
                     they go to alerts.subscribers)"
                );
                ctx.diag.error(k.span, t.field("kind"), msg);
                None
            }
        };
    }
    if let Some(p) = t.string(ctx, "priority") {
        route.priority = Priority::parse(&p.value);
        if route.priority.is_none() {
            let msg = format!("unknown priority `{}`: low, normal, high or critical (matches it and above)", p.value);
            ctx.diag.error(p.span, t.field("priority"), msg);
        }
    }
    if let Some(s) = t.string(ctx, "stage") {
        route.stage = Stage::parse(&s.value);
        if route.stage.is_none() {
            ctx.diag.error(s.span, t.field("stage"), format!("unknown stage `{}`: alert or escalation", s.value));
        }
    }
    route.policy = t.string(ctx, "policy").map(|s| s.value);
    route.job = t.string(ctx, "job").map(|s| s.value);
    route.continue_matching = t.bool(ctx, "continue").unwrap_or(false);
    match t.strings(ctx, "receivers") {
        Some(list) => route.receivers = list.into_iter().map(|s| s.value).collect(),
        None => ctx.diag.error(t.span.clone(), t.field("receivers"), "missing required field `receivers`"),
    }
    t.finish(ctx, &["kind", "priority", "stage", "policy", "job", "receivers", "continue"]);
    Some(route)
}

/// Every receiver a route names exists (built in or under `[receivers]`), and every policy
/// and job it names does too.
pub(super) fn check_routes(
    root: &Value<'_>,
    routes: &[Route],
    receivers: &[Receiver],
    jobs: &[std::sync::Arc<Job>],
    policies: &[PolicySpec],
    ctx: &mut Ctx<'_>,
) {
    let items = root.get_ref().as_table().and_then(|t| t.get("routes")).and_then(|v| v.get_ref().as_array());
    let known: Vec<&str> =
        [ADMIN_RECEIVER, TICKETS_RECEIVER].into_iter().chain(receivers.iter().map(|r| r.name.as_str())).collect();
    for (i, route) in routes.iter().enumerate() {
        let span_of = |field: &str| {
            items
                .and_then(|items| items.get(i))
                .and_then(|item| item.get_ref().as_table()?.get(field).map(|v| v.span()))
                .unwrap_or_default()
        };
        let field = |f: &str| format!("routes #{}.{f}", i + 1);
        for name in &route.receivers {
            if !known.contains(&name.as_str()) {
                let msg = format!("no receiver named `{name}` (receivers: {})", known.join(", "));
                ctx.diag.error(span_of("receivers"), field("receivers"), msg);
            }
        }
        if let Some(policy) = &route.policy
            && !policies.iter().any(|p| &p.name == policy)
        {
            ctx.diag.error(span_of("policy"), field("policy"), format!("no policy named `{policy}`"));
        }
        if let Some(job) = &route.job
            && !jobs.iter().any(|j| &j.name == job)
        {
            ctx.diag.error(span_of("job"), field("job"), format!("no job named `{job}`"));
        }
    }
}
