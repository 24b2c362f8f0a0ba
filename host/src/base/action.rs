//! The actions a policy decides, as the host stores (in the outbox) and delivers them.

use serde::{Deserialize, Serialize};

use super::OutboxKind;
use super::health::Status;

/// Ticket priority, as stored in the outbox; ordered from least to most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::Low, Priority::Normal, Priority::High, Priority::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The priority of an alert about `status`: what an email, which carries none, is
    /// routed and delivered with.
    pub fn of_status(status: Option<Status>) -> Priority {
        match status {
            Some(Status::Error) => Priority::Critical,
            Some(Status::Degraded) => Priority::High,
            Some(Status::Operational) => Priority::Normal,
            None => Priority::High,
        }
    }
}

/// Whether an alert opens (or repeats) trouble, or tells that it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertEvent {
    Firing,
    Resolved,
}

/// Where in an incident an action stands, for routes (`stage = "escalation"`). A policy
/// marks an escalation by a ticket whose dedup key starts with `escalation:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    #[default]
    Alert,
    Escalation,
}

impl Stage {
    pub fn parse(text: &str) -> Option<Stage> {
        match text {
            "alert" => Some(Stage::Alert),
            "escalation" => Some(Stage::Escalation),
            _ => None,
        }
    }
}

/// One action on its way to one configured receiver: what an outbox row of a receiver's
/// kind holds. `incident` is the provider's key for the trouble (PagerDuty's `dedup_key`,
/// Opsgenie's alias, a ticket's dedup key): the recovery resolves it with the same key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub receiver: String,
    pub event: AlertEvent,
    pub summary: String,
    pub body: String,
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    pub incident: String,
    #[serde(default)]
    pub stage: Stage,
    pub at_ms: i64,
}

/// An action a policy decided, as the host stores and delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ActionRecord {
    EmailAdmin { subject: String, body: String },
    NotifySubscribers { status: Status, previous: Option<Status> },
    OpenTicket { title: String, body: String, priority: Priority, dedup_key: String },
    Log { level: String, message: String },
}

impl ActionRecord {
    /// The outbox kind; `None` for actions the host performs at once (logs).
    pub fn outbox_kind(&self) -> Option<OutboxKind> {
        match self {
            ActionRecord::EmailAdmin { .. } => Some(OutboxKind::Email),
            ActionRecord::NotifySubscribers { .. } => Some(OutboxKind::Subscribers),
            ActionRecord::OpenTicket { .. } => Some(OutboxKind::Ticket),
            ActionRecord::Log { .. } => None,
        }
    }

    /// Bytes of text it carries (what the host caps per evaluation).
    pub fn text_len(&self) -> usize {
        match self {
            ActionRecord::EmailAdmin { subject, body } => subject.len() + body.len(),
            ActionRecord::NotifySubscribers { .. } => 0,
            ActionRecord::OpenTicket { title, body, dedup_key, .. } => title.len() + body.len() + dedup_key.len(),
            ActionRecord::Log { message, .. } => message.len(),
        }
    }
}
