//! `status-alert`: the original monitor's transition alerts.
//!
//! On a status transition (the first None → Operational at boot is skipped): log it; under
//! one shared cooldown email the admin and notify opted-in subscribers; on a transition to
//! Degraded or Error open a ticket (high / critical). Beyond the original: a transition the
//! cooldown held back is told when the cooldown ends if the status still differs from the
//! last one told, and optional thresholds need N consecutive results before a transition counts.
//!
//! Reminders and escalation (both off by default): while the status stays bad, `remind_every`
//! repeats the alert ("still down", to the same receivers as the alert); once it has been bad
//! for `escalate_after`, one critical ticket whose dedup key starts with `escalation:` is
//! opened, which routes select with `stage = "escalation"` (a second set of receivers).
//!
//! Config: `product` ("warden"), `cooldown` ("5m"), `failure_threshold` (1), `success_threshold` (1),
//! `remind_every` ("0s": off), `escalate_after` ("0s": off).
//! The host keeps this policy's state per job and tells it how many jobs it listens to
//! (`warden.jobs`): the body always names the job, and the subject does too when there is
//! more than one.

use warden_policy::{
    Action, Config, Email, Guest, HostState, Level, LogEntry, Priority, Snapshot, State, Status, StatusChange, Ticket,
    clock, host_config,
};

/// The decision rules, as plain Rust.
#[derive(Debug)]
pub struct Rules {
    pub product: String,
    pub cooldown_ms: i64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    /// The policy listens to more than one job: subjects and ticket titles name the job.
    pub name_job: bool,
    /// Repeat the alert this often while the status stays bad; 0: never.
    pub remind_every_ms: i64,
    /// Escalate once the status has been bad this long; 0: never.
    pub escalate_after_ms: i64,
}

impl Rules {
    pub fn from_config<F: Fn(&str) -> Option<String>>(config: &Config<F>) -> Result<Rules, String> {
        let threshold = |key: &str| -> Result<u32, String> {
            let n = config.number(key, 1.0)?;
            if n >= 1.0 && n.fract() == 0.0 && n <= 1000.0 {
                Ok(n as u32)
            } else {
                Err(format!("config `{key}`: expected a whole number from 1 to 1000"))
            }
        };
        Ok(Rules {
            product: config.text("product", "warden"),
            cooldown_ms: config.duration_ms("cooldown", "5m")?,
            failure_threshold: threshold("failure_threshold")?,
            success_threshold: threshold("success_threshold")?,
            name_job: config.number("warden.jobs", 1.0)? > 1.0,
            remind_every_ms: config.duration_ms("remind_every", "0s")?,
            escalate_after_ms: config.duration_ms("escalate_after", "0s")?,
        })
    }
}

const LAST: &str = "last_status";
const TOLD: &str = "last_told";
const ALERT_AT: &str = "last_alert_ms";
const PENDING: &str = "pending_status";
const PENDING_COUNT: &str = "pending_count";
/// When the status last went bad (from operational or unknown).
const BAD_SINCE: &str = "bad_since_ms";
const REMINDED_AT: &str = "last_remind_ms";
const ESCALATED: &str = "escalated";

/// One evaluation: reads and writes `state`, returns the actions.
pub fn decide(rules: &Rules, snap: &Snapshot, now_ms: i64, state: &mut impl State) -> Vec<Action> {
    let mut actions = Vec::new();
    let observed = snap.status;
    let last = state.get(LAST).as_deref().and_then(Status::parse);

    let confirmed = match last {
        None => Some(observed),
        Some(last) if last == observed => {
            state.remove(PENDING);
            state.remove(PENDING_COUNT);
            None
        }
        Some(last) => {
            let count = match state.get(PENDING).as_deref().and_then(Status::parse) {
                Some(p) if p == observed => state.get_i64(PENDING_COUNT).unwrap_or(0) + 1,
                _ => 1,
            };
            let needed =
                if observed.severity() < last.severity() { rules.success_threshold } else { rules.failure_threshold };
            if count >= i64::from(needed) {
                state.remove(PENDING);
                state.remove(PENDING_COUNT);
                Some(observed)
            } else {
                state.set(PENDING, observed.name().to_owned());
                state.set(PENDING_COUNT, count.to_string());
                None
            }
        }
    };

    let cooldown_over = |state: &dyn Fn(&str) -> Option<i64>| match state(ALERT_AT) {
        Some(at) => now_ms - at >= rules.cooldown_ms,
        None => true,
    };

    if let Some(new) = confirmed {
        state.set(LAST, new.name().to_owned());
        state.remove(REMINDED_AT);
        if new == Status::Operational {
            state.remove(BAD_SINCE);
            state.remove(ESCALATED);
        } else if last.is_none_or(|l| l == Status::Operational) {
            state.set(BAD_SINCE, now_ms.to_string());
        }
        if last.is_none() && new == Status::Operational {
            // The bootstrap None -> Operational is not news.
            state.set(TOLD, new.name().to_owned());
            return actions;
        }
        let from = last.map_or("unknown", Status::name);
        actions.push(log(Level::Info, format!("status changed: {from} -> {}", new.name())));
        if new != Status::Operational {
            let (priority, what) = match new {
                Status::Error => (Priority::Critical, "down"),
                _ => (Priority::High, "degraded"),
            };
            actions.push(Action::OpenTicket(Ticket {
                title: with_job(rules, snap, format!("{} {what}: status {}", rules.product, new.name())),
                body: body(snap, last),
                priority,
                dedup_key: format!("{}:{now_ms}", new.name()),
            }));
        }
        if cooldown_over(&|k| state.get_i64(k)) {
            tell(rules, snap, new, last, now_ms, state, &mut actions);
        } else {
            actions.push(log(Level::Info, format!("alert for {} held back by the cooldown", new.name())));
        }
        return actions;
    }

    // Trailing notice: the status differs from the last one told and the cooldown is over.
    let current = state.get(LAST).as_deref().and_then(Status::parse);
    let told = state.get(TOLD).as_deref().and_then(Status::parse);
    if let Some(current) = current
        && told != Some(current)
        && cooldown_over(&|k| state.get_i64(k))
    {
        tell(rules, snap, current, told, now_ms, state, &mut actions);
        return actions;
    }
    if let Some(current) = current
        && current != Status::Operational
    {
        remind_or_escalate(rules, snap, current, now_ms, state, &mut actions);
    }
    actions
}

