//! The actions a policy decides, as the host stores (in the outbox) and delivers them.

use serde::{Deserialize, Serialize};

use super::OutboxKind;
use super::health::Status;

/// Ticket priority, as stored in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
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
