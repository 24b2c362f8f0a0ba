//! Misbehaves on purpose, as its `mode` config says: spin, hog, panic, flood, huge,
//! state-bomb, scatter; anything else returns one log action (and writes `seen` to its state).

use std::sync::atomic::{AtomicU8, Ordering};

use warden_policy::{Action, Event, Guest, Level, LogEntry, config, state};

const PAGE: usize = 4096;
/// Zeroed memory (in `.bss`, past the data image), one byte per page used.
static PAGES: [AtomicU8; 256 * PAGE] = [const { AtomicU8::new(0) }; 256 * PAGE];

struct Bad;

fn log(message: String) -> Action {
    Action::Log(LogEntry { level: Level::Info, message })
}

impl Guest for Bad {
    fn evaluate(_event: Event) -> Result<Vec<Action>, String> {
        let mode = config::get("mode").unwrap_or_default();
        match mode.as_str() {
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "hog" => {
                let mut chunks: Vec<Vec<u8>> = Vec::new();
                loop {
                    chunks.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&chunks);
                }
            }
            "panic" => panic!("the guest gave up"),
            "flood" => Ok((0..10_000).map(|i| log(format!("line {i}"))).collect()),
            "huge" => Ok(vec![log("x".repeat(2 << 20))]),
            "state-bomb" => {
                state::set("big", &"y".repeat(1 << 20));
                Ok(Vec::new())
            }
            "refuse" => Err("no thanks".into()),
            // Every other page: 128 disjoint dirty runs, more than the reset's scan
            // buffer holds at once. Reports how many it found written before it wrote them:
            // a fresh instance must find none.
            "scatter" => {
                let pages = || (0..PAGES.len() / PAGE).step_by(2).map(|p| &PAGES[p * PAGE]);
                let residue = pages().filter(|b| b.load(Ordering::Relaxed) != 0).count();
                pages().for_each(|b| b.store(1, Ordering::Relaxed));
                Ok(vec![log(format!("residue {residue}"))])
            }
            _ => {
                let seen = state::get("seen").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
                state::set("seen", &seen.to_string());
                Ok(vec![log(format!("evaluation {seen} in mode `{mode}`"))])
            }
        }
    }
}

warden_policy::export!(Bad);
