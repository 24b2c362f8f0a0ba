//! `pg-saturation`: Postgres connection saturation.
//!
//! Client backends over `threshold` (0.8) of `max_connections` warn and open a ticket under
//! `cooldown` ("5m"), with the diagnostic query in the body. Reads the `pg_client_backends`
//! and `pg_max_connections` gauges.

use warden_policy::{
    Action, Config, Event, GaugeSet, Guest, HostState, Level, LogEntry, Priority, State, Ticket, clock, host_config,
};

/// What an operator runs to see who holds the connections.
pub const DIAGNOSTIC_QUERY: &str = "SELECT usename, application_name, client_addr, state, count(*)\n\
FROM pg_stat_activity WHERE backend_type = 'client backend'\n\
GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC;";

#[derive(Debug)]
pub struct Rules {
    pub product: String,
    pub threshold: f64,
    pub cooldown_ms: i64,
}

impl Rules {
    pub fn from_config<F: Fn(&str) -> Option<String>>(config: &Config<F>) -> Result<Rules, String> {
        let rules = Rules {
            product: config.text("product", "warden"),
            threshold: config.number("threshold", 0.8)?,
            cooldown_ms: config.duration_ms("cooldown", "5m")?,
        };
        if !(0.0 < rules.threshold && rules.threshold <= 1.0) {
            return Err("config `threshold`: expected a ratio in (0, 1]".into());
        }
        Ok(rules)
    }
}

const TICKET_AT: &str = "last_ticket_ms";

fn gauge(set: &GaugeSet, name: &str) -> Option<f64> {
    set.gauges.iter().find(|g| g.name == name).map(|g| g.value)
}

pub fn decide(rules: &Rules, set: &GaugeSet, now_ms: i64, state: &mut impl State) -> Vec<Action> {
    let (Some(backends), Some(max)) = (gauge(set, "pg_client_backends"), gauge(set, "pg_max_connections")) else {
        return Vec::new();
    };
    if max <= 0.0 || backends / max <= rules.threshold {
        return Vec::new();
    }
    let pct = (backends / max * 100.0).round();
    let mut actions = vec![Action::Log(LogEntry {
        level: Level::Warn,
        message: format!("Postgres connection saturation: {backends} of {max} client backends ({pct}%)"),
    })];
    if state.get_i64(TICKET_AT).is_none_or(|at| now_ms - at >= rules.cooldown_ms) {
        actions.push(Action::OpenTicket(Ticket {
            title: format!("{} Postgres connections {pct}% of max_connections", rules.product),
            body: format!(
                "{backends} client backends of max_connections = {max} ({pct}%), over the {}% threshold.\n\n\
                 Who holds them:\n\n{DIAGNOSTIC_QUERY}\n",
                (rules.threshold * 100.0).round()
            ),
            priority: Priority::High,
            dedup_key: format!("saturated:{now_ms}"),
        }));
        state.set(TICKET_AT, now_ms.to_string());
    }
    actions
}

struct PgSaturation;

impl Guest for PgSaturation {
    fn evaluate(event: Event) -> Result<Vec<Action>, String> {
        let Event::Gauges(set) = event else { return Ok(Vec::new()) };
        let rules = Rules::from_config(&host_config())?;
        Ok(decide(&rules, &set, clock::now_ms(), &mut HostState))
    }
}

warden_policy::export!(PgSaturation);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use warden_policy::Gauge;

    fn set(backends: f64) -> GaugeSet {
        let g = |name: &str, value: f64| Gauge { name: name.into(), labels: vec![], value };
        GaugeSet {
            job: "pg".into(),
            at_ms: 0,
            gauges: vec![g("pg_client_backends", backends), g("pg_max_connections", 100.0)],
        }
    }

    #[test]
    fn saturation_tickets_under_cooldown() {
        let rules = Rules { product: "MNW".into(), threshold: 0.8, cooldown_ms: 300_000 };
        let mut state = BTreeMap::new();
        let mut ticket = |backends: f64, at: i64| {
            decide(&rules, &set(backends), at, &mut state).iter().any(|a| matches!(a, Action::OpenTicket(_)))
        };
        assert!(!ticket(80.0, 0), "80 % is not over 80 %");
        assert!(ticket(81.0, 1_000));
        assert!(!ticket(95.0, 60_000), "inside the cooldown");
        assert!(ticket(95.0, 301_000), "after the cooldown");
    }

    #[test]
    fn the_ticket_carries_the_diagnostic_query() {
        let rules = Rules { product: "MNW".into(), threshold: 0.8, cooldown_ms: 0 };
        let actions = decide(&rules, &set(90.0), 0, &mut BTreeMap::new());
        let Some(Action::OpenTicket(t)) = actions.iter().find(|a| matches!(a, Action::OpenTicket(_))) else {
            panic!("no ticket")
        };
        assert!(t.body.contains("pg_stat_activity") && t.title.contains("90%"));
    }
}
