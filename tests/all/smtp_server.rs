//! A real SMTP server over TCP for the tests and the dispatcher bench: it speaks enough
//! of RFC 5321 for lettre (EHLO/HELO, MAIL, RCPT, DATA with dot-stuffing, RSET, NOOP,
//! QUIT) and keeps every message it accepted. It can refuse service on purpose.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    messages: Mutex<Vec<Received>>,
    /// The next this-many sessions are greeted with `421` and closed.
    refuse_sessions: AtomicUsize,
    /// While set, every message is refused with `451` after DATA.
    defer: AtomicBool,
    sessions: AtomicUsize,
    /// Count messages without keeping them (the bench).
    discard: bool,
    accepted: AtomicUsize,
}

/// The server; it runs until the process ends.
#[derive(Clone)]
pub struct SmtpServer {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        Self::start_with(false)
    }

    /// A server that counts what it accepts and keeps nothing (the dispatcher bench).
    #[allow(dead_code)]
    pub fn sink() -> SmtpServer {
        Self::start_with(true)
    }

    fn start_with(discard: bool) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State { discard, ..State::default() });
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = session(stream, &state);
                });
            }
        });
        SmtpServer { addr, state }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Greets the next `n` sessions with `421 try again later` and hangs up.
    pub fn refuse_next_sessions(&self, n: usize) {
        self.state.refuse_sessions.store(n, Ordering::SeqCst);
    }

    /// While on, each message is refused with `451` after its DATA.
    pub fn defer(&self, on: bool) {
        self.state.defer.store(on, Ordering::SeqCst);
    }

    pub fn sessions(&self) -> usize {
        self.state.sessions.load(Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.messages.lock().unwrap().clone()
    }

    /// Messages accepted so far.
    pub fn count(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages arrived; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {n} messages; {} arrived", messages.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn session(stream: TcpStream, state: &State) -> std::io::Result<()> {
    state.sessions.fetch_add(1, Ordering::SeqCst);
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let refused = state.refuse_sessions.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if refused {
        out.write_all(b"421 test.local service not available, try again later\r\n")?;
        return Ok(());
    }
    out.write_all(b"220 test.local ESMTP ready\r\n")?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command.split([' ', ':']).next().unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => out.write_all(b"250-test.local\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n")?,
            "HELO" => out.write_all(b"250 test.local\r\n")?,
            "MAIL" => {
                from = address(&command);
                to.clear();
                out.write_all(b"250 ok\r\n")?;
            }
            "RCPT" => {
                to.push(address(&command));
                out.write_all(b"250 ok\r\n")?;
            }
            "DATA" => {
                out.write_all(b"354 end with <CRLF>.<CRLF>\r\n")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if input.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                if state.defer.load(Ordering::SeqCst) {
                    out.write_all(b"451 local problem, try again later\r\n")?;
                } else {
                    if !state.discard {
                        let message = Received { from: from.clone(), to: to.clone(), data, at: Instant::now() };
                        state.messages.lock().unwrap().push(message);
                    }
                    state.accepted.fetch_add(1, Ordering::SeqCst);
                    out.write_all(b"250 queued\r\n")?;
                }
            }
            "RSET" => {
                from.clear();
                to.clear();
                out.write_all(b"250 ok\r\n")?;
            }
            "NOOP" => out.write_all(b"250 ok\r\n")?,
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => out.write_all(b"502 command not implemented\r\n")?,
        }
    }
}

fn address(command: &str) -> String {
    match (command.find('<'), command.find('>')) {
        (Some(a), Some(b)) if a < b => command[a + 1..b].to_owned(),
        _ => String::new(),
    }
}
