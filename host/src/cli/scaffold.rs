//! `warden plugin new NAME --lang rust|python|js`: a policy that builds with its language's
//! ordinary toolchain and passes its own test. Each keeps the decision in plain code tested
//! natively (cargo test, python3 -m unittest, node --test) and the component glue apart.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;

/// The language of a new policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// The world the Python and JavaScript toolchains build against, written beside them.
const WIT: &str = include_str!("../../../wit/policy.wit");

/// `warden plugin new`.
pub fn new(name: &str, dir: &Path, lang: Lang, sdk: &Path, standalone: bool) -> anyhow::Result<ExitCode> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("invalid plugin name `{name}`: use lowercase letters, digits and `-`, starting with a letter");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    match lang {
        Lang::Rust => rust(name, &root, sdk, standalone),
        Lang::Python => script(
            name,
            &root,
            &[("app.py", PY_APP), ("decide.py", PY_DECIDE), ("test_decide.py", PY_TEST)],
            &[
                "python3 -m unittest                                   # the decision, natively",
                "componentize-py -d wit -w policy componentize app -o {name}.wasm",
            ],
        ),
        Lang::Js => script(
            name,
            &root,
            &[("app.js", JS_APP), ("decide.js", JS_DECIDE), ("decide.test.js", JS_TEST)],
            &[
                "node --test                                           # the decision, natively",
                "componentize-js app.js --wit wit -n policy -o {name}.wasm",
            ],
        ),
    }
}

/// A Python or JavaScript policy: its files, the world in `wit/`, and how to go on.
fn script(name: &str, root: &Path, files: &[(&str, &str)], next: &[&str]) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(root.join("wit"))?;
    std::fs::write(root.join("wit/policy.wit"), WIT)?;
    for (file, text) in files {
        std::fs::write(root.join(file), text.replace("{name}", name))?;
    }
    println!("created {}", root.display());
    println!("next, in {}:", root.display());
    for line in next {
        println!("  {}", line.replace("{name}", name));
    }
    println!("  warden plugin event > event.json && warden plugin test {name}.wasm --event event.json");
    println!("then add a [[policy]] with component = \"{name}.wasm\" to schedules.toml");
    Ok(ExitCode::SUCCESS)
}

/// A crate: the decision in plain Rust with its test, and the component glue.
fn rust(name: &str, root: &Path, sdk: &Path, standalone: bool) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(root.join("src"))?;
    let workspace = if standalone { "\n[workspace]\n" } else { "" };
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
warden-policy = {{ path = "{sdk}" }}
{workspace}"#,
            sdk = sdk.display()
        ),
    )?;
    std::fs::write(root.join("src/lib.rs"), RUST_LIB.replace("{name}", name))?;
    println!("created {}", root.display());
    println!("next:");
    println!("  cargo test --manifest-path {}/Cargo.toml        # the decision logic, natively", root.display());
    let wasm = if standalone {
        let file = name.replace('-', "_");
        println!("  cargo build --release --target wasm32-wasip2 --manifest-path {}/Cargo.toml", root.display());
        format!("{}/target/wasm32-wasip2/release/{file}.wasm", root.display())
    } else {
        println!("  scripts/build-plugins.sh                         # the component, into plugins/{name}.wasm");
        format!("plugins/{name}.wasm")
    };
    println!("  warden plugin event > event.json && warden plugin test {wasm} --event event.json");
    println!("then add a [[policy]] with component = \"{wasm}\" to schedules.toml");
    Ok(ExitCode::SUCCESS)
}

const RUST_LIB: &str = r#"//! `{name}`: a warden policy. It decides; the host acts.
//!
//! Keep the decision in `decide` (plain Rust, tested natively); `evaluate` only wires it to
//! the host's clock, config and state.

use warden_policy::{Action, Event, Guest, HostState, Level, LogEntry, Snapshot, State, Status, clock, host_config};

/// Logs every status change it sees; config `greeting` prefixes the line.
pub fn decide(greeting: &str, snap: &Snapshot, _now_ms: i64, state: &mut impl State) -> Vec<Action> {
    let previous = state.get("last").and_then(|s| Status::parse(&s));
    state.set("last", snap.status.name().to_owned());
    match previous {
        Some(p) if p != snap.status => vec![Action::Log(LogEntry {
            level: Level::Info,
            message: format!("{greeting}: {} -> {}", p.name(), snap.status.name()),
        })],
        _ => Vec::new(),
    }
}

