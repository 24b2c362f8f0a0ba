//! Group commit: the claims of occurrences due within a few milliseconds of each other, and
//! the plain commits (a claimed run that decided nothing new) of runs that end so, go to the
//! store together. On Postgres the claims are ONE statement and the commits ONE writing CTE,
//! one round trip each. On SQLite both go as ONE command, one transaction: one wake-up of the
//! writer's thread and one WAL commit for them all (the pages of `job_runs` a claim and a
//! commit both touch are written once). A fleet of 10,000 probes every 30 s claims and ends a
//! run every 3 ms: grouped, each costs a fraction of a statement.
//!
//! A task per store (two on Postgres) writes the groups. A run hands it its row and waits for
//! the answer; a group that fails is answered "alone", and each of its runs then claims or
//! commits by itself, so an error (busy, unreachable, a row the group could not take) is
//! classified for each run as before. A run cancelled while it waits loses nothing: the
//! group still lands (a claim so left `running` is recorded abandoned by the reaper, as a
//! claim cut off alone would be).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::commit::as_i64;
use super::{ABANDONED, DECIDED_KEY, JobStates, RunCommit, StateStore, StoreError, decided_mark, states_of_triples};
use crate::db::{Pool, Ts};
use sqlx::PgPool;

/// How long the first of a group waits for others to join it, under load.
const GATHER: Duration = Duration::from_millis(10);
/// The most commits in one group.
const MAX_GROUP: usize = 256;

/// The store's group writers, started on the first claim or plain commit.
pub(super) type Groups = Arc<OnceLock<Writers>>;

#[derive(Debug)]
pub(super) struct Writers {
    commits: mpsc::UnboundedSender<Pending>,
    claims: mpsc::UnboundedSender<PendingClaim>,
}

/// A claim (with its job's policy state) waiting for its group.
pub(super) struct PendingClaim {
    job: String,
    at: DateTime<Utc>,
    trigger: String,
    /// `None`: the group failed (or held the same occurrence twice), claim alone.
    claimed: oneshot::Sender<Option<Claimed>>,
}

/// A claim's answer: the run's id and its job's policy state, or `None` when another
/// process holds the occurrence.
pub(super) type Claimed = Option<(i64, JobStates)>;

/// One run's plain commit waiting for its group.
pub(super) struct Pending {
    row: PlainRow,
    /// `true`: written with its group; `false`: the group failed, commit alone.
    written: oneshot::Sender<bool>,
}

/// What a plain commit writes: the run's end, its snapshot, the decision marks.
#[derive(Debug, serde::Serialize)]
struct PlainRow {
    id: i64,
    job: String,
    /// Serialized (for SQLite's JSON) as SQLite's timestamp text.
    #[serde(rename = "fin", serialize_with = "sqlite_ts")]
    finished: DateTime<Utc>,
    outcome: &'static str,
    error: Option<String>,
    affected: Option<i64>,
    detail: Option<String>,
    late: Option<i64>,
    /// The snapshot, when the run took one.
    hjob: Option<String>,
    #[serde(rename = "hat", serialize_with = "sqlite_ts_opt")]
    checked: Option<DateTime<Utc>>,
    hstatus: Option<&'static str>,
    hdur: Option<i64>,
    checks: Option<String>,
    mark: String,
    policies: Vec<String>,
}

impl PlainRow {
    fn of(id: i64, run: &RunCommit) -> Result<Self, StoreError> {
        let finished = Utc::now();
        let snapshot = run.snapshot.as_ref();
        let checks = match snapshot {
            Some(s) => Some(serde_json::to_string(&s.checks).map_err(|e| StoreError::Corrupt(e.to_string()))?),
            None => None,
        };
        Ok(PlainRow {
            id,
            job: run.job.clone(),
            finished,
            outcome: run.outcome.as_str(),
            error: run.error.clone(),
            affected: run.rows_affected.map(as_i64),
            detail: run.detail.clone(),
            late: run.lateness_ms.map(as_i64),
            hjob: snapshot.map(|s| s.job.clone()),
            checked: snapshot.map(|s| s.checked_at),
            hstatus: snapshot.map(|s| s.status.as_str()),
            hdur: snapshot.map(|s| as_i64(s.duration_ms)),
            checks,
            mark: decided_mark(run.scheduled_at),
            policies: run.decisions.iter().map(|d| d.policy.clone()).collect(),
        })
    }
}

