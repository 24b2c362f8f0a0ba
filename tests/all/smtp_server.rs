//! A real SMTP server over TCP for the tests and the dispatcher bench: it speaks enough
//! of RFC 5321 for lettre (EHLO/HELO, MAIL, RCPT, DATA with dot-stuffing, RSET, NOOP,
//! QUIT, and with TLS on: STARTTLS or implicit TLS, then AUTH PLAIN) and keeps every
//! message it accepted. It can refuse service on purpose.

use std::io::{BufRead, BufReader, Read, Write};
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
    /// It came over TLS.
    pub tls: bool,
    /// The (user, password) the session authenticated with.
    pub auth: Option<(String, String)>,
}

/// How the server speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    None,
    /// Offers STARTTLS and refuses mail before it (port 587 style).
    StartTls,
    /// TLS from the first byte (port 465, `smtps://`).
    Implicit,
}

#[derive(Default)]
struct State {
    messages: Mutex<Vec<Received>>,
    /// The next this-many sessions are greeted with `421` and closed.
    refuse_sessions: AtomicUsize,
    /// While set, every message is refused with `451` after DATA.
    defer: AtomicBool,
    /// The next this-many messages stop mid-DATA: the server reads one line of the message,
    /// then neither reads nor answers for a minute.
    stall_data: AtomicUsize,
    sessions: AtomicUsize,
    /// While set, a message is kept and its `250` waits until it is cleared.
    hold: AtomicBool,
    /// Count messages without keeping them (the bench).
    discard: bool,
    accepted: AtomicUsize,
    mode: TlsMode,
    tls: Option<Arc<rustls::ServerConfig>>,
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

    /// A server with TLS on a fresh self-signed certificate for 127.0.0.1; also returns
    /// that certificate as PEM, for the client to trust.
    #[allow(dead_code)]
    pub fn start_tls(mode: TlsMode) -> (SmtpServer, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(signing_key.serialize_der());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key.into())
            .unwrap();
        let server = Self::serve(State { mode, tls: Some(Arc::new(config)), ..State::default() });
        (server, cert.pem())
    }

    fn start_with(discard: bool) -> SmtpServer {
        Self::serve(State { discard, ..State::default() })
    }

    fn serve(state: State) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(state);
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

    /// The next `n` messages hang mid-DATA (a relay that stops answering in the middle).
    pub fn stall_next_messages(&self, n: usize) {
        self.state.stall_data.store(n, Ordering::SeqCst);
    }

    /// While on, each accepted message waits for its `250`: the sender has sent it but does
    /// not know yet.
    pub fn hold(&self, on: bool) {
        self.state.hold.store(on, Ordering::SeqCst);
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

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

type Input = BufReader<Box<dyn Stream>>;

fn reply(input: &mut Input, text: &[u8]) -> std::io::Result<()> {
    let out = input.get_mut();
    out.write_all(text)?;
    out.flush()
}

fn over_tls(raw: &TcpStream, state: &State) -> std::io::Result<Input> {
    let config = state.tls.clone().expect("a TLS server");
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    Ok(BufReader::new(Box::new(rustls::StreamOwned::new(conn, raw.try_clone()?))))
}

fn session(stream: TcpStream, state: &State) -> std::io::Result<()> {
    state.sessions.fetch_add(1, Ordering::SeqCst);
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let raw = stream.try_clone()?;
    let refused = state.refuse_sessions.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let mut secure = state.mode == TlsMode::Implicit;
    let mut input: Input = if secure { over_tls(&raw, state)? } else { BufReader::new(Box::new(stream)) };
    if refused {
        reply(&mut input, b"421 test.local service not available, try again later\r\n")?;
        return Ok(());
    }
    reply(&mut input, b"220 test.local ESMTP ready\r\n")?;
    let (mut from, mut to, mut auth) = (String::new(), Vec::new(), None);
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command.split([' ', ':']).next().unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                let mut text = String::from("250-test.local\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n");
                if state.mode == TlsMode::StartTls && !secure {
                    text.push_str("250-STARTTLS\r\n");
                }
                if secure {
                    text.push_str("250-AUTH PLAIN\r\n");
                }
                text.push_str("250 PIPELINING\r\n");
                reply(&mut input, text.as_bytes())?
            }
            "HELO" => reply(&mut input, b"250 test.local\r\n")?,
            "STARTTLS" if state.mode == TlsMode::StartTls && !secure => {
                reply(&mut input, b"220 2.0.0 ready to start TLS\r\n")?;
                input = over_tls(&raw, state)?;
                secure = true;
                (from, to, auth) = (String::new(), Vec::new(), None);
            }
            "AUTH" if secure => {
                let mut words = command.split_whitespace().skip(1);
                let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
                let initial = match words.next() {
                    Some(initial) => initial.to_owned(),
                    None => {
                        reply(&mut input, b"334 \r\n")?;
                        line.clear();
                        input.read_line(&mut line)?;
                        line.trim().to_owned()
                    }
                };
                let decoded = base64_decode(&initial).unwrap_or_default();
                let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
                if mechanism == "PLAIN" && parts.len() == 3 {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    auth = Some((text(parts[1]), text(parts[2])));
                    reply(&mut input, b"235 2.7.0 authenticated\r\n")?
                } else {
                    reply(&mut input, b"535 5.7.8 bad credentials\r\n")?
                }
            }
            "MAIL" if state.mode == TlsMode::StartTls && !secure => {
                reply(&mut input, b"530 5.7.0 must issue a STARTTLS command first\r\n")?
            }
            "MAIL" => {
                from = address(&command);
                to.clear();
                reply(&mut input, b"250 ok\r\n")?;
            }
            "RCPT" => {
                to.push(address(&command));
                reply(&mut input, b"250 ok\r\n")?;
            }
            "DATA" => {
                reply(&mut input, b"354 end with <CRLF>.<CRLF>\r\n")?;
                let stall = state.stall_data.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if stall.is_ok() {
                    line.clear();
                    input.read_line(&mut line)?;
                    std::thread::sleep(Duration::from_secs(60));
                    return Ok(());
                }
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
                    reply(&mut input, b"451 local problem, try again later\r\n")?;
                } else {
                    if !state.discard {
                        let message = Received {
                            from: from.clone(),
                            to: to.clone(),
                            data,
                            at: Instant::now(),
                            tls: secure,
                            auth: auth.clone(),
                        };
                        state.messages.lock().unwrap().push(message);
                    }
                    state.accepted.fetch_add(1, Ordering::SeqCst);
                    while state.hold.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    reply(&mut input, b"250 queued\r\n")?;
                }
            }
            "RSET" => {
                from.clear();
                to.clear();
                reply(&mut input, b"250 ok\r\n")?;
            }
            "NOOP" => reply(&mut input, b"250 ok\r\n")?,
            "QUIT" => {
                reply(&mut input, b"221 bye\r\n")?;
                return Ok(());
            }
            _ => reply(&mut input, b"502 command not implemented\r\n")?,
        }
    }
}

/// Standard base64 (AUTH PLAIN's encoding).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | ALPHABET.iter().position(|a| *a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn address(command: &str) -> String {
    match (command.find('<'), command.find('>')) {
        (Some(a), Some(b)) if a < b => command[a + 1..b].to_owned(),
        _ => String::new(),
    }
}
