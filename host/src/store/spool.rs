//! The local durable spool: where runs and decisions go while the state store cannot be
//! reached (for example when it lives on the very database that is down), so the alert
//! about the outage is still sent and nothing decided is lost.
//!
//! One JSON line per record in an append-only file, each line fsynced before the call
//! returns. Records: a run (what `StateStore::commit` would have written, with a replay
//! mark), a delivery (a spooled email or ticket the dispatcher sent while the store was
//! down) or a silenced row (held back by a silence or a maintenance window; the silences
//! as last read from the store are kept in `silences.json` beside the spool). The first run after the spool was empty also carries every policy's state as
//! last read from the store, so a restart during the outage evaluates from the same state.
//! `drain` moves everything into the store in one transaction and then empties the file.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{NewOutboxRow, RunCommit, Silence, SpoolApply, StateStore, StoreError};

use super::known::{KnownStates, PolicyState};

/// A policy's state is kept per (policy, job); spooled as `policy/job`. A key without a
/// `/` was written before state was per job and stands for every job of the policy.
type StateKey = String;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
enum Record {
    Run {
        mark: String,
        run: Box<RunCommit>,
        #[serde(default, skip_serializing_if = "HashMap::is_empty")]
        base_state: HashMap<StateKey, PolicyState>,
    },
    Delivered {
        dedup_key: String,
        at: DateTime<Utc>,
    },
    /// Held back by a silence or a maintenance window while the store was down.
    Silenced {
        dedup_key: String,
        why: String,
    },
}

