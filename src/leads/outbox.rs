//! The in-memory outbox: the journaled leads not yet delivered, when each is due, and
//! which are in flight, so that no lead is ever handed to two delivery attempts at once.
//!
//! Every attempt starts with a claim ([`Outbox::claim_new`] for the attempt made while
//! the visitor waits, [`Outbox::claim_due`] for the background service) and ends with
//! exactly one of [`Outbox::delivered`], [`Outbox::retry_at`], [`Outbox::park`] or
//! [`Outbox::release`], or [`Outbox::wait_until`] for a lead whose tenant has no delivery
//! slot left this hour (see `caps`): it waits, neither due nor parked, until
//! [`Outbox::release_waiting`] finds its hour begun. A lead takes its slot once
//! ([`Outbox::needs_slot`], [`Outbox::slotted`]); retries after a failure do not take another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::journal::LeadRecord;

#[derive(Debug)]
struct Entry {
    record: Arc<LeadRecord>,
    /// Failed attempts so far.
    failures: u32,
    /// When the next attempt is due; `None` when parked (it cannot succeed as it is).
    due: Option<Instant>,
    in_flight: bool,
    /// Waiting for its tenant's next hour: not before this time (unix ms, the store's clock).
    waiting: Option<u64>,
    /// Whether it has taken its slot in the tenant's hourly delivery cap.
    slot: bool,
}

/// Pending leads by id.
#[derive(Debug, Default)]
pub struct Outbox {
    entries: HashMap<String, Entry>,
}

impl Outbox {
    /// Adds a lead, due at `now`, not in flight (a lead replayed from the journal).
    pub fn add(&mut self, record: LeadRecord, now: Instant) {
        self.insert(record, now, false);
    }

    /// Adds a lead already claimed by the caller (a lead just captured).
    pub fn claim_new(&mut self, record: LeadRecord, now: Instant) -> Arc<LeadRecord> {
        self.insert(record, now, true)
    }

    fn insert(&mut self, record: LeadRecord, now: Instant, in_flight: bool) -> Arc<LeadRecord> {
        let record = Arc::new(record);
        self.entries.insert(
            record.id.clone(),
            Entry {
                record: Arc::clone(&record),
                failures: 0,
                due: Some(now),
                in_flight,
                waiting: None,
                slot: false,
            },
        );
        record
    }

    /// Claims up to `max` leads due by `now` and not in flight, earliest due first.
    pub fn claim_due(&mut self, now: Instant, max: usize) -> Vec<Arc<LeadRecord>> {
        let mut due: Vec<&mut Entry> = self
            .entries
            .values_mut()
            .filter(|e| !e.in_flight && e.due.is_some_and(|due| due <= now))
            .collect();
        due.sort_by_key(|e| (e.due, e.record.at));
        due.into_iter()
            .take(max)
            .map(|entry| {
                entry.in_flight = true;
                Arc::clone(&entry.record)
            })
            .collect()
    }

