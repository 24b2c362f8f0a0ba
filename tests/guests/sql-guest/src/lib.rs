//! Imports the granted-only interfaces: reads the target with SQL and heads an S3 key.

use warden_policy::bindings::warden::policy::sql::{self, Cell};
use warden_policy::{Action, Event, Guest, Level, LogEntry, config};

struct SqlGuest;

impl Guest for SqlGuest {
    fn evaluate(_event: Event) -> Result<Vec<Action>, String> {
        let statement = config::get("query").unwrap_or_else(|| "SELECT 1".into());
        let message = match sql::query(&statement) {
            Ok(rows) => {
                let cells: Vec<String> = rows
                    .iter()
                    .flatten()
                    .map(|c| match c {
                        Cell::Null => "null".to_owned(),
                        Cell::Integer(i) => i.to_string(),
                        Cell::Real(r) => r.to_string(),
                        Cell::Text(t) => t.clone(),
                    })
                    .collect();
                format!("rows={} cells={}", rows.len(), cells.join(","))
            }
            Err(e) => format!("sql error: {e}"),
        };
        Ok(vec![Action::Log(LogEntry { level: Level::Info, message })])
    }
}

warden_policy::export!(SqlGuest);
