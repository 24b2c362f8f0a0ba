//! The configured receivers: each provider's documented request, built from one routed
//! `Alert` (see `route.rs`), and sent through `http::post_json` (or the mailer, for `email`).
//!
//! - `webhook`: warden's own JSON (`docs/alerting.md`), optional extra headers.
//! - `slack`: an incoming webhook, `text` plus blocks (header, section, context).
//! - `teams`: a workflow webhook, a message with one Adaptive Card attachment.
//! - `discord`: a webhook, `content` plus one embed.
//! - `pagerduty`: Events API v2, `trigger` or `resolve` with the incident's `dedup_key`.
//! - `opsgenie`: `POST /v2/alerts` with the incident as alias; `POST /v2/alerts/{alias}/close`.
//! - `ntfy`: JSON publishing to the server root with the topic from the URL.

use serde_json::{Value, json};

use super::Failure;
use super::http::{HttpClient, post_json};
use crate::base::{Alert, AlertEvent, Priority};
use crate::config::{Receiver, ReceiverKind};

/// What every message says besides the alert: the product, and the job and policy of the row.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub product: &'a str,
    pub job: Option<&'a str>,
    pub policy: Option<&'a str>,
    pub public_url: &'a str,
}

/// Cuts `text` to at most `max` characters (providers refuse longer fields), marking the cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn at_rfc3339(alert: &Alert) -> String {
    chrono::DateTime::from_timestamp_millis(alert.at_ms).unwrap_or_default().to_rfc3339()
}

/// A request: URL, headers and JSON body.
pub type Request = (String, Vec<(String, String)>, Value);

/// The request one receiver gets for one alert.
pub fn request(receiver: &Receiver, alert: &Alert, ctx: Context<'_>) -> Result<Request, Failure> {
    let job = ctx.job.unwrap_or("");
    let policy = ctx.policy.unwrap_or("");
    let resolved = alert.event == AlertEvent::Resolved;
    let status = alert.status.map(|s| s.as_str());
    let mut headers = Vec::new();
    let url = receiver.url.clone();
    let body = match receiver.kind {
        ReceiverKind::Email => return Err(Failure::Permanent("an email receiver is sent by the mailer".into())),
        ReceiverKind::Webhook => {
            headers.extend(receiver.headers.iter().cloned());
            headers.push(("Idempotency-Key".to_owned(), format!("{}:{}", alert.incident, alert.at_ms)));
            json!({
                "version": "1",
                "receiver": alert.receiver,
                "event": if resolved { "resolved" } else { "firing" },
                "stage": alert.stage,
                "summary": alert.summary,
                "body": alert.body,
                "priority": alert.priority,
                "status": status,
                "incident": alert.incident,
                "product": ctx.product,
                "job": ctx.job,
                "policy": ctx.policy,
                "at": at_rfc3339(alert),
                "url": ctx.public_url,
            })
        }
        ReceiverKind::Slack => {
            let mark = if resolved { ":white_check_mark:" } else { ":rotating_light:" };
            json!({
                "text": clip(&format!("{mark} {}", alert.summary), 3000),
                "blocks": [
                    { "type": "header", "text": { "type": "plain_text", "text": clip(&alert.summary, 150), "emoji": true } },
                    { "type": "section", "text": { "type": "mrkdwn", "text": clip(&format!("```{}```", alert.body.trim_end()), 3000) } },
                    { "type": "context", "elements": [
                        { "type": "mrkdwn", "text": clip(&format!("*{}* · job `{job}` · policy `{policy}` · {}", ctx.product, alert.priority.as_str()), 3000) }
                    ] }
                ]
            })
        }
        ReceiverKind::Teams => {
            let color = if resolved { "Good" } else { "Attention" };
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            { "type": "TextBlock", "text": alert.summary, "weight": "Bolder", "size": "Medium", "color": color, "wrap": true },
                            { "type": "TextBlock", "text": alert.body, "wrap": true, "fontType": "Monospace" },
                            { "type": "FactSet", "facts": [
                                { "title": "Product", "value": ctx.product },
                                { "title": "Job", "value": job },
                                { "title": "Policy", "value": policy },
                                { "title": "Priority", "value": alert.priority.as_str() }
                            ] }
                        ]
                    }
                }]
            })
        }
        ReceiverKind::Discord => {
            let color = if resolved {
                0x2e_b8_86
            } else {
                match alert.priority {
                    Priority::Critical => 0xd9_3f_0b,
                    Priority::High => 0xf2_a9_00,
                    Priority::Normal | Priority::Low => 0x3b_82_f6,
                }
            };
            json!({
                "content": clip(&alert.summary, 2000),
                "embeds": [{
                    "title": clip(&alert.summary, 256),
                    "description": clip(&alert.body, 4096),
                    "color": color,
                    "timestamp": at_rfc3339(alert),
                    "fields": [
                        { "name": "Job", "value": clip(if job.is_empty() { "-" } else { job }, 1024), "inline": true },
                        { "name": "Policy", "value": clip(if policy.is_empty() { "-" } else { policy }, 1024), "inline": true },
                        { "name": "Priority", "value": alert.priority.as_str(), "inline": true }
                    ]
                }],
                "allowed_mentions": { "parse": [] }
            })
        }
        ReceiverKind::Pagerduty => {
            let routing_key = receiver.key.clone().unwrap_or_default();
            if resolved {
                json!({ "routing_key": routing_key, "event_action": "resolve", "dedup_key": clip(&alert.incident, 255) })
            } else {
                let severity = match alert.priority {
                    Priority::Critical => "critical",
                    Priority::High => "error",
                    Priority::Normal => "warning",
                    Priority::Low => "info",
                };
                json!({
                    "routing_key": routing_key,
                    "event_action": "trigger",
                    "dedup_key": clip(&alert.incident, 255),
                    "payload": {
                        "summary": clip(&alert.summary, 1024),
                        "source": if job.is_empty() { ctx.product } else { job },
                        "severity": severity,
                        "timestamp": at_rfc3339(alert),
                        "component": job,
                        "group": policy,
                        "class": alert.stage,
                        "custom_details": {
                            "body": alert.body,
                            "product": ctx.product,
                            "job": ctx.job,
                            "policy": ctx.policy,
                            "status": status,
                        }
                    },
                    "client": ctx.product,
                    "client_url": ctx.public_url,
                })
            }
        }
        ReceiverKind::Opsgenie => {
            headers
                .push(("Authorization".to_owned(), format!("GenieKey {}", receiver.key.clone().unwrap_or_default())));
            let base = receiver.url.trim_end_matches('/');
            if resolved {
                let alias = super::unsubscribe::encode(&clip(&alert.incident, 512));
                return Ok((
                    format!("{base}/v2/alerts/{alias}/close?identifierType=alias"),
                    headers,
                    json!({ "source": "warden", "note": clip(&alert.summary, 25000) }),
                ));
            }
            let priority = match alert.priority {
                Priority::Critical => "P1",
                Priority::High => "P2",
                Priority::Normal => "P3",
                Priority::Low => "P5",
            };
            let tags: Vec<&str> = [ctx.product, job, policy].into_iter().filter(|t| !t.is_empty()).collect();
            return Ok((
                format!("{base}/v2/alerts"),
                headers,
                json!({
                    "message": clip(&alert.summary, 130),
                    "alias": clip(&alert.incident, 512),
                    "description": clip(&alert.body, 15000),
                    "priority": priority,
                    "source": "warden",
                    "entity": job,
                    "tags": tags,
                    "details": { "product": ctx.product, "job": job, "policy": policy, "status": status.unwrap_or("") },
                }),
            ));
        }
        ReceiverKind::Ntfy => {
            if let Some(token) = &receiver.key {
                headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
            }
            let (server, topic) = match receiver.url.trim_end_matches('/').rsplit_once('/') {
                Some((server, topic)) if server.contains("://") && !server.ends_with('/') => (server, topic),
                _ => return Err(Failure::Permanent("an ntfy URL names its topic: https://ntfy.sh/TOPIC".into())),
            };
            let priority = if resolved {
                3
            } else {
                match alert.priority {
                    Priority::Critical => 5,
                    Priority::High => 4,
                    Priority::Normal => 3,
                    Priority::Low => 2,
                }
            };
            let mut tags = vec![if resolved { "white_check_mark" } else { "rotating_light" }.to_owned()];
            tags.extend(receiver.tags.iter().cloned());
            return Ok((
                server.to_owned(),
                headers,
                json!({
                    "topic": topic,
                    "title": clip(&alert.summary, 250),
                    "message": clip(&alert.body, 4000),
                    "priority": priority,
                    "tags": tags,
                }),
            ));
        }
    };
    Ok((url, headers, body))
}