fn sqlite_ts<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&Ts(*at).sqlite_text())
}

fn sqlite_ts_opt<S: serde::Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => sqlite_ts(at, s),
        None => s.serialize_none(),
    }
}

impl StateStore {
    /// Commits a plain run with the others ending about now. `Ok(false)`: its group failed
    /// and the caller commits it alone (which tells what went wrong).
    pub(super) async fn commit_in_group(&self, id: i64, run: &RunCommit) -> Result<bool, StoreError> {
        self.ready().await?;
        let row = PlainRow::of(id, run)?;
        let writers = self.groups.get_or_init(|| self.start_group_writers());
        let (written, answer) = oneshot::channel();
        if writers.commits.send(Pending { row, written }).is_err() {
            return Ok(false);
        }
        Ok(answer.await.unwrap_or(false))
    }

    /// Claims an occurrence with the others due about now, reading its job's policy state.
    /// `None`: its group failed, and the caller claims alone (which tells what went wrong).
    pub(super) async fn claim_in_group(&self, job: &str, at: DateTime<Utc>, trigger: &str) -> Option<Claimed> {
        let writers = self.groups.get_or_init(|| self.start_group_writers());
        let (claimed, answer) = oneshot::channel();
        let pending = PendingClaim { job: job.to_owned(), at, trigger: trigger.to_owned(), claimed };
        writers.claims.send(pending).ok()?;
        answer.await.ok().flatten()
    }

