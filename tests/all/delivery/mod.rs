//! Alert delivery through real servers: an SMTP server over TCP (`smtp_server.rs`), an
//! HTTP server for the ticket webhook, real PostgreSQL cut off by a proxy, and the real
//! `warden` binary killed in the middle of a fan-out.

mod outages;
mod outbox;
mod receivers;
mod subscribers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mail_parser::MessageParser;
use tokio::sync::{Notify, watch};
use warden::base::OutboxKind;
use warden::delivery::{Channels, Dispatcher};
use warden::store::{Decision, NewOutboxRow, RunCommit, StateStore};

use crate::schedule::schedule;
use crate::smtp_server::Received;
use crate::support::{Proxy, TestDb};

// ---- reading mail -----------------------------------------------------------------

/// The parts of a received message the tests look at, decoded.
#[derive(Debug)]
pub(crate) struct Mail {
    to: Vec<String>,
    subject: String,
    message_id: String,
    list_unsubscribe: Option<String>,
    list_unsubscribe_post: Option<String>,
    pub(crate) text: String,
    html: Option<String>,
}

pub(crate) fn read(m: &Received) -> Mail {
    let parsed = MessageParser::default().parse(m.data.as_bytes()).expect("a parsable message");
    let raw_header = |name: &str| parsed.header_raw(name).map(|v| v.trim().to_owned());
    Mail {
        to: m.to.clone(),
        subject: parsed.subject().unwrap_or_default().to_owned(),
        message_id: parsed.message_id().unwrap_or_default().to_owned(),
        list_unsubscribe: raw_header("List-Unsubscribe"),
        list_unsubscribe_post: raw_header("List-Unsubscribe-Post"),
        text: parsed.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        html: parsed.body_html(0).map(|t| t.into_owned()),
    }
}

pub(crate) fn subjects(messages: &[Received]) -> Vec<String> {
    messages.iter().map(|m| read(m).subject).collect()
}

// ---- a dispatcher in this process, on a SQLite store --------------------------------

struct Outbox {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: StateStore,
    stop: watch::Sender<bool>,
    _lanes: tokio::task::JoinSet<()>,
}

impl Outbox {
    /// A store and a running dispatcher for `alerts` (the body of `[alerts]`).
    async fn start(alerts: &str) -> Outbox {
        Self::start_schedule(schedule().product("MNW").table(format!("[alerts]\n{alerts}"))).await.0
    }

    /// A store and a running dispatcher for a whole schedule; and its configuration.
    async fn start_schedule(schedule: crate::schedule::Schedule) -> (Outbox, warden::config::Config) {
        let (dir, path) = schedule.write();
        let config = warden::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let ctx = warden::daemon::open(&config).await.unwrap();
        let channels = Arc::new(Channels::new(&config, ctx.targets.clone()).unwrap());
        let (_keep, rx) = watch::channel(channels);
        std::mem::forget(_keep);
        let (stop, stopped) = watch::channel(false);
        let lanes = Dispatcher::new(ctx.store.clone(), ctx.spool.clone(), rx, Arc::new(Notify::new())).spawn(stopped);
        (Outbox { _dir: dir, path, store: ctx.store, stop, _lanes: lanes }, config)
    }

    async fn queue(&self, rows: Vec<NewOutboxRow>) {
        queue(&self.store, rows).await;
    }

    async fn states(&self) -> Vec<(String, String, i32)> {
        self.store
            .outbox_page(None, 1000, None)
            .await
            .unwrap()
            .into_iter()
            .rev()
            .map(|e| (e.dedup_key, e.state.to_string(), e.attempts))
            .collect()
    }

    async fn wait_states(
        &self,
        what: &str,
        done: impl Fn(&[(String, String, i32)]) -> bool,
    ) -> Vec<(String, String, i32)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let states = self.states().await;
            if done(&states) {
                return states;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {states:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Commits rows as one policy decision of one run.
async fn queue(store: &StateStore, rows: Vec<NewOutboxRow>) {
    static N: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let decisions =
        vec![Decision { policy: "test".into(), state_writes: BTreeMap::new(), outbox: rows, read_mark: None }];
    let run =
        RunCommit { scheduled_at: Utc::now() + chrono::Duration::milliseconds(n), ..RunCommit::ok("probe", decisions) };
    store.commit(&run).await.unwrap();
}

fn email(key: &str, subject: &str) -> NewOutboxRow {
    let payload =
        serde_json::json!({ "kind": "email-admin", "subject": subject, "body": format!("body of {subject}") });
    NewOutboxRow { kind: OutboxKind::Email, dedup_key: key.into(), payload: payload.to_string(), recipient: None }
}

fn ticket(key: &str, title: &str) -> NewOutboxRow {
    let payload = serde_json::json!({
        "kind": "open-ticket", "title": title, "body": "details", "priority": "critical", "dedup_key": key,
    });
    NewOutboxRow { kind: OutboxKind::Ticket, dedup_key: key.into(), payload: payload.to_string(), recipient: None }
}

fn pg_proxy(db: &TestDb) -> (Proxy, String) {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
    let url = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(url, db.url, "the test database URL names 127.0.0.1:5432: {}", db.url);
    (proxy, url)
}
