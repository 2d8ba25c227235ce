//! Per-instance retries: a write that failed is tried again after a backoff of its own
//! (0.5 s doubling to 30 s, reset by a success), as client-go's per-item rate limiter does
//! in a controller's work queue. One Deployment that fails every write (an admission
//! policy denies it, another manager keeps conflicting) then backs off alone, and every
//! other instance's writes keep flowing.
//!
//! The clock is an input (`now`), so the rules are unit-tested without waiting.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// The first retry's delay.
pub const FIRST: Duration = Duration::from_millis(500);
/// The longest delay between two tries of one instance.
pub const MOST: Duration = Duration::from_secs(30);

/// The instances waiting for a retry, each with its own backoff.
#[derive(Debug, Default)]
pub struct Requeue {
    /// Instance -> (when it is tried again, the delay after its next failure).
    keys: HashMap<String, (Instant, Duration)>,
    /// The same, by due instant.
    due: BTreeSet<(Instant, String)>,
}

impl Requeue {
    /// A write of `key` failed at `now`: it is tried again after its backoff, which
    /// doubles for the failure after.
    pub fn failed(&mut self, key: &str, now: Instant) {
        let delay = match self.keys.get(key) {
            Some((at, delay)) => {
                self.due.remove(&(*at, key.to_owned()));
                *delay
            }
            None => FIRST,
        };
        let at = now + delay;
        self.keys
            .insert(key.to_owned(), (at, (delay * 2).min(MOST)));
        self.due.insert((at, key.to_owned()));
    }

    /// A write of `key` succeeded (or is no longer needed): its backoff starts over.
    pub fn forget(&mut self, key: &str) {
        if let Some((at, _)) = self.keys.remove(key) {
            self.due.remove(&(at, key.to_owned()));
        }
    }

    /// Whether `key` is backing off at `now` (not to be written before it is due).
    pub fn waiting(&self, key: &str, now: Instant) -> bool {
        self.keys.get(key).is_some_and(|(at, _)| *at > now)
    }

    /// The earliest retry still to come.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// The instances due by `now`, to be written again. They keep their backoff level
    /// until a write of theirs succeeds ([`Requeue::forget`]).
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut keys = Vec::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.due.pop_first().expect("just seen");
            keys.push(key);
        }
        keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_backs_off_alone_and_starts_over_after_a_success() {
        let t0 = Instant::now();
        let s = Duration::from_millis;
        let mut q = Requeue::default();
        q.failed("bad", t0);
        q.failed("flaky", t0);
        assert!(q.waiting("bad", t0) && !q.waiting("good", t0));
        assert_eq!(q.next_due(), Some(t0 + s(500)));
        assert!(q.take_due(t0 + s(499)).is_empty());
        let mut due = q.take_due(t0 + s(500));
        due.sort();
        assert_eq!(due, ["bad", "flaky"]);
        assert!(!q.waiting("bad", t0 + s(500)), "due: written again");

        // "bad" fails again and again: 1 s, 2 s, 4 s ... up to 30 s; "flaky" succeeds.
        q.forget("flaky");
        let mut now = t0 + s(500);
        let mut delays = Vec::new();
        for _ in 0..8 {
            q.failed("bad", now);
            let at = q.next_due().expect("due later");
            delays.push((at - now).as_millis());
            assert_eq!(q.take_due(at), ["bad"]);
            now = at;
        }
        assert_eq!(
            delays,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        q.failed("flaky", now);
        assert_eq!(
            q.next_due(),
            Some(now + s(500)),
            "its own backoff, from the start"
        );
        assert_eq!(q.len(), 2);
        q.forget("bad");
        q.forget("flaky");
        assert!(q.is_empty() && q.next_due().is_none());
    }
}