    /// The tasks that write the groups. They hold a clone of the store without the senders,
    /// so they end when the last clone that can send is dropped.
    fn start_group_writers(&self) -> Writers {
        let (commits, mut commit_queue) = mpsc::unbounded_channel::<Pending>();
        let (claims, mut claim_queue) = mpsc::unbounded_channel::<PendingClaim>();
        let store = StateStore { groups: Groups::default(), ..self.clone() };
        let Pool::Postgres(pg) = store.pool.clone() else {
            // SQLite has one writer: the claims and the plain commits gathered together go
            // as ONE command, one transaction and one wake-up of the writer's thread.
            tokio::spawn(async move {
                let mut joined = false;
                while let Some((claims, commits)) = gather_both(&mut claim_queue, &mut commit_queue, &mut joined).await
                {
                    let (claims, twice) = once_each(claims);
                    let rows: Vec<&PlainRow> = commits.iter().map(|p| &p.row).collect();
                    let wanted: Vec<&PendingClaim> = claims.iter().collect();
                    let answers = match store.write_sqlite_group(&wanted, &rows).await {
                        Ok(answers) => Some(answers),
                        Err(e) => {
                            tracing::debug!(error = %e, runs = rows.len(), claims = wanted.len(), "a group failed; its runs claim and commit alone");
                            None
                        }
                    };
                    for pending in commits {
                        let _ = pending.written.send(answers.is_some());
                    }
                    answer_claims(claims, answers);
                    answer_claims(twice, None);
                }
            });
            return Writers { commits, claims };
        };
        let (claimer, claim_pg) = (store.clone(), pg.clone());
        tokio::spawn(async move {
            let mut joined = false;
            while let Some(group) = gather(&mut commit_queue, &mut joined).await {
                let rows: Vec<&PlainRow> = group.iter().map(|p| &p.row).collect();
                let written = match store.write_group(&pg, &rows).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(error = %e, runs = rows.len(), "a group commit failed; its runs commit alone");
                        false
                    }
                };
                for pending in group {
                    let _ = pending.written.send(written);
                }
            }
        });
        tokio::spawn(async move {
            let mut joined = false;
            while let Some(group) = gather(&mut claim_queue, &mut joined).await {
                let (unique, twice) = once_each(group);
                answer_claims(twice, None);
                let claims: Vec<&PendingClaim> = unique.iter().collect();
                let answers = match claimer.claim_group(&claim_pg, &claims).await {
                    Ok(answers) => Some(answers),
                    Err(e) => {
                        tracing::debug!(error = %e, claims = claims.len(), "a group claim failed; its runs claim alone");
                        None
                    }
                };
                answer_claims(unique, answers);
            }
        });
        Writers { commits, claims }
    }

    /// One statement claims every occurrence of the group and reads their jobs' state (on
    /// Postgres; SQLite's claims go with its commits, `write_sqlite_group`); the answers in
    /// the order of `claims`.
    async fn claim_group(&self, p: &PgPool, claims: &[&PendingClaim]) -> Result<Vec<Claimed>, StoreError> {
        let now = Utc::now();
        let mut answers: Vec<Claimed> = vec![None; claims.len()];
        type Row = (i64, i64, Option<String>, Option<String>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(CLAIM_GROUP_POSTGRES)
            .bind(claims.iter().map(|c| c.job.as_str()).collect::<Vec<_>>())
            .bind(claims.iter().map(|c| c.at).collect::<Vec<_>>())
            .bind(claims.iter().map(|c| c.trigger.as_str()).collect::<Vec<_>>())
            .bind(&self.replica)
            .bind(now)
            .bind(ABANDONED)
            .fetch_all(p)
            .await?;
        for (n, id, policy, key, value) in rows {
            let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| answers.get_mut(i)) else { continue };
            let (_, states) = slot.get_or_insert_with(|| (id, JobStates::new()));
            if let (Some(policy), Some(key), Some(value)) = (policy, key, value) {
                states.entry(policy).or_default().insert(key, value);
            }
        }
        Ok(answers)
    }

    /// SQLite: the plain commits `rows` and the claims, in one command and one transaction
    /// on the writer (`GROUP_SQLITE`); the claims' answers in their order.
    async fn write_sqlite_group(
        &self,
        claims: &[&PendingClaim],
        rows: &[&PlainRow],
    ) -> Result<Vec<Claimed>, StoreError> {
        #[derive(serde::Serialize)]
        struct Wanted<'a> {
            job: &'a str,
            at: String,
            trigger: &'a str,
        }
        let wanted: Vec<Wanted> =
            claims.iter().map(|c| Wanted { job: &c.job, at: Ts(c.at).sqlite_text(), trigger: &c.trigger }).collect();
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        let query = sqlx::query_as(GROUP_SQLITE)
            .bind(serde_json::to_string(rows).map_err(corrupt)?)
            .bind(&self.replica)
            .bind(DECIDED_KEY)
            .bind(serde_json::to_string(&wanted).map_err(corrupt)?)
            .bind(Ts(Utc::now()))
            .bind(ABANDONED);
        let Some((mut turn, options)) = self.sqlite_turn().await else { unreachable!("a SQLite store has a writer") };
        let claimed: Result<Vec<(i64, String, String, String)>, _> = match turn.conn(&options).await {
            Ok(conn) => query.fetch_all(conn).await,
            Err(e) => Err(e),
        };
        turn.end(claimed.is_err()).await;
        let by_occurrence: std::collections::HashMap<(String, String), (i64, String)> =
            claimed?.into_iter().map(|(id, job, at, triples)| ((job, at), (id, triples))).collect();
        let mut answers: Vec<Claimed> = vec![None; claims.len()];
        for (claim, (answer, want)) in claims.iter().zip(answers.iter_mut().zip(&wanted)) {
            if let Some((id, triples)) = by_occurrence.get(&(claim.job.clone(), want.at.clone())) {
                *answer = Some((*id, states_of_triples(triples)?));
            }
        }
        Ok(answers)
    }

    /// Postgres: the plain commits `rows` in one statement (`GROUP_POSTGRES`).
    async fn write_group(&self, p: &PgPool, rows: &[&PlainRow]) -> Result<(), StoreError> {
        let col = |f: fn(&PlainRow) -> Option<String>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
        let policies: Vec<String> = rows
            .iter()
            .map(|r| serde_json::to_string(&r.policies))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(GROUP_POSTGRES)
            .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.finished).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.outcome).collect::<Vec<_>>())
            .bind(col(|r| r.error.clone()))
            .bind(rows.iter().map(|r| r.affected).collect::<Vec<_>>())
            .bind(col(|r| r.detail.clone()))
            .bind(rows.iter().map(|r| r.late).collect::<Vec<_>>())
            .bind(col(|r| r.hjob.clone()))
            .bind(rows.iter().map(|r| r.checked).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.hstatus).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.hdur).collect::<Vec<_>>())
            .bind(col(|r| r.checks.clone()))
            .bind(rows.iter().map(|r| r.job.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.mark.as_str()).collect::<Vec<_>>())
            .bind(policies)
            .bind(&self.replica)
            .bind(DECIDED_KEY)
            .execute(p)
            .await?;
        Ok(())
    }
}