struct Policy;

impl Guest for Policy {
    fn evaluate(event: Event) -> Result<Vec<Action>, String> {
        let Event::Snapshot(snap) = event else { return Ok(Vec::new()) };
        let greeting = host_config().text("greeting", "{name}");
        Ok(decide(&greeting, &snap, clock::now_ms(), &mut HostState))
    }
}

warden_policy::export!(Policy);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn snap(status: Status) -> Snapshot {
        Snapshot { job: "probe".into(), status, checked_at_ms: 0, duration_ms: 1, checks: vec![] }
    }

    #[test]
    fn logs_a_change_once() {
        let mut state = BTreeMap::new();
        assert!(decide("hi", &snap(Status::Operational), 0, &mut state).is_empty());
        let actions = decide("hi", &snap(Status::Error), 1, &mut state);
        assert!(matches!(&actions[..], [Action::Log(l)] if l.message == "hi: operational -> error"));
        assert!(decide("hi", &snap(Status::Error), 2, &mut state).is_empty());
    }
}
"#;

const PY_APP: &str = r#""""`{name}`: a warden policy in Python. It decides; the host acts.

The decision is in decide.py (plain Python, tested with `python3 -m unittest`); this file only
wires it to the host's config and state. Built with componentize-py against wit/.
"""

import wit_world
from wit_world.imports import config, state, types

from decide import decide


class WitWorld(wit_world.WitWorld):
    def evaluate(self, event: types.Event) -> list[types.Action]:
        if not isinstance(event, types.Event_Snapshot):
            return []
        snap = event.value
        greeting = config.get("greeting") or "{name}"
        message, last = decide(greeting, snap.status.name.lower(), state.get("last"))
        state.set("last", last)
        if message is None:
            return []
        return [types.Action_Log(types.LogEntry(types.Level.INFO, message))]
"#;

const PY_DECIDE: &str = r#""""The decision of `{name}`, in plain Python: logs every status change it sees."""


def decide(greeting: str, status: str, last: str | None) -> tuple[str | None, str]:
    """The line to log (or None) and the status to remember."""
    if last is not None and last != status:
        return f"{greeting}: {last} -> {status}", status
    return None, status
"#;

const PY_TEST: &str = r#"import unittest

from decide import decide


class LogsAChangeOnce(unittest.TestCase):
    def test_logs_a_change_once(self):
        message, last = decide("hi", "operational", None)
        self.assertIsNone(message)
        message, last = decide("hi", "error", last)
        self.assertEqual(message, "hi: operational -> error")
        self.assertEqual(decide("hi", "error", last), (None, "error"))


if __name__ == "__main__":
    unittest.main()
"#;

const JS_APP: &str = r#"// `{name}`: a warden policy in JavaScript. It decides; the host acts.
//
// The decision is in decide.js (plain JavaScript, tested with `node --test`); this file only
// wires it to the host's config and state. Built with componentize-js against wit/.

import { get as configGet } from "warden:policy/config@0.1.0";
import { get as stateGet, set as stateSet } from "warden:policy/state@0.1.0";
import { decide } from "./decide.js";

export function evaluate(event) {
  if (event.tag !== "snapshot") return [];
  const snap = event.val;
  const [message, last] = decide(configGet("greeting") ?? "{name}", snap.status, stateGet("last"));
  stateSet("last", last);
  return message === undefined ? [] : [{ tag: "log", val: { level: "info", message } }];
}
"#;

const JS_DECIDE: &str = r#"// The decision of `{name}`, in plain JavaScript: logs every status change it sees.

// The line to log (or undefined) and the status to remember.
export function decide(greeting, status, last) {
  if (last !== undefined && last !== status) return [`${greeting}: ${last} -> ${status}`, status];
  return [undefined, status];
}
"#;

const JS_TEST: &str = r#"import assert from "node:assert/strict";
import { test } from "node:test";

import { decide } from "./decide.js";

test("logs a change once", () => {
  let [message, last] = decide("hi", "operational", undefined);
  assert.equal(message, undefined);
  [message, last] = decide("hi", "error", last);
  assert.equal(message, "hi: operational -> error");
  assert.deepEqual(decide("hi", "error", last), [undefined, "error"]);
});
"#;
