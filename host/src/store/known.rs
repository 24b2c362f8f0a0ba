//! The spool's memory of each (policy, job)'s state as last known: what the policies
//! decide from while the store is unreachable. Every job's state is held, so it is kept
//! compact: one packed buffer per (policy, job) and its decision mark as a number. As maps of
//! owned strings (one `BTreeMap` node and four strings per job) it was 73 MB at 100,000 jobs.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::DECIDED_KEY;

/// A policy's state: key → value, as the policy and the store see it.
pub type PolicyState = BTreeMap<String, String>;

/// Every (policy, job)'s state as last known.
#[derive(Debug, Default)]
pub(super) struct KnownStates {
    /// policy → job → state.
    scoped: HashMap<Box<str>, HashMap<Box<str>, Packed>>,
    /// State written before it was kept per job: it stands for every job of the policy.
    unscoped: HashMap<Box<str>, Packed>,
}

/// One state: its decision mark (`DECIDED_KEY`, epoch milliseconds) apart, and the other
/// pairs in key order, each key and value as a `u32` length and its bytes.
#[derive(Debug, Default, Clone, PartialEq)]
struct Packed {
    decided: Option<u64>,
    pairs: Box<[u8]>,
}

impl Packed {
    fn of(state: &PolicyState) -> Packed {
        let mut pairs = Vec::new();
        let mut decided = None;
        for (key, value) in state {
            match mark_of(key, value) {
                Some(mark) => decided = Some(mark),
                None => {
                    for s in [key, value] {
                        pairs.extend_from_slice(&(s.len() as u32).to_le_bytes());
                        pairs.extend_from_slice(s.as_bytes());
                    }
                }
            }
        }
        Packed { decided, pairs: pairs.into_boxed_slice() }
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest: &[u8] = &self.pairs;
        let mut next = move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let (s, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
            rest = tail;
            // Packed from `&str`s only.
            Some(std::str::from_utf8(s).unwrap_or_default())
        };
        std::iter::from_fn(move || Some((next()?, next()?)))
    }

    /// Whether `state` is this one, without packing it.
    fn is(&self, state: &PolicyState) -> bool {
        let mut decided = None;
        let mut mine = self.pairs();
        for (key, value) in state {
            match mark_of(key, value) {
                Some(mark) => decided = Some(mark),
                None if mine.next() == Some((key.as_str(), value.as_str())) => {}
                None => return false,
            }
        }
        mine.next().is_none() && decided == self.decided
    }

    fn unpack(&self) -> PolicyState {
        let mut state: PolicyState = self.pairs().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        if let Some(mark) = self.decided {
            state.insert(DECIDED_KEY.to_owned(), format!("{mark:016}"));
        }
        state
    }

    fn write(&mut self, writes: &BTreeMap<String, Option<String>>) {
        let mut state = self.unpack();
        for (key, value) in writes {
            match value {
                Some(v) => state.insert(key.clone(), v.clone()),
                None => state.remove(key),
            };
        }
        *self = Packed::of(&state);
    }
}

/// The decision mark `value` holds, when `key` is `DECIDED_KEY` (written by `decided_mark`:
/// sixteen digits). Anything else there is kept as an ordinary pair.
fn mark_of(key: &str, value: &str) -> Option<u64> {
    if key != DECIDED_KEY || value.len() != 16 {
        return None;
    }
    value.parse().ok()
}

/// `policy/job` (the spool's and the peers' form) split; a key without `/` was written
/// before state was per job. Names have no `/` in them (the configuration refuses one).
fn split(key: &str) -> (&str, Option<&str>) {
    match key.split_once('/') {
        Some((policy, job)) => (policy, Some(job)),
        None => (key, None),
    }
}

impl KnownStates {
    fn get(&self, policy: &str, job: &str) -> Option<&Packed> {
        self.scoped.get(policy)?.get(job)
    }

    fn entry(&mut self, policy: &str, job: &str) -> &mut Packed {
        // The policy's state from before it was per job is where a job's state starts.
        let unscoped = self.unscoped.get(policy);
        if !self.scoped.contains_key(policy) {
            self.scoped.insert(policy.into(), HashMap::new());
        }
        let jobs = self.scoped.get_mut(policy).expect("inserted above");
        if !jobs.contains_key(job) {
            jobs.insert(job.into(), unscoped.cloned().unwrap_or_default());
        }
        jobs.get_mut(job).expect("inserted above")
    }

    /// Notes a (policy, job)'s state as just read from the store.
    pub(super) fn remember(&mut self, policy: &str, job: &str, state: &PolicyState) {
        if !self.get(policy, job).is_some_and(|p| p.is(state)) {
            *self.entry(policy, job) = Packed::of(state);
        }
    }

    /// Applies state writes a run committed (or spooled).
    pub(super) fn write(&mut self, policy: &str, job: &str, writes: &BTreeMap<String, Option<String>>) {
        let packed = self.entry(policy, job);
        if !writes.is_empty() {
            packed.write(writes);
        }
    }