/// Sends one alert to one HTTP receiver.
pub async fn send(
    client: &HttpClient,
    receiver: &Receiver,
    alert: &Alert,
    ctx: Context<'_>,
) -> Result<String, Failure> {
    let (url, headers, body) = request(receiver, alert, ctx)?;
    post_json(client, &url, &headers, &body, receiver.timeout.std(), receiver.kind.as_str()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{Stage, Status};

    fn receiver(kind: ReceiverKind, url: &str) -> Receiver {
        Receiver {
            name: "r".into(),
            kind,
            enabled: true,
            url: url.into(),
            key: Some("KEY".into()),
            headers: vec![("Authorization".into(), "Bearer s".into())],
            to: Vec::new(),
            tags: vec!["prod".into()],
            timeout: crate::base::Duration::from_secs(1),
        }
    }

    fn alert(event: AlertEvent) -> Alert {
        Alert {
            receiver: "r".into(),
            event,
            summary: "MNW down — critical service failure".into(),
            body: "Status: Error\n".into(),
            priority: Priority::Critical,
            status: Some(Status::Error),
            incident: "warden/status-alert/probe/1".into(),
            stage: Stage::Alert,
            at_ms: 1_700_000_000_000,
        }
    }

    const CTX: Context<'static> =
        Context { product: "MNW", job: Some("probe"), policy: Some("status-alert"), public_url: "http://x" };

    #[test]
    fn opsgenie_closes_by_alias_and_ntfy_publishes_to_the_server_root() {
        let og = receiver(ReceiverKind::Opsgenie, "https://api.eu.opsgenie.com/");
        let (url, headers, _) = request(&og, &alert(AlertEvent::Resolved), CTX).unwrap();
        assert_eq!(
            url,
            "https://api.eu.opsgenie.com/v2/alerts/warden%2Fstatus-alert%2Fprobe%2F1/close?identifierType=alias"
        );
        assert_eq!(headers, [("Authorization".to_owned(), "GenieKey KEY".to_owned())]);
        let ntfy = receiver(ReceiverKind::Ntfy, "https://ntfy.example.org/alerts");
        let (url, _, body) = request(&ntfy, &alert(AlertEvent::Firing), CTX).unwrap();
        assert_eq!(url, "https://ntfy.example.org");
        assert_eq!(body["topic"], "alerts");
        assert_eq!(body["priority"], 5);
        assert_eq!(body["tags"], json!(["rotating_light", "prod"]));
        assert!(request(&receiver(ReceiverKind::Ntfy, "https://ntfy.sh"), &alert(AlertEvent::Firing), CTX).is_err());
    }

    #[test]
    fn long_text_is_clipped_to_the_provider_s_limit() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "ab…");
        assert_eq!(clip("ééé", 2).chars().count(), 2);
    }
}