    /// When the earliest lead that is neither in flight nor parked is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.in_flight)
            .filter_map(|e| e.due)
            .min()
    }

    /// The lead was delivered: forget it.
    pub fn delivered(&mut self, id: &str) {
        self.entries.remove(id);
    }

    /// The attempt failed: count it, and make the lead due again at `due(failures so far)`.
    /// Returns the failures so far.
    pub fn retry_at(&mut self, id: &str, due: impl FnOnce(u32) -> Instant) -> u32 {
        match self.entries.get_mut(id) {
            Some(entry) => {
                entry.failures += 1;
                entry.due = Some(due(entry.failures));
                entry.in_flight = false;
                entry.failures
            }
            None => 0,
        }
    }

    /// The lead cannot be delivered as it is: keep it (it stays in the journal) but stop
    /// trying until the next start.
    pub fn park(&mut self, id: &str) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.due = None;
            entry.in_flight = false;
        }
    }

    /// The attempt was abandoned without an outcome: the lead is due again at `now`.
    pub fn release(&mut self, id: &str, now: Instant) {
        if let Some(entry) = self.entries.get_mut(id) {
            if entry.in_flight {
                entry.in_flight = false;
                entry.due = Some(now);
            }
        }
    }

    /// Whether the lead still has to take a delivery slot (see `caps`).
    pub fn needs_slot(&self, id: &str) -> bool {
        self.entries.get(id).is_some_and(|entry| !entry.slot)
    }

    /// The lead took its delivery slot.
    pub fn slotted(&mut self, id: &str) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.slot = true;
        }
    }

    /// The attempt found no delivery slot: the lead waits until `not_before` (unix ms on
    /// the store's clock), when [`Outbox::release_waiting`] makes it due again.
    pub fn wait_until(&mut self, id: &str, not_before: u64) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.due = None;
            entry.in_flight = false;
            entry.waiting = Some(not_before);
        }
    }

    /// Makes every waiting lead whose time has come (`now_ms`, unix ms) due at `now`;
    /// returns how many.
    pub fn release_waiting(&mut self, now_ms: u64, now: Instant) -> usize {
        let mut released = 0;
        for entry in self.entries.values_mut() {
            if entry.waiting.is_some_and(|not_before| not_before <= now_ms) {
                entry.waiting = None;
                entry.due = Some(now);
                released += 1;
            }
        }
        released
    }

    /// Whether any lead waits for its tenant's next hour.
    pub fn has_waiting(&self) -> bool {
        self.entries.values().any(|entry| entry.waiting.is_some())
    }

    /// Leads not yet delivered (in flight, waiting and parked ones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leads::lead::Lead;
    use std::time::Duration;

    fn record(id: &str, at: u64) -> LeadRecord {
        LeadRecord {
            id: id.into(),
            at,
            tenant: "acme".into(),
            site: "https://www.example.com".into(),
            conversation: "thread_1".into(),
            to: vec!["sales@example.com".into()],
            lead: Lead {
                name: "Ada".into(),
                email: "ada@example.net".into(),
                message: "hi".into(),
            },
        }
    }

    fn ids(records: &[Arc<LeadRecord>]) -> Vec<&str> {
        records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn a_claimed_lead_is_not_claimed_again() {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        outbox.claim_new(record("new", 2), now);
        outbox.add(record("old", 1), now);
        assert_eq!(ids(&outbox.claim_due(now, 10)), ["old"]);
        assert!(outbox.claim_due(now, 10).is_empty());
        assert_eq!(outbox.next_due(), None);
        assert_eq!(outbox.len(), 2);
    }

    #[test]
    fn a_failed_lead_is_due_after_its_delay() {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        let lead = outbox.claim_new(record("l1", 1), now);
        let failures = outbox.retry_at(&lead.id, |n| now + Duration::from_secs(n.into()));
        assert_eq!(failures, 1);
        assert_eq!(outbox.next_due(), Some(now + Duration::from_secs(1)));
        assert!(outbox.claim_due(now, 10).is_empty());
        let later = now + Duration::from_secs(1);
        assert_eq!(ids(&outbox.claim_due(later, 10)), ["l1"]);
        assert_eq!(
            outbox.retry_at("l1", |n| later + Duration::from_secs(n.into())),
            2
        );
    }

    #[test]
    fn delivered_leads_are_forgotten() {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        outbox.claim_new(record("l1", 1), now);
        outbox.delivered("l1");
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn due_leads_are_claimed_oldest_first_up_to_the_limit() {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        for (id, at) in [("c", 3), ("a", 1), ("b", 2)] {
            outbox.add(record(id, at), now);
        }
        assert_eq!(ids(&outbox.claim_due(now, 2)), ["a", "b"]);
        assert_eq!(ids(&outbox.claim_due(now, 2)), ["c"]);
    }

    #[test]
    fn parked_leads_stay_pending_but_are_never_due() {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        outbox.claim_new(record("l1", 1), now);
        outbox.park("l1");
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.next_due(), None);
        assert!(outbox
            .claim_due(now + Duration::from_secs(3600), 10)
            .is_empty());
    }

    #[test]
    fn a_waiting_lead_is_due_only_once_its_time_has_come() {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        let lead = outbox.claim_new(record("l1", 1), now);
        outbox.add(record("l2", 2), now);
        outbox.wait_until(&lead.id, 5_000);
        assert!(outbox.has_waiting());
        assert_eq!(outbox.len(), 2);
        assert_eq!(ids(&outbox.claim_due(now, 10)), ["l2"], "l1 waits");
        assert_eq!(outbox.next_due(), None);
        assert_eq!(outbox.release_waiting(4_999, now), 0);
        assert!(outbox.claim_due(now, 10).is_empty());
        let later = now + Duration::from_secs(1);
        assert_eq!(outbox.release_waiting(5_000, later), 1);
        assert!(!outbox.has_waiting());
        assert_eq!(outbox.next_due(), Some(later));
        assert_eq!(ids(&outbox.claim_due(later, 10)), ["l1"]);
    }

    #[test]
    fn a_lead_takes_its_delivery_slot_once() {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        let lead = outbox.claim_new(record("l1", 1), now);
        assert!(outbox.needs_slot(&lead.id));
        outbox.slotted(&lead.id);
        assert!(!outbox.needs_slot(&lead.id));
        outbox.retry_at(&lead.id, |_| now);
        assert!(!outbox.needs_slot(&lead.id), "a retry keeps its slot");
        assert!(!outbox.needs_slot("unknown"));
    }

    #[test]
    fn a_released_lead_is_due_at_once() {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        outbox.claim_new(record("l1", 1), now);
        outbox.release("l1", now);
        assert_eq!(ids(&outbox.claim_due(now, 10)), ["l1"]);
    }
}
