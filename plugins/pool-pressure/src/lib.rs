//! `pool-pressure`: DB pool pressure with hysteresis.
//!
//! Warns at or above `warn_ratio` (0.8) of the pool active; opens a ticket on the rising edge
//! only, re-armed once the ratio falls below `rearm_ratio` (0.6); `cooldown` ("5m") is a
//! backstop between tickets. Reads the `db_pool_active` and `db_pool_max` gauges.

use warden_policy::{
    Action, Config, Event, GaugeSet, Guest, HostState, Level, LogEntry, Priority, State, Ticket, clock, host_config,
};

#[derive(Debug)]
pub struct Rules {
    pub product: String,
    pub warn_ratio: f64,
    pub rearm_ratio: f64,
    pub cooldown_ms: i64,
}

impl Rules {
    pub fn from_config<F: Fn(&str) -> Option<String>>(config: &Config<F>) -> Result<Rules, String> {
        let rules = Rules {
            product: config.text("product", "warden"),
            warn_ratio: config.number("warn_ratio", 0.8)?,
            rearm_ratio: config.number("rearm_ratio", 0.6)?,
            cooldown_ms: config.duration_ms("cooldown", "5m")?,
        };
        if !(0.0 < rules.rearm_ratio && rules.rearm_ratio < rules.warn_ratio && rules.warn_ratio <= 1.0) {
            return Err("config: need 0 < rearm_ratio < warn_ratio <= 1".into());
        }
        Ok(rules)
    }
}

const ARMED: &str = "armed";
const TICKET_AT: &str = "last_ticket_ms";

fn gauge(set: &GaugeSet, name: &str) -> Option<f64> {
    set.gauges.iter().find(|g| g.name == name).map(|g| g.value)
}

pub fn decide(rules: &Rules, set: &GaugeSet, now_ms: i64, state: &mut impl State) -> Vec<Action> {
    let (Some(active), Some(max)) = (gauge(set, "db_pool_active"), gauge(set, "db_pool_max")) else {
        return Vec::new();
    };
    if max <= 0.0 {
        return Vec::new();
    }
    let ratio = active / max;
    let armed = state.get(ARMED).is_none_or(|v| v == "1");
    let mut actions = Vec::new();
    if ratio >= rules.warn_ratio {
        let pct = (ratio * 100.0).round();
        actions.push(Action::Log(LogEntry {
            level: Level::Warn,
            message: format!("DB pool pressure: {active} of {max} connections active ({pct}%)"),
        }));
        let cooled = state.get_i64(TICKET_AT).is_none_or(|at| now_ms - at >= rules.cooldown_ms);
        if armed && cooled {
            actions.push(Action::OpenTicket(Ticket {
                title: format!("{} DB pool pressure: {pct}% of connections active", rules.product),
                body: format!(
                    "{active} of {max} pooled connections are active ({pct}%), at or above the {}% warning level.\n",
                    (rules.warn_ratio * 100.0).round()
                ),
                priority: Priority::High,
                dedup_key: format!("rising:{now_ms}"),
            }));
            state.set(ARMED, "0".into());
            state.set(TICKET_AT, now_ms.to_string());
        }
    } else if ratio < rules.rearm_ratio && !armed {
        state.set(ARMED, "1".into());
    }
    actions
}

struct PoolPressure;

impl Guest for PoolPressure {
    fn evaluate(event: Event) -> Result<Vec<Action>, String> {
        let Event::Gauges(set) = event else { return Ok(Vec::new()) };
        let rules = Rules::from_config(&host_config())?;
        Ok(decide(&rules, &set, clock::now_ms(), &mut HostState))
    }
}

warden_policy::export!(PoolPressure);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use warden_policy::Gauge;

    fn set(active: f64) -> GaugeSet {
        let g = |name: &str, value: f64| Gauge { name: name.into(), labels: vec![], value };
        GaugeSet { job: "db-pool".into(), at_ms: 0, gauges: vec![g("db_pool_active", active), g("db_pool_max", 100.0)] }
    }

    /// Tickets opened along a series of active-percentages, one minute apart.
    fn tickets(rules: &Rules, series: &[f64]) -> Vec<bool> {
        let mut state = BTreeMap::new();
        series
            .iter()
            .enumerate()
            .map(|(i, &pct)| {
                decide(rules, &set(pct), i as i64 * 60_000, &mut state)
                    .iter()
                    .any(|a| matches!(a, Action::OpenTicket(_)))
            })
            .collect()
    }

    fn rules(cooldown_ms: i64) -> Rules {
        Rules { product: "MNW".into(), warn_ratio: 0.8, rearm_ratio: 0.6, cooldown_ms }
    }

    #[test]
    fn hysteresis_table() {
        let table: [(&[f64], &[bool]); 4] = [
            (&[80.0, 65.0, 85.0], &[true, false, false]), // not re-armed above 60 %
            (&[80.0, 55.0, 85.0], &[true, false, true]),  // re-armed below 60 %
            (&[79.0, 90.0, 95.0], &[false, true, false]), // rising edge only
            (&[50.0, 59.0, 61.0], &[false, false, false]),
        ];
        for (series, want) in table {
            assert_eq!(tickets(&rules(0), series), want, "{series:?}");
        }
    }

    #[test]
    fn the_cooldown_is_a_backstop() {
        // Re-armed, but the second edge comes inside the cooldown: no ticket until it ends.
        assert_eq!(
            tickets(&rules(5 * 60_000), &[80.0, 55.0, 85.0, 85.0, 85.0, 90.0]),
            [true, false, false, false, false, true]
        );
    }

    #[test]
    fn warns_at_or_above_the_level() {
        let mut state = BTreeMap::new();
        let actions = decide(&rules(0), &set(85.0), 0, &mut state);
        assert!(matches!(&actions[0], Action::Log(l) if l.level == Level::Warn && l.message.contains("85%")));
        assert!(decide(&rules(0), &set(70.0), 1, &mut state).is_empty());
    }
}
