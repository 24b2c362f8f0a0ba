//! `schedules.toml` for the tests, from named parts: a test says what its schedule holds (a
//! probe every second, alerts to the test SMTP server, the state on PostgreSQL) and each part
//! reads the same in every test. Tests about the file itself (line and column in messages,
//! the configuration UI's snapshots) keep their text inline.

use std::fmt;
use std::path::{Path, PathBuf};

/// The `db` check, critical.
pub const DB: &str = r#"{ name = "db", kind = "db", critical = true }"#;
/// The original monitor's sessions check.
pub const SESSIONS: &str = r#"{ name = "sessions", kind = "sql", query = "SELECT COUNT(*) FROM session" }"#;

/// A schedule being written: top-level keys first, then tables in the order added.
#[derive(Default, Clone)]
pub struct Schedule {
    top: Vec<String>,
    tables: Vec<String>,
}

pub fn schedule() -> Schedule {
    Schedule::default()
}

impl Schedule {
    /// A top-level line: `max_running = 8`.
    pub fn top(mut self, line: impl Into<String>) -> Self {
        self.top.push(line.into());
        self
    }

    pub fn product(self, name: &str) -> Self {
        self.top(format!("product = \"{name}\""))
    }

    /// Any table, as written.
    pub fn table(mut self, text: impl Into<String>) -> Self {
        let mut text = text.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        self.tables.push(text);
        self
    }

    /// `[state] url`.
    pub fn state(self, url: &str) -> Self {
        self.table(format!("[state]\nurl = \"{url}\""))
    }

    /// `[targets]` with `database` and the lines in `more` (`demo_schema = false`).
    pub fn target(self, database: &str, more: &str) -> Self {
        self.table(format!("[targets]\ndatabase = \"{database}\"\n{more}"))
    }

    /// `[alerts]` to ops@example.org through `smtp`, with the lines in `more`.
    pub fn alerts(self, smtp: &str, more: &str) -> Self {
        self.table(format!("[alerts]\nadmin = [\"ops@example.org\"]\nsmtp = \"{smtp}\"\n{more}"))
    }

    pub fn job(self, job: Job) -> Self {
        self.table(job.to_string())
    }

    /// Writes it as `schedules.toml` in a new directory.
    pub fn write(&self) -> (tempfile::TempDir, PathBuf) {
        crate::support::schedule_dir(&self.to_string())
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "version = 1")?;
        for line in &self.top {
            writeln!(f, "{line}")?;
        }
        for table in &self.tables {
            write!(f, "{table}")?;
        }
        Ok(())
    }
}

/// A `[[policy]]` of `component` on `on`, with the lines in `more` (`config = { ... }`).
pub fn policy(name: &str, component: &Path, on: &[&str], more: &str) -> String {
    let on: Vec<String> = on.iter().map(|j| format!("\"{j}\"")).collect();
    format!("[[policy]]\nname = \"{name}\"\ncomponent = \"{}\"\non = [{}]\n{more}", component.display(), on.join(", "))
}

/// One `[[job]]`.
#[derive(Clone)]
pub struct Job {
    lines: Vec<String>,
}

/// A job of `task` every `every`.
pub fn job(name: &str, every: &str, task: &str) -> Job {
    Job { lines: vec![format!("name = \"{name}\""), format!("every = \"{every}\""), format!("task = \"{task}\"")] }
}

/// A probe job with `checks`.
pub fn probe(name: &str, every: &str, checks: &[&str]) -> Job {
    job(name, every, "probe").with(&format!("checks = [{}]", checks.join(", ")))
}

impl Job {
    /// A further line: `timeout = "5s"`.
    pub fn with(mut self, line: &str) -> Self {
        self.lines.push(line.to_owned());
        self
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[[job]]")?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[test]
fn parts_make_a_schedule_warden_reads() {
    let text = schedule()
        .product("MNW")
        .state("sqlite://state.db")
        .alerts("smtp://127.0.0.1:1", "backoff = \"200ms\"")
        .job(probe("health-probe", "1s", &[DB, SESSIONS]).with("timeout = \"5s\""))
        .job(job("tick", "1h", "pool-stats"))
        .to_string();
    let config =
        warden::config::parse(&text, Path::new("schedules.toml"), &|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.product, "MNW");
    let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["health-probe", "tick"]);
}