/// While the status stays bad: the reminder once `remind_every` has passed since the last
/// alert or reminder (only once the bad status was told), and the escalation once.
fn remind_or_escalate(
    rules: &Rules,
    snap: &Snapshot,
    current: Status,
    now_ms: i64,
    state: &mut impl State,
    actions: &mut Vec<Action>,
) {
    let since = state.get_i64(BAD_SINCE);
    let what = match current {
        Status::Error => "down",
        _ => "degraded",
    };
    if rules.escalate_after_ms > 0
        && let Some(since) = since
        && now_ms - since >= rules.escalate_after_ms
        && state.get(ESCALATED).is_none()
    {
        let title = format!("{} escalated: {what} for {}", rules.product, for_how_long(now_ms - since));
        actions.push(Action::OpenTicket(Ticket {
            title: with_job(rules, snap, title),
            body: body(snap, Some(current)),
            priority: Priority::Critical,
            dedup_key: format!("escalation:{}:{since}", current.name()),
        }));
        actions.push(log(Level::Warn, format!("escalated: {what} for {}", for_how_long(now_ms - since))));
        state.set(ESCALATED, "1".to_owned());
    }
    let told = state.get(TOLD).as_deref().and_then(Status::parse);
    if rules.remind_every_ms > 0 && told == Some(current) {
        let last = state.get_i64(REMINDED_AT).or_else(|| state.get_i64(ALERT_AT));
        if last.is_none_or(|at| now_ms - at >= rules.remind_every_ms) {
            let long = since.map_or_else(String::new, |since| format!(" (for {})", for_how_long(now_ms - since)));
            let subject = format!("{}{long}", subject(&rules.product, current)).replacen(
                &format!("{} {what}", rules.product),
                &format!("{} still {what}", rules.product),
                1,
            );
            actions.push(Action::EmailAdmin(Email {
                subject: with_job(rules, snap, subject),
                body: body(snap, Some(current)),
            }));
            state.set(REMINDED_AT, now_ms.to_string());
        }
    }
}

/// `45s`, `15m`, `2h30m`, `3d4h`.
pub fn for_how_long(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 && s % 3600 / 60 == 0 => format!("{}h", s / 3600),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn tell(
    rules: &Rules,
    snap: &Snapshot,
    status: Status,
    previous: Option<Status>,
    now_ms: i64,
    state: &mut impl State,
    actions: &mut Vec<Action>,
) {
    let subject = with_job(rules, snap, subject(&rules.product, status));
    actions.push(Action::EmailAdmin(Email { subject, body: body(snap, previous) }));
    actions.push(Action::NotifySubscribers(StatusChange { status, previous }));
    state.set(ALERT_AT, now_ms.to_string());
    state.set(TOLD, status.name().to_owned());
}

/// The original monitor's subjects.
pub fn subject(product: &str, status: Status) -> String {
    match status {
        Status::Operational => format!("{product} recovered — all services operational"),
        Status::Degraded => format!("{product} degraded — partial service failure"),
        Status::Error => format!("{product} down — critical service failure"),
    }
}

/// `text`, naming the job when the policy listens to several.
fn with_job(rules: &Rules, snap: &Snapshot, text: String) -> String {
    if rules.name_job { format!("{text} ({})", snap.job) } else { text }
}

fn title(status: Option<Status>) -> &'static str {
    match status {
        Some(Status::Operational) => "Operational",
        Some(Status::Degraded) => "Degraded",
        Some(Status::Error) => "Error",
        None => "Unknown",
    }
}

/// Status, previous status, the job, every check OK|FAIL and the check duration in ms.
pub fn body(snap: &Snapshot, previous: Option<Status>) -> String {
    let mut out =
        format!("Status: {}\nPrevious status: {}\nJob: {}\n", title(Some(snap.status)), title(previous), snap.job);
    for check in &snap.checks {
        let label = match check.name.as_str() {
            "db" => "DB".to_owned(),
            "s3" => "S3".to_owned(),
            "sessions" => "Sessions".to_owned(),
            other => other.to_owned(),
        };
        match (&check.ok, &check.error) {
            (true, _) => out.push_str(&format!("{label}: OK\n")),
            (false, Some(e)) => out.push_str(&format!("{label}: FAIL ({e})\n")),
            (false, None) => out.push_str(&format!("{label}: FAIL\n")),
        }
    }
    out.push_str(&format!("Check duration: {} ms\n", snap.duration_ms));
    out
}

fn log(level: Level, message: String) -> Action {
    Action::Log(LogEntry { level, message })
}

struct StatusAlert;

impl Guest for StatusAlert {
    fn evaluate(event: warden_policy::Event) -> Result<Vec<Action>, String> {
        let warden_policy::Event::Snapshot(snap) = event else { return Ok(Vec::new()) };
        let rules = Rules::from_config(&host_config())?;
        Ok(decide(&rules, &snap, clock::now_ms(), &mut HostState))
    }
}

warden_policy::export!(StatusAlert);

#[cfg(test)]
mod tests;