    /// Notes the occurrence a (policy, job)'s state is as of; it only moves forward.
    pub(super) fn mark(&mut self, policy: &str, job: &str, scheduled: DateTime<Utc>) {
        let mark = scheduled.timestamp_millis().max(0) as u64;
        let packed = self.entry(policy, job);
        if packed.decided.is_none_or(|m| m < mark) {
            packed.decided = Some(mark);
        }
    }

    /// A (policy, job)'s state: its own, or else the policy's from before state was per job.
    pub(super) fn state(&self, policy: &str, job: &str) -> PolicyState {
        self.get(policy, job).or_else(|| self.unscoped.get(policy)).map(Packed::unpack).unwrap_or_default()
    }

    /// Every state, keyed `policy/job` (or `policy`), with its `DECIDED_KEY`.
    pub(super) fn to_map(&self) -> HashMap<String, PolicyState> {
        let scoped = self
            .scoped
            .iter()
            .flat_map(|(policy, jobs)| jobs.iter().map(move |(job, p)| (format!("{policy}/{job}"), p.unpack())));
        let unscoped = self.unscoped.iter().map(|(policy, p)| (policy.to_string(), p.unpack()));
        scoped.chain(unscoped).collect()
    }

    /// Sets the state under `key` (`policy/job` or `policy`) unless one is known.
    pub(super) fn insert_if_absent(&mut self, key: &str, state: &PolicyState) {
        match split(key) {
            (policy, Some(job)) => {
                let jobs = self.scoped.entry(policy.into()).or_default();
                jobs.entry(job.into()).or_insert_with(|| Packed::of(state));
            }
            (policy, None) => {
                self.unscoped.entry(policy.into()).or_insert_with(|| Packed::of(state));
            }
        }
    }

    /// Takes the state under `key` if its mark is newer than the one known (or none is);
    /// returns whether it did.
    pub(super) fn take_if_newer(&mut self, key: &str, state: &PolicyState) -> bool {
        let theirs = Packed::of(state);
        let (policy, job) = split(key);
        let ours = match job {
            Some(job) => self.get(policy, job),
            None => self.unscoped.get(policy),
        };
        if theirs.decided <= ours.and_then(|p| p.decided) {
            return false;
        }
        match job {
            Some(job) => self.scoped.entry(policy.into()).or_default().insert(job.into(), theirs),
            None => self.unscoped.insert(policy.into(), theirs),
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pairs: &[(&str, &str)]) -> PolicyState {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_state_comes_back_as_it_went_in_and_compares_without_packing() {
        let s = state(&[("a", ""), ("b/c", "ü\u{0}x"), (DECIDED_KEY, "0000000000001234"), ("z", "9")]);
        let p = Packed::of(&s);
        assert_eq!(p.decided, Some(1234));
        assert_eq!(p.unpack(), s);
        assert!(p.is(&s));
        for other in [
            state(&[("a", ""), ("b/c", "ü\u{0}x"), ("z", "9")]),
            state(&[("a", ""), ("b/c", "ü\u{0}x"), (DECIDED_KEY, "0000000000001235"), ("z", "9")]),
            state(&[("a", ""), ("b/c", "ü\u{0}x"), (DECIDED_KEY, "0000000000001234")]),
            state(&[("a", ""), ("b/c", "ü\u{0}x"), (DECIDED_KEY, "0000000000001234"), ("z", "9"), ("zz", "")]),
        ] {
            assert!(!p.is(&other), "{other:?} is not {s:?}");
        }
        let odd = state(&[(DECIDED_KEY, "not a mark")]);
        assert_eq!(Packed::of(&odd).unpack(), odd, "a mark warden did not write is kept as it was");
    }

    #[test]
    fn writes_marks_and_the_policys_state_from_before_it_was_per_job() {
        let mut known = KnownStates::default();
        known.insert_if_absent("p", &state(&[("last_status", "error")]));
        assert_eq!(known.state("p", "j")["last_status"], "error", "the unscoped state stands for every job");
        known.write("p", "j", &BTreeMap::from([("told".to_owned(), Some("yes".to_owned()))]));
        known.mark("p", "j", DateTime::from_timestamp_millis(5000).unwrap());
        known.mark("p", "j", DateTime::from_timestamp_millis(4000).unwrap());
        assert_eq!(
            known.state("p", "j"),
            state(&[("last_status", "error"), ("told", "yes"), (DECIDED_KEY, "0000000000005000")]),
            "written over the unscoped state; the mark only moves forward"
        );
        known.write("p", "j", &BTreeMap::from([("told".to_owned(), None)]));
        assert!(!known.state("p", "j").contains_key("told"));
        let map = known.to_map();
        assert_eq!(map.len(), 2);
        assert_eq!(map["p"], state(&[("last_status", "error")]));
        assert_eq!(map["p/j"]["last_status"], "error");
    }
}
