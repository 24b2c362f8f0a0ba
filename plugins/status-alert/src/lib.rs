//! `status-alert`: the original monitor's transition alerts.
//!
//! On a status transition (the first None → Operational at boot is skipped): log it; under
//! one shared cooldown email the admin and notify opted-in subscribers; on a transition to
//! Degraded or Error open a ticket (high / critical). Beyond the original: a transition the
//! cooldown held back is told when the cooldown ends if the status still differs from the
//! last one told, and optional thresholds need N consecutive results before a transition counts.
//!
//! Config: `product` ("warden"), `cooldown` ("5m"), `failure_threshold` (1), `success_threshold` (1).
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
        })
    }
}

const LAST: &str = "last_status";
const TOLD: &str = "last_told";
const ALERT_AT: &str = "last_alert_ms";
const PENDING: &str = "pending_status";
const PENDING_COUNT: &str = "pending_count";

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
    }
    actions
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