/// A spooled outbox row the dispatcher may send while the store is down.
#[derive(Debug, Clone)]
pub struct SpooledRow {
    pub row: NewOutboxRow,
    pub job: String,
    pub policy: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Inner {
    runs: Vec<(String, RunCommit)>,
    delivered: HashMap<String, DateTime<Utc>>,
    /// Rows held back (dedup key → why): never sent, recorded `silenced` in the outbox.
    silenced: HashMap<String, String>,
    /// Each (policy, job)'s state as last known: read from the store, or written since.
    known: KnownStates,
    /// The file lacks records memory holds (its disk was full): the next write rewrites it whole.
    unsaved: bool,
}

/// The spool. Cheap to clone; one per process.
#[derive(Debug, Clone)]
pub struct Spool {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
    /// Held while draining and while sending from the spool, so a row is never sent from
    /// the spool while it is being moved into the outbox.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Spool {
    /// Opens (or creates) the spool at `path`, reading what an earlier process left. A torn
    /// last line (a crash in the middle of a write) is dropped; it was never acknowledged.
    pub fn open(path: &Path) -> std::io::Result<Spool> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut inner = Inner::default();
        match std::fs::read(path) {
            Ok(bytes) => {
                // Only whole lines were acknowledged; a torn tail is cut so appends stay aligned.
                let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                if whole < bytes.len() {
                    tracing::warn!(spool = %path.display(), bytes = bytes.len() - whole, "cutting a torn last spool line");
                    std::fs::OpenOptions::new().write(true).open(path)?.set_len(whole as u64)?;
                }
                for line in bytes[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    match serde_json::from_slice::<Record>(line) {
                        Ok(record) => inner.apply(record),
                        Err(e) => {
                            tracing::warn!(spool = %path.display(), error = %e, "skipping an unreadable spool line")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if !inner.runs.is_empty() {
            tracing::warn!(spool = %path.display(), runs = inner.runs.len(), "the spool holds runs from before the restart; they go to the store when it is reachable");
        }
        Ok(Spool { path: path.to_path_buf(), inner: Arc::new(Mutex::new(inner)), gate: Default::default() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spooled runs not yet in the store.
    pub fn len(&self) -> usize {
        self.lock().runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes a policy's state for a job as just read from the store.
    pub fn remember(&self, policy: &str, job: &str, state: &PolicyState) {
        self.lock().known.remember(policy, job, state);
    }

    /// Notes state writes the store just committed.
    pub fn committed(&self, run: &RunCommit) {
        let mut inner = self.lock();
        for d in &run.decisions {
            inner.known.write(&d.policy, &run.job, &d.state_writes);
            inner.known.mark(&d.policy, &run.job, run.scheduled_at);
        }
    }

    /// Every (policy, job) state as last known, with the occurrence it is as of
    /// (`DECIDED_KEY`): what another replica asks for before it decides during an outage.
    pub fn known_states(&self) -> HashMap<String, PolicyState> {
        self.lock().known.to_map()
    }

    /// Takes each state another replica knows that is newer (by `DECIDED_KEY`) than this
    /// one's; returns how many were newer.
    pub fn merge_newer(&self, states: HashMap<String, PolicyState>) -> usize {
        let mut inner = self.lock();
        states.iter().filter(|(key, state)| inner.known.take_if_newer(key, state)).count()
    }

    /// A policy's state for a job as last known, for an evaluation while the store is
    /// unreachable.
    pub fn state(&self, policy: &str, job: &str) -> PolicyState {
        self.lock().known.state(policy, job)
    }

    /// Appends a run; it is on disk when this returns `Ok`. When the file cannot be written
    /// (its disk is full) the run is kept in memory all the same, sent from and moved into the
    /// store like any other, and the error says it would not outlive a restart.
    pub fn push(&self, run: RunCommit) -> std::io::Result<()> {
        let mut inner = self.lock();
        let base_state = if inner.runs.is_empty() { inner.known.to_map() } else { HashMap::new() };
        let mark = format!("{:032x}", rand::random::<u128>());
        let record = Record::Run { mark, run: Box::new(run), base_state };
        let kept = self.keep(&mut inner, record);
        if kept.is_err() {
            crate::metrics::record_unstored_run();
        }
        kept
    }

    /// Writes `record` to the file (the whole file again, if it lacks earlier ones) and
    /// applies it in memory whether or not the write succeeded.
    fn keep(&self, inner: &mut Inner, record: Record) -> std::io::Result<()> {
        let written = if inner.unsaved {
            inner.apply(record);
            self.rewrite(inner)
        } else {
            let written = self.append(&record);
            inner.apply(record);
            written
        };
        self.note_written(inner, &written);
        written
    }

    fn note_written(&self, inner: &mut Inner, written: &std::io::Result<()>) {
        match written {
            Ok(()) => {
                if inner.unsaved {
                    tracing::info!(spool = %self.path.display(), runs = inner.runs.len(), "the spool's file holds everything again");
                }
                inner.unsaved = false;
                crate::metrics::record_disk_full("spool", false);
            }
            Err(e) => {
                let full = e.kind() == std::io::ErrorKind::StorageFull;
                tracing::error!(
                    spool = %self.path.display(),
                    error = %e,
                    runs = inner.runs.len(),
                    "could not write the spool{}: what it holds is kept in memory, sent and moved into the store from there, and lost if warden stops before the file can be written",
                    if full { " (disk full)" } else { "" }
                );
                inner.unsaved = true;
                crate::metrics::record_disk_full("spool", full);
            }
        }
    }

    /// Spooled email and ticket rows not yet sent (subscriber fan-out waits for the store).
    pub fn undelivered(&self) -> Vec<SpooledRow> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (_, run) in &inner.runs {
            for d in &run.decisions {
                for row in &d.outbox {
                    if row.kind.sent_from_spool()
                        && !inner.delivered.contains_key(&row.dedup_key)
                        && !inner.silenced.contains_key(&row.dedup_key)
                    {
                        out.push(SpooledRow {
                            row: row.clone(),
                            job: run.job.clone(),
                            policy: d.policy.clone(),
                            created_at: run.started_at,
                        });
                    }
                }
            }
        }
        out
    }

    /// Holds the gate: no drain runs while the guard lives.
    pub async fn sending(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Records that a spooled row was sent: in memory at once (it is not sent again by this
    /// process), on disk when this returns `Ok`.
    pub fn delivered(&self, dedup_key: &str) -> std::io::Result<()> {
        let record = Record::Delivered { dedup_key: dedup_key.to_owned(), at: Utc::now() };
        let mut inner = self.lock();
        self.keep(&mut inner, record)
    }

    /// Records that a spooled row was held back by a silence, as `delivered` does.
    pub fn silenced(&self, dedup_key: &str, why: &str) -> std::io::Result<()> {
        let record = Record::Silenced { dedup_key: dedup_key.to_owned(), why: why.to_owned() };
        let mut inner = self.lock();
        self.keep(&mut inner, record)
    }

    /// The silences as last read from the store, kept beside the spool so that a restart
    /// while the store is down still holds back what an operator silenced.
    pub fn remembered_silences(&self) -> Vec<Silence> {
        let path = self.silences_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable silences file");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Keeps `silences` (as just read from the store) for `remembered_silences`.
    pub fn remember_silences(&self, silences: &[Silence]) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(silences).map_err(std::io::Error::other)?;
        crate::base::text::write_atomically(&self.silences_path(), &bytes)
    }

    fn silences_path(&self) -> PathBuf {
        self.path.with_file_name("silences.json")
    }

    /// Moves every spooled run into the store in one transaction, then empties the spool.
    /// Returns how many runs moved. Safe to repeat after a crash: each run's mark makes a
    /// second application a no-op.
    pub async fn drain(&self, store: &StateStore) -> Result<usize, StoreError> {
        let _gate = self.gate.lock().await;
        let (marks, runs, delivered, silenced) = {
            let inner = self.lock();
            if inner.runs.is_empty() {
                return Ok(0);
            }
            let (marks, runs): (Vec<String>, Vec<RunCommit>) = inner.runs.iter().cloned().unzip();
            (marks, runs, inner.delivered.clone(), inner.silenced.clone())
        };
        match store.apply_spool(&runs, SpoolApply { marks: &marks, delivered: &delivered, silenced: &silenced }).await {
            Ok(()) => {}
            // The store answered and refused the runs: trying again would block every later
            // run behind them. They are set aside, whole, for a human, and the rest flows.
            Err(e @ (StoreError::Query(_) | StoreError::Corrupt(_))) if !matches!(&e, StoreError::Query(q) if super::unreachable(q)) =>
            {
                let aside = self.path.with_extension(format!("rejected-{}.jsonl", Utc::now().format("%Y%m%dT%H%M%S")));
                std::fs::copy(&self.path, &aside).map_err(|io| {
                    StoreError::Corrupt(format!("cannot set the spool aside to {}: {io}", aside.display()))
                })?;
                tracing::error!(spool = %aside.display(), error = %e, runs = runs.len(), "the state store refused the spooled runs; they are set aside in this file");
                crate::metrics::record_spool_rejected(runs.len());
            }
            Err(e) => return Err(e),
        }
        let mut inner = self.lock();
        inner.runs.drain(..runs.len());
        let keep: std::collections::HashSet<&str> = inner
            .runs
            .iter()
            .flat_map(|(_, r)| r.decisions.iter())
            .flat_map(|d| &d.outbox)
            .map(|o| o.dedup_key.as_str())
            .collect();
        let delivered: HashMap<String, DateTime<Utc>> =
            inner.delivered.iter().filter(|(k, _)| keep.contains(k.as_str())).map(|(k, v)| (k.clone(), *v)).collect();
        let silenced: HashMap<String, String> = inner
            .silenced
            .iter()
            .filter(|(k, _)| keep.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        inner.delivered = delivered;
        inner.silenced = silenced;
        // The runs are in the store; a file that cannot be rewritten only holds them twice
        // (their marks make a second move a no-op) until the next write rewrites it.
        let written = self.rewrite(&inner);
        self.note_written(&mut inner, &written);
        tracing::info!(runs = runs.len(), spool = %self.path.display(), "spool drained into the state store");
        Ok(runs.len())
    }

    fn append(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }

    /// Replaces the file by what is left (usually nothing), atomically.
    fn rewrite(&self, inner: &Inner) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        // The first run carries the state the rest build on (what a restart decides from).
        let mut base_state = inner.known.to_map();
        for (mark, run) in &inner.runs {
            let base_state = std::mem::take(&mut base_state);
            let record = Record::Run { mark: mark.clone(), run: Box::new(run.clone()), base_state };
            file.write_all(&serde_json::to_vec(&record).map_err(std::io::Error::other)?)?;
            file.write_all(b"\n")?;
        }
        for (key, at) in &inner.delivered {
            let record = Record::Delivered { dedup_key: key.clone(), at: *at };
            file.write_all(&serde_json::to_vec(&record).map_err(std::io::Error::other)?)?;
            file.write_all(b"\n")?;
        }
        for (key, why) in &inner.silenced {
            let record = Record::Silenced { dedup_key: key.clone(), why: why.clone() };
            file.write_all(&serde_json::to_vec(&record).map_err(std::io::Error::other)?)?;
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Inner {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Run { mark, run, base_state } => {
                for (key, state) in &base_state {
                    self.known.insert_if_absent(key, state);
                }
                for d in &run.decisions {
                    self.known.write(&d.policy, &run.job, &d.state_writes);
                    self.known.mark(&d.policy, &run.job, run.scheduled_at);
                }
                self.runs.push((mark, *run));
            }
            Record::Delivered { dedup_key, at } => {
                self.delivered.insert(dedup_key, at);
            }
            Record::Silenced { dedup_key, why } => {
                self.silenced.insert(dedup_key, why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::Decision;

    fn run(job: &str, key: &str, writes: &[(&str, Option<&str>)]) -> RunCommit {
        let outbox = vec![NewOutboxRow {
            kind: crate::base::OutboxKind::Email,
            dedup_key: key.into(),
            payload: "{}".into(),
            recipient: None,
        }];
        let state_writes = writes.iter().map(|(k, v)| (k.to_string(), v.map(str::to_owned))).collect();
        RunCommit::ok(job, vec![Decision { policy: "p".into(), state_writes, outbox, read_mark: None }])
    }

    #[test]
    fn a_reopened_spool_has_the_runs_the_state_and_the_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let spool = Spool::open(&path).unwrap();
        spool.remember("p", "j", &BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]));
        spool.remember("p", "other", &BTreeMap::from([("a".into(), "9".into())]));
        spool.push(run("j", "k1", &[("a", Some("3"))])).unwrap();
        spool.push(run("j", "k2", &[("b", None)])).unwrap();
        spool.delivered("k1").unwrap();
        // A crash in the middle of a write leaves a torn line; it is skipped.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"record\":\"ru").unwrap();

        let again = Spool::open(&path).unwrap();
        assert_eq!(again.len(), 2);
        let mut state = again.state("p", "j");
        assert!(state.remove(crate::store::DECIDED_KEY).is_some(), "it says which occurrence it is as of");
        assert_eq!(state, BTreeMap::from([("a".to_owned(), "3".to_owned())]));
        assert_eq!(
            again.state("p", "other"),
            BTreeMap::from([("a".to_owned(), "9".to_owned())]),
            "each job's own state"
        );
        let undelivered: Vec<String> = again.undelivered().into_iter().map(|r| r.row.dedup_key).collect();
        assert_eq!(undelivered, ["k2"]);
        again.delivered("k2").unwrap();
        assert!(Spool::open(&path).unwrap().undelivered().is_empty(), "an append after a torn line is readable");
    }

    #[test]
    fn a_peers_state_replaces_this_ones_only_when_newer() {
        use crate::store::DECIDED_KEY;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.jsonl")).unwrap();
        let state = |status: &str, mark: &str| {
            BTreeMap::from([("last_status".to_owned(), status.to_owned()), (DECIDED_KEY.to_owned(), mark.to_owned())])
        };
        spool.remember("p", "j", &state("operational", "0000000000002000"));
        spool.remember("p", "k", &state("error", "0000000000009000"));
        let theirs = HashMap::from([
            ("p/j".to_owned(), state("error", "0000000000004000")),
            ("p/k".to_owned(), state("operational", "0000000000001000")),
            ("p/new".to_owned(), state("degraded", "0000000000001000")),
        ]);
        assert_eq!(spool.merge_newer(theirs), 2);
        assert_eq!(spool.state("p", "j")["last_status"], "error", "theirs is newer");
        assert_eq!(spool.state("p", "k")["last_status"], "error", "ours is newer");
        assert_eq!(spool.state("p", "new")["last_status"], "degraded", "one this replica never saw");
    }

    #[test]
    fn a_silenced_row_is_not_sent_from_the_spool_and_the_silences_outlive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let spool = Spool::open(&path).unwrap();
        assert!(spool.remembered_silences().is_empty());
        let silence = Silence {
            id: 7,
            matchers: crate::base::Matchers { job: Some("j".into()), policy: None, kind: None },
            starts_at: Utc::now(),
            ends_at: Utc::now() + chrono::Duration::hours(1),
            comment: "db upgrade".into(),
            created_by: "test".into(),
            created_at: Utc::now(),
        };
        spool.remember_silences(std::slice::from_ref(&silence)).unwrap();
        spool.push(run("j", "k1", &[])).unwrap();
        spool.push(run("j", "k2", &[])).unwrap();
        spool.silenced("k1", "silenced by silence 7").unwrap();

        let again = Spool::open(&path).unwrap();
        assert_eq!(again.remembered_silences(), [silence]);
        let undelivered: Vec<String> = again.undelivered().into_iter().map(|r| r.row.dedup_key).collect();
        assert_eq!(undelivered, ["k2"], "the silenced row stays held back after a restart");
        assert_eq!(again.lock().silenced.get("k1").map(String::as_str), Some("silenced by silence 7"));
    }
}
