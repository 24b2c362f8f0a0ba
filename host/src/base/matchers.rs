//! What a silence or a maintenance window matches.

use super::OutboxKind;

/// What a silence or a maintenance window matches; an absent field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Matchers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `subscribers` also matches the per-user notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<OutboxKind>,
}

impl Matchers {
    pub fn matches(&self, job: Option<&str>, policy: Option<&str>, kind: OutboxKind) -> bool {
        let field = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == have);
        let kind_ok = match self.kind {
            None => true,
            Some(OutboxKind::Subscribers) => matches!(kind, OutboxKind::Subscribers | OutboxKind::Notice),
            Some(k) => k == kind,
        };
        field(&self.job, job) && field(&self.policy, policy) && kind_ok
    }
}