/// The next group: the first to arrive and what else is queued. Under load (others queued
/// behind the first, or the last group was joined while it waited) it first waits `GATHER`
/// for more to join; a lone request (one run at a time, a quiet moment) goes at once.
async fn gather<T>(queue: &mut mpsc::UnboundedReceiver<T>, joined: &mut bool) -> Option<Vec<T>> {
    let first = queue.recv().await?;
    let waited = *joined || !queue.is_empty();
    if waited {
        tokio::time::sleep(GATHER).await;
    }
    let mut group = vec![first];
    take_queued(queue, &mut group);
    *joined = waited && group.len() > 1;
    Some(group)
}

/// The next group on SQLite: claims and plain commits, gathered together as `gather` does.
async fn gather_both(
    claims: &mut mpsc::UnboundedReceiver<PendingClaim>,
    commits: &mut mpsc::UnboundedReceiver<Pending>,
    joined: &mut bool,
) -> Option<(Vec<PendingClaim>, Vec<Pending>)> {
    let (mut claimed, mut committed) = (Vec::new(), Vec::new());
    tokio::select! {
        Some(claim) = claims.recv() => claimed.push(claim),
        Some(commit) = commits.recv() => committed.push(commit),
        else => return None,
    }
    let waited = *joined || !claims.is_empty() || !commits.is_empty();
    if waited {
        tokio::time::sleep(GATHER).await;
    }
    take_queued(claims, &mut claimed);
    take_queued(commits, &mut committed);
    *joined = waited && claimed.len() + committed.len() > 1;
    Some((claimed, committed))
}

/// Adds what is queued to `group`, up to `MAX_GROUP`.
fn take_queued<T>(queue: &mut mpsc::UnboundedReceiver<T>, group: &mut Vec<T>) {
    while group.len() < MAX_GROUP
        && let Ok(next) = queue.try_recv()
    {
        group.push(next);
    }
}

/// The claims of distinct occurrences, and those of an occurrence already in the group (a
/// run-now racing its schedule): the latter claim alone, and find it taken.
fn once_each(mut group: Vec<PendingClaim>) -> (Vec<PendingClaim>, Vec<PendingClaim>) {
    let mut seen = std::collections::HashSet::new();
    group.drain(..).partition(|c| seen.insert((c.job.clone(), c.at)))
}

/// Answers each claim from its group's answers (`None`: the group failed, claim alone).
fn answer_claims(claims: Vec<PendingClaim>, answers: Option<Vec<Claimed>>) {
    match answers {
        Some(answers) => {
            for (claim, answer) in claims.into_iter().zip(answers) {
                let _ = claim.claimed.send(Some(answer));
            }
        }
        None => {
            for claim in claims {
                let _ = claim.claimed.send(None);
            }
        }
    }
}

/// The claim (`store::CLAIM`) of many occurrences with their jobs' state, the occurrences
/// as arrays numbered by `WITH ORDINALITY`.
const CLAIM_GROUP_POSTGRES: &str = "WITH c AS (SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[]) \
     WITH ORDINALITY AS c(job, at, trigger, n)), \
     i AS (INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, outcome) \
     SELECT job, at, trigger, $4, $5, 'running' FROM c ON CONFLICT (job, scheduled_at) DO UPDATE SET \
     trigger = excluded.trigger, replica = excluded.replica, started_at = excluded.started_at, \
     outcome = 'running', finished_at = NULL, error = NULL, detail = NULL \
     WHERE job_runs.outcome = 'skipped' OR (job_runs.outcome = 'failed' AND job_runs.error = $6) \
     RETURNING id, job, scheduled_at) \
     SELECT c.n, i.id, s.plugin, s.key, s.value FROM i JOIN c ON c.job = i.job AND c.at = i.scheduled_at \
     LEFT JOIN policy_state s ON s.job = i.job";

