//! A guest built the ordinary way for WASI (wasm32-wasip1 std, made a component with the
//! preview1 adapter): it tries to read a host file, list the environment and its
//! arguments, open a socket, and prints to stdout; it reports what happened to each.

use warden_policy::{Action, Event, Guest, Level, LogEntry};

struct WasiGuest;

fn report(what: &str, outcome: String) -> Action {
    Action::Log(LogEntry { level: Level::Info, message: format!("{what}: {outcome}") })
}

impl Guest for WasiGuest {
    fn evaluate(_event: Event) -> Result<Vec<Action>, String> {
        let file = match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => format!("READ {} bytes", text.len()),
            Err(e) => format!("denied ({e})"),
        };
        let dir = match std::fs::read_dir("/") {
            Ok(entries) => format!("LISTED {}", entries.count()),
            Err(e) => format!("denied ({e})"),
        };
        let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        let env = if env.is_empty() { "empty".to_owned() } else { format!("LEAKED {}", env.join(",")) };
        let args = std::env::args().count();
        let socket = match std::net::TcpStream::connect("127.0.0.1:5432") {
            Ok(_) => "CONNECTED".to_owned(),
            Err(e) => format!("denied ({e})"),
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        println!("hello from the guest's stdout");
        Ok(vec![
            report("file", file),
            report("dir", dir),
            report("env", env),
            report("args", args.to_string()),
            report("socket", socket),
            report("clock", if now > 1_600_000_000 { "ok".into() } else { format!("odd {now}") }),
        ])
    }
}

warden_policy::export!(WasiGuest);
