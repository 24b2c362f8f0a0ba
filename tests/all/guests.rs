//! Policies in Python (componentize-py) and JavaScript (componentize-js), built with the
//! stock toolchains and their stock command lines from `plugins/status-mail-py` and
//! `plugins/status-mail-js` (scripts/build-plugins.sh --tests): one behaviour table through
//! each, loaded with no grants, as an operator would drop them in.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use warden::config::Limits;
use warden::health::{CheckResult, Snapshot, Status};
use warden::runtime::{ActionRecord, Capabilities, EvalError, Evaluation, Policy};
use warden::tasks::Event;

use crate::policies::{engine, spec};

/// Each language's build of the same policy.
const BUILDS: [&str; 2] = ["status-mail-py.wasm", "status-mail-js.wasm"];

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).unwrap() + chrono::Duration::minutes(minutes)
}

fn snapshot(status: Status, minutes: i64) -> Event {
    let ok = status == Status::Operational;
    Event::Snapshot(Snapshot {
        job: "health-probe".into(),
        status,
        checked_at: at(minutes),
        duration_ms: 4,
        checks: vec![CheckResult {
            name: "db".into(),
            kind: "db".into(),
            critical: true,
            ok,
            error: (!ok).then(|| "connection refused".to_owned()),
            duration_ms: 2,
            target: None,
        }],
    })
}

/// Loads `file` with `config`, no grants, and a deadline a debug build meets under load.
fn load(file: &str, config: &[(&str, &str)], deadline: &str) -> Policy {
    // One load at a time: the first compiles (tens of seconds) into the cache the others read.
    static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = spec("status-mail", file, config);
    s.limits = Limits { deadline: warden::config::Duration::try_from(deadline).unwrap(), ..Limits::default() };
    engine().load(&s).unwrap_or_else(|e| panic!("{e}"))
}

/// One evaluation of `health-probe`'s event, its state writes applied to `state`.
async fn evaluate(
    policy: &Policy,
    state: &mut BTreeMap<String, String>,
    event: &Event,
    caps: Capabilities,
) -> Result<Evaluation, EvalError> {
    let result = engine().evaluate(policy, "health-probe", event, state.clone(), at(0), caps).await;
    if let Ok(e) = &result {
        for (k, v) in &e.state_writes {
            match v {
                Some(v) => state.insert(k.clone(), v.clone()),
                None => state.remove(k),
            };
        }
    }
    result
}

fn mails(evaluation: &Evaluation) -> Vec<(String, String)> {
    evaluation
        .actions
        .iter()
        .filter_map(|a| match a {
            ActionRecord::EmailAdmin { subject, body } => Some((subject.clone(), body.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_policies_tell_changes_keep_state_and_read_their_config() {
    use Status::{Degraded as D, Error as E, Operational as O};
    for file in BUILDS {
        let policy = load(file, &[("product", "MNW")], "5s");
        let mut state = BTreeMap::new();
        let table: [(Status, &[&str]); 6] = [
            (O, &[]),
            (O, &[]),
            (D, &["MNW health-probe: degraded"]),
            (D, &[]),
            (E, &["MNW health-probe: error"]),
            (O, &["MNW health-probe: operational"]),
        ];
        for (i, (status, expected)) in table.into_iter().enumerate() {
            let e = evaluate(&policy, &mut state, &snapshot(status, i as i64), Capabilities::default())
                .await
                .unwrap_or_else(|e| panic!("{file}, row {i}: {e}"));
            let subjects: Vec<String> = mails(&e).into_iter().map(|(s, _)| s).collect();
            assert_eq!(subjects, expected, "{file}, row {i}");
        }
        // The state carried from one evaluation to the next counted the three changes.
        assert_eq!(state.get("changes").map(String::as_str), Some("3"), "{file}: {state:?}");
        assert_eq!(state.get("last_status").map(String::as_str), Some("operational"), "{file}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_policies_are_refused_ungranted_sql_inside_the_guest_and_stopped_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let url = warden::config::DbUrl::Sqlite(dir.path().join("app.db"));
    let settings = warden::db::PoolSettings {
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(5),
        lazy: false,
        warden_owns: true,
    };
    let _app = warden::db::Pool::open(&url, settings, None).await.unwrap();
    for file in BUILDS {
        // A database at hand, but no `sql:read` grant: the call fails in the guest, which
        // logs it and still mails.
        let policy = load(file, &[("note_query", "SELECT 1")], "5s");
        let mut state = BTreeMap::from([("last_status".to_owned(), "operational".to_owned())]);
        let caps = Capabilities { sql: Some(warden::targets::PolicyDb::open(&url, None).unwrap()), s3: None };
        let e = evaluate(&policy, &mut state, &snapshot(Status::Error, 0), caps).await.unwrap();
        let warned = e.actions.iter().any(|a| {
            matches!(a, ActionRecord::Log { message, .. }
                if message.contains("note_query failed") && message.contains("sql:read is not granted"))
        });
        assert!(warned, "{file}: {:?}", e.actions);
        assert_eq!(mails(&e).len(), 1, "{file}");
        assert!(!mails(&e)[0].1.contains("SELECT 1:"), "{file}: no query result without the grant");

        // A policy that loops forever is stopped at its deadline.
        let spin = load(file, &[("spin", "true")], "300ms");
        let started = std::time::Instant::now();
        let err = evaluate(&spin, &mut BTreeMap::new(), &snapshot(Status::Error, 0), Capabilities::default())
            .await
            .unwrap_err();
        assert_eq!(err, EvalError::Deadline("300ms".into()), "{file}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{file}: took {:?}", started.elapsed());
    }
}

#[test]
fn a_component_starting_with_more_memory_than_its_cap_is_refused_at_load_with_both_sizes() {
    let mut s = spec("status-mail", "status-mail-py.wasm", &[]);
    s.limits.memory_bytes = 8 << 20;
    let Err(err) = engine().load(&s).map(|_| ()) else { panic!("loaded with an 8 MiB cap") };
    let err = err.to_string();
    assert!(err.contains("of memory, more than its cap of 8.0 MiB (raise `limits.memory`)"), "{err}");
    let initial: f64 = err.split("starts with ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(initial > 8.0, "{err}");
    // With the default cap (16 MiB) it loads.
    load("status-mail-py.wasm", &[], "100ms");
}