/// `PLAIN_POSTGRES` for many runs: each column an array, the policies of each run a JSON
/// array. Two runs of one job in a group would upsert the same mark twice, which Postgres
/// refuses: that group fails and its runs commit alone.
const GROUP_POSTGRES: &str = "WITH r AS (SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::text[], \
     $4::text[], $5::int8[], $6::text[], $7::int8[], $8::text[], $9::timestamptz[], $10::text[], $11::int8[], \
     $12::text[], $13::text[], $14::text[], $15::text[]) \
     AS r(id, fin, outcome, error, affected, detail, late, hjob, hat, hstatus, hdur, checks, job, mark, policies)), \
     u AS (UPDATE job_runs j SET finished_at = r.fin, outcome = r.outcome, error = r.error, \
     rows_affected = r.affected, detail = r.detail, lateness_ms = r.late FROM r \
     WHERE j.id = r.id AND j.replica = $16 RETURNING j.id), \
     m AS (INSERT INTO policy_state (plugin, job, key, value, updated_at) \
     SELECT p, r.job, $17, r.mark, r.fin FROM r JOIN u ON u.id = r.id \
     CROSS JOIN LATERAL json_array_elements_text(r.policies::json) AS p \
     ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
     WHERE policy_state.value < excluded.value) \
     INSERT INTO health_history (job, checked_at, status, duration_ms, checks) \
     SELECT r.hjob, r.hat, r.hstatus, r.hdur, r.checks FROM r JOIN u ON u.id = r.id WHERE r.checks IS NOT NULL";

/// SQLite's group: `PLAIN_SQLITE` for many runs (`$1`, a JSON array of objects), then the
/// claim (`store::CLAIM`) of many occurrences (`$4`, a JSON array), each claimed row returned
/// with its job's state as a JSON array of triples (read after the commits: the freshest);
/// one command, one transaction.
const GROUP_SQLITE: &str = "BEGIN IMMEDIATE; \
     UPDATE job_runs SET finished_at = r.value->>'fin', outcome = r.value->>'outcome', \
     error = r.value->>'error', rows_affected = r.value->>'affected', detail = r.value->>'detail', \
     lateness_ms = r.value->>'late' FROM jsonb_each($1) AS r \
     WHERE job_runs.id = r.value->>'id' AND job_runs.replica = $2; \
     INSERT INTO policy_state (plugin, job, key, value, updated_at) \
     SELECT p.value, r.value->>'job', $3, r.value->>'mark', r.value->>'fin' \
     FROM jsonb_each($1) AS r, jsonb_each(r.value, '$.policies') AS p \
     WHERE EXISTS (SELECT 1 FROM job_runs WHERE id = r.value->>'id' AND replica = $2) \
     ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
     WHERE policy_state.value < excluded.value; \
     INSERT INTO health_history (job, checked_at, status, duration_ms, checks) \
     SELECT r.value->>'hjob', r.value->>'hat', r.value->>'hstatus', r.value->>'hdur', r.value->>'checks' \
     FROM jsonb_each($1) AS r WHERE r.value->>'checks' IS NOT NULL \
     AND EXISTS (SELECT 1 FROM job_runs WHERE id = r.value->>'id' AND replica = $2); \
     INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, outcome) \
     SELECT c.value->>'job', c.value->>'at', c.value->>'trigger', $2, $5, 'running' FROM jsonb_each($4) AS c \
     WHERE true ON CONFLICT (job, scheduled_at) DO UPDATE SET \
     trigger = excluded.trigger, replica = excluded.replica, started_at = excluded.started_at, \
     outcome = 'running', finished_at = NULL, error = NULL, detail = NULL \
     WHERE job_runs.outcome = 'skipped' OR (job_runs.outcome = 'failed' AND job_runs.error = $6) \
     RETURNING id, job, scheduled_at, (SELECT json_group_array(json_array(plugin, key, value)) \
     FROM policy_state WHERE policy_state.job = job_runs.job); \
     COMMIT";
