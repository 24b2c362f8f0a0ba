//! Plain values every layer shares: durations, statuses and snapshots, the events tasks
//! report and the actions policies decide, what an outbox row is and where it stands, what
//! a silence matches; and two helpers (a redacted URL, an atomic file write).
//!
//! Architecture invariant: this module imports nothing of the crate, so any module may use
//! it without an import circle. Text forms are parsed once, at the edge (the database row,
//! the configuration, the API query); inside, a kind or a state is an enum and every
//! `match` on it is exhaustive, so a new kind is a compile error wherever it is forgotten.

pub mod action;
pub mod duration;
pub mod event;
pub mod health;
pub mod matchers;
pub mod text;

use std::fmt;

pub use action::{ActionRecord, Alert, AlertEvent, Priority, Stage};
pub use duration::Duration;
pub use event::{Event, Gauge, RunResult};
pub use health::{CheckResult, Snapshot, Status};
pub use matchers::Matchers;

/// What an outbox row sends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OutboxKind {
    /// An email to the admin addresses.
    Email,
    /// The subscriber fan-out; a silence on it also holds back the per-user notices.
    Subscribers,
    /// One user's status notice.
    Notice,
    /// A ticket (webhook or file).
    Ticket,
    /// A JSON alert POSTed to a `webhook` receiver.
    Webhook,
    /// A Slack incoming-webhook message.
    Slack,
    /// A Microsoft Teams workflow webhook with an Adaptive Card.
    Teams,
    /// A Discord webhook message.
    Discord,
    /// A PagerDuty Events API v2 event (trigger or resolve).
    Pagerduty,
    /// An Opsgenie alert (create or close).
    Opsgenie,
    /// An ntfy message.
    Ntfy,
}

impl OutboxKind {
    pub const ALL: [OutboxKind; 11] = [
        OutboxKind::Email,
        OutboxKind::Subscribers,
        OutboxKind::Notice,
        OutboxKind::Ticket,
        OutboxKind::Webhook,
        OutboxKind::Slack,
        OutboxKind::Teams,
        OutboxKind::Discord,
        OutboxKind::Pagerduty,
        OutboxKind::Opsgenie,
        OutboxKind::Ntfy,
    ];

    /// The kinds the urgent lane sends (everything but the paced per-user notices).
    pub const URGENT: [OutboxKind; 10] = [
        OutboxKind::Email,
        OutboxKind::Subscribers,
        OutboxKind::Ticket,
        OutboxKind::Webhook,
        OutboxKind::Slack,
        OutboxKind::Teams,
        OutboxKind::Discord,
        OutboxKind::Pagerduty,
        OutboxKind::Opsgenie,
        OutboxKind::Ntfy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Email => "email",
            OutboxKind::Subscribers => "subscribers",
            OutboxKind::Notice => "notice",
            OutboxKind::Ticket => "ticket",
            OutboxKind::Webhook => "webhook",
            OutboxKind::Slack => "slack",
            OutboxKind::Teams => "teams",
            OutboxKind::Discord => "discord",
            OutboxKind::Pagerduty => "pagerduty",
            OutboxKind::Opsgenie => "opsgenie",
            OutboxKind::Ntfy => "ntfy",
        }
    }

    pub fn parse(text: &str) -> Option<OutboxKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether the dispatcher may send a row of this kind straight from the spool while the
    /// store is down (the fan-out needs the store, and its notices come from it).
    pub fn sent_from_spool(self) -> bool {
        match self {
            OutboxKind::Email
            | OutboxKind::Ticket
            | OutboxKind::Webhook
            | OutboxKind::Slack
            | OutboxKind::Teams
            | OutboxKind::Discord
            | OutboxKind::Pagerduty
            | OutboxKind::Opsgenie
            | OutboxKind::Ntfy => true,
            OutboxKind::Subscribers | OutboxKind::Notice => false,
        }
    }
}

impl fmt::Display for OutboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for OutboxKind {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
            .ok_or_else(|| format!("unknown outbox kind `{text}`: {}", names(&Self::ALL.map(Self::as_str))))
    }
}

/// Where an outbox row stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OutboxState {
    Pending,
    Delivered,
    /// Out of attempts (or refused for good); `warden outbox retry` re-drives it.
    Failed,
    /// Held back by a silence, a maintenance window or an opt-out; never sent.
    Silenced,
    /// A subscriber notice overtaken by a newer status change before it was told.
    Superseded,
}

impl OutboxState {
    pub const ALL: [OutboxState; 5] = [
        OutboxState::Pending,
        OutboxState::Delivered,
        OutboxState::Failed,
        OutboxState::Silenced,
        OutboxState::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Failed => "failed",
            OutboxState::Silenced => "silenced",
            OutboxState::Superseded => "superseded",
        }
    }

    pub fn parse(text: &str) -> Option<OutboxState> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for OutboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for OutboxState {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
            .ok_or_else(|| format!("unknown outbox state `{text}`: {}", names(&Self::ALL.map(Self::as_str))))
    }
}

/// `a, b, c or d`.
pub fn names(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_round_trip_as_text_and_json() {
        for kind in OutboxKind::ALL {
            assert_eq!(OutboxKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        for state in OutboxState::ALL {
            assert_eq!(OutboxState::try_from(state.as_str().to_owned()), Ok(state));
        }
        assert_eq!(
            OutboxKind::try_from("sms".to_owned()).unwrap_err(),
            "unknown outbox kind `sms`: email, subscribers, notice, ticket, webhook, slack, teams, discord, pagerduty, \
             opsgenie or ntfy"
        );
    }
}
