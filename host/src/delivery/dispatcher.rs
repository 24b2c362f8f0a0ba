//! The dispatcher: the urgent lane (admin email, tickets, the subscriber fan-out) and the
//! paced lane (per-user notices), leases, backoff and silencing; sending from the spool
//! while the store is unreachable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::{COUNTS_EVERY, Channels, Failure, LEASE, MAX_IN_FLIGHT, NOTICE_BATCH, POLL, URGENT_BATCH};
use crate::base::OutboxKind;
use crate::store::{OutboxRow, Silence, Spool, StateStore};

/// The running dispatcher.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: StateStore,
    spool: Spool,
    channels: watch::Receiver<Arc<Channels>>,
    wake: Arc<Notify>,
    /// The silences as last read from the store (and kept beside the spool), for while it
    /// cannot be read.
    known_silences: Arc<std::sync::Mutex<Vec<Silence>>>,
}

impl Dispatcher {
    pub fn new(store: StateStore, spool: Spool, channels: watch::Receiver<Arc<Channels>>, wake: Arc<Notify>) -> Self {
        let known_silences = Arc::new(std::sync::Mutex::new(spool.remembered_silences()));
        Dispatcher { store, spool, channels, wake, known_silences }
    }

    /// Starts both lanes; they stop between two deliveries once `stop` turns true.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> tokio::task::JoinSet<()> {
        let mut set = tokio::task::JoinSet::new();
        let urgent = self.clone();
        let stop2 = stop.clone();
        set.spawn(async move { urgent.urgent_lane(stop2).await });
        set.spawn(async move { self.notice_lane(stop).await });
        set
    }

    fn channels(&self) -> Arc<Channels> {
        self.channels.borrow().clone()
    }

    /// The silences in force now: the store's (read once per round), or while it cannot be
    /// read, the last ones it gave (kept on disk, so a restart during an outage keeps them).
    async fn silences(&self) -> Vec<Silence> {
        let now = Utc::now();
        let all = match self.store.silences(now, false).await {
            Ok(all) => {
                let mut known = self.known_silences.lock().unwrap_or_else(|e| e.into_inner());
                if *known != all {
                    if let Err(e) = self.spool.remember_silences(&all) {
                        warn!(error = %e, "could not keep the silences beside the spool");
                    }
                    known.clone_from(&all);
                }
                all
            }
            Err(_) => self.known_silences.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        all.into_iter().filter(|s| s.starts_at <= now && now < s.ends_at).collect()
    }

    /// Why an action must not be sent now, if a silence or a maintenance window covers it.
    fn silenced(
        channels: &Channels,
        silences: &[Silence],
        job: Option<&str>,
        policy: Option<&str>,
        kind: OutboxKind,
    ) -> Option<String> {
        if let Some(s) = silences.iter().find(|s| s.matchers.matches(job, policy, kind)) {
            return Some(format!("silenced by silence {} until {}: {}", s.id, s.ends_at.to_rfc3339(), s.comment));
        }
        let now = Utc::now();
        channels
            .maintenance
            .iter()
            .find(|m| m.matchers.matches(job, policy, kind) && m.active(now))
            .map(|m| format!("silenced by maintenance window `{}`: {}", m.name, m.comment))
    }

    /// Records a silenced row; true when it was silenced (and must not be sent).
    async fn hold_back(&self, channels: &Channels, silences: &[Silence], row: &OutboxRow) -> bool {
        let Some(why) = Self::silenced(channels, silences, row.job.as_deref(), row.policy.as_deref(), row.kind) else {
            return false;
        };
        crate::metrics::record_delivery(row.kind, "silenced");
        info!(kind = %row.kind, key = %row.dedup_key, "{why}");
        if let Err(e) = self.store.mark_silenced(row.id, &why).await {
            warn!(key = %row.dedup_key, error = %e, "could not record the silenced row");
        }
        true
    }

    async fn idle(&self, stop: &mut watch::Receiver<bool>, wait: Duration) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }

    async fn urgent_lane(self, mut stop: watch::Receiver<bool>) {
        let mut spool_retry: HashMap<String, (u32, Instant)> = HashMap::new();
        let mut counted = Instant::now() - COUNTS_EVERY;
        let mut store_warned = false;
        while !*stop.borrow() {
            let channels = self.channels();
            if !self.spool.is_empty() && self.spool.drain(&self.store).await.is_err() {
                self.send_from_spool(&channels, &mut spool_retry).await;
            }
            if self.spool.is_empty() {
                spool_retry.clear();
            }
            let rows = match self.store.claim_due(&OutboxKind::URGENT, URGENT_BATCH, LEASE).await {
                Ok(rows) => {
                    store_warned = false;
                    rows
                }
                Err(e) if self.store.is_busy(&e) => {
                    debug!(error = %e, "dispatcher: state store busy; trying again");
                    Vec::new()
                }
                Err(e) => {
                    if !store_warned {
                        warn!(error = %e, "dispatcher: state store unreachable; sending from the spool until it returns");
                        store_warned = true;
                    }
                    Vec::new()
                }
            };
            let full = rows.len() as i64 == URGENT_BATCH;
            let silences = if rows.is_empty() { Vec::new() } else { self.silences().await };
            for row in rows {
                if self.hold_back(&channels, &silences, &row).await {
                    continue;
                }
                if row.kind == OutboxKind::Subscribers {
                    self.expand(&channels, row).await;
                } else if !self.deliver_row(&channels, row).await {
                    // The rest of the batch keeps its lease; sent now, it might not be
                    // recorded either.
                    break;
                }
            }
            if counted.elapsed() >= COUNTS_EVERY {
                counted = Instant::now();
                if let Ok(counts) = self.store.outbox_counts().await {
                    crate::metrics::record_outbox_counts(&counts);
                }
                // Keeps the silences fresh for an outage that starts before the next alert.
                self.silences().await;
            }
            if !full {
                self.idle(&mut stop, POLL).await;
            }
        }
    }

    async fn notice_lane(self, mut stop: watch::Receiver<bool>) {
        let mut next_send = tokio::time::Instant::now();
        while !*stop.borrow() {
            let channels = self.channels();
            let pace = channels.subscribers.as_ref().map_or(0, |s| s.pace);
            let batch = if pace == 0 { NOTICE_BATCH } else { i64::from(pace).clamp(1, NOTICE_BATCH) };
            let rows = self.store.claim_due(&[OutboxKind::Notice], batch, LEASE).await.unwrap_or_default();
            if rows.is_empty() {
                self.idle(&mut stop, POLL).await;
                continue;
            }
            // One in flight per 20/s of pace: at the default 10/s a kill repeats at most the
            // one notice being sent.
            let in_flight = if pace == 0 { MAX_IN_FLIGHT } else { pace.div_ceil(20).clamp(1, MAX_IN_FLIGHT) } as usize;
            let mut sending = FuturesUnordered::new();
            let mut recorded = true;
            let silences = self.silences().await;
            for row in rows {
                if self.hold_back(&channels, &silences, &row).await {
                    continue;
                }
                // Wait for a free slot and, with a pace, for this send's turn (never faster
                // than the pace: each send starts at least 1/pace after the last), while the
                // sends in flight go on.
                loop {
                    let due = pace == 0 || tokio::time::Instant::now() >= next_send;
                    if !recorded || (due && sending.len() < in_flight) {
                        break;
                    }
                    tokio::select! {
                        Some(ok) = sending.next(), if !sending.is_empty() => recorded &= ok,
                        _ = tokio::time::sleep_until(next_send), if !due => {}
                    }
                }
                if !recorded {
                    // The rest of the batch keeps its lease: sent now, it might not be
                    // recorded either.
                    break;
                }
                if pace > 0 {
                    next_send = tokio::time::Instant::now() + Duration::from_secs_f64(1.0 / f64::from(pace));
                }
                sending.push(self.deliver_row(&channels, row));
            }
            while let Some(ok) = sending.next().await {
                recorded &= ok;
            }
            if !recorded {
                self.idle(&mut stop, POLL).await;
            }
        }
    }

    /// Sends one row and records the outcome; false when the outcome could not be recorded.
    async fn deliver_row(&self, channels: &Channels, row: OutboxRow) -> bool {
        let result =
            channels.deliver(row.kind, &row.dedup_key, &row.payload, row.job.as_deref(), row.policy.as_deref()).await;
        self.settle(channels, &row, result).await
    }

    async fn expand(&self, channels: &Channels, row: OutboxRow) {
        if self.store.superseded(&row).await.unwrap_or(false) {
            match self.store.mark_superseded(row.id, "superseded by a newer status change; not told").await {
                Ok(()) => info!(key = %row.dedup_key, "subscriber notice superseded by a newer one; not sent"),
                Err(e) => warn!(key = %row.dedup_key, error = %e, "could not record the superseded notice"),
            }
            return;
        }
        match channels.fan_out(&row).await {
            Ok(children) => {
                let note = format!("expanded into {} notices", children.len());
                match self.store.expand(&row, &children, &note).await {
                    Ok(()) => {
                        crate::metrics::record_delivery(row.kind, "delivered");
                        info!(key = %row.dedup_key, notices = children.len(), "subscriber notices queued");
                        self.wake.notify_waiters();
                    }
                    Err(e) => {
                        warn!(key = %row.dedup_key, error = %e, "could not queue the subscriber notices; retried after the lease")
                    }
                }
            }
            Err(failure) => {
                self.settle(channels, &row, Err(failure)).await;
            }
        }
    }

    /// Records the outcome of one attempt; false when it could not be (see `record`).
    async fn settle(&self, channels: &Channels, row: &OutboxRow, result: Result<String, Failure>) -> bool {
        let attempts = u32::try_from(row.attempts).unwrap_or(0) + 1;
        match &result {
            Ok(note) => {
                crate::metrics::record_delivery(row.kind, "delivered");
                info!(kind = %row.kind, key = %row.dedup_key, attempts, "delivered: {note}");
                self.record(row, || self.store.mark_delivered(row.id)).await
            }
            Err(Failure::Unavailable(e)) => {
                let delay = channels.backoff_after(attempts);
                info!(kind = %row.kind, key = %row.dedup_key, retry_in = ?delay, error = %e, "waiting for the target to answer; no attempt spent");
                let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                self.record(row, || self.store.defer(row.id, e, next)).await
            }
            Err(failure @ (Failure::Retry(_) | Failure::Throttled(..))) if attempts < channels.max_attempts => {
                let delay = channels.backoff_after(attempts).max(failure.retry_after());
                let e = &failure.to_string();
                crate::metrics::record_delivery(row.kind, "retried");
                warn!(kind = %row.kind, key = %row.dedup_key, attempts, retry_in = ?delay, error = %e, "delivery failed; will retry");
                let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                self.record(row, || self.store.mark_attempt(row.id, e, Some(next))).await
            }
            Err(failure) => {
                crate::metrics::record_delivery(row.kind, "failed");
                warn!(kind = %row.kind, key = %row.dedup_key, attempts, error = %failure, "delivery failed for good; `warden outbox retry` re-drives it");
                let e = &failure.to_string();
                self.record(row, || self.store.mark_attempt(row.id, e, None)).await
            }
        }
    }

    /// Writes an attempt's outcome, trying again while the store refuses (busy, locked,
    /// briefly away) for up to half the lease. A sent row left unrecorded is sent again once
    /// its lease runs out (at least once, never lost), so the lanes wait here instead of
    /// sending more that could not be recorded either.
    async fn record<F, Fut>(&self, row: &OutboxRow, mut write: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), crate::store::StoreError>>,
    {
        let give_up = Instant::now() + LEASE / 2;
        let mut wait = Duration::from_millis(50);
        loop {
            match write().await {
                Ok(()) => return true,
                Err(e) if Instant::now() + wait < give_up => {
                    debug!(key = %row.dedup_key, error = %e, retry_in = ?wait, "could not record the delivery attempt yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    warn!(key = %row.dedup_key, error = %e, "could not record the delivery attempt; the row is attempted again after its lease");
                    return false;
                }
            }
        }
    }

    /// While the store is unreachable: admin email and tickets straight from the spool.
    async fn send_from_spool(&self, channels: &Channels, retry: &mut HashMap<String, (u32, Instant)>) {
        let _gate = self.spool.sending().await;
        let silences = self.silences().await;
        for spooled in self.spool.undelivered() {
            let key = spooled.row.dedup_key.clone();
            if retry.get(&key).is_some_and(|(_, at)| *at > Instant::now()) {
                continue;
            }
            let row = &spooled.row;
            if let Some(why) = Self::silenced(channels, &silences, Some(&spooled.job), Some(&spooled.policy), row.kind)
            {
                crate::metrics::record_delivery(row.kind, "silenced");
                info!(kind = %row.kind, key = %key, "held back in the spool: {why}");
                if let Err(e) = self.spool.silenced(&key, &why) {
                    warn!(key = %key, error = %e, "could not note the silenced row in the spool");
                }
                continue;
            }
            match channels.deliver(row.kind, &key, &row.payload, Some(&spooled.job), Some(&spooled.policy)).await {
                Ok(note) => {
                    crate::metrics::record_delivery(row.kind, "delivered");
                    info!(kind = %row.kind, key = %key, "delivered from the spool: {note}");
                    if let Err(e) = self.spool.delivered(&key) {
                        warn!(key = %key, error = %e, "could not note the delivery in the spool's file; it is sent again only if warden restarts before the file can be written");
                    }
                    retry.remove(&key);
                }
                Err(failure) => {
                    // The row stays in the spool; the outbox takes over its retries (and its
                    // attempt budget) once the store is back.
                    let attempts = retry.get(&key).map_or(0, |(n, _)| *n) + 1;
                    crate::metrics::record_delivery(row.kind, "retried");
                    warn!(kind = %row.kind, key = %key, attempts, error = %failure, "delivery from the spool failed; will retry");
                    let delay = channels.backoff_after(attempts).max(failure.retry_after());
                    retry.insert(key, (attempts, Instant::now() + delay));
                }
            }
        }
    }
}
