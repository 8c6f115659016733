//! Per-core timers: a min-heap of deadlines keyed by what must be woken, so a tick visits
//! only what is due, never every peer. A key holds at most one live entry: scheduling a
//! later deadline keeps the earlier entry (the owner re-arms when it fires early), so the
//! heap stays about one entry per key however often peers are driven.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hash;
use std::time::Instant;

use rustc_hash::FxHashMap;

pub struct Timers<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    /// Keys are the core's own ids, never chosen by a remote party: a fast unkeyed hash.
    armed: FxHashMap<K, Instant>,
}

impl<K: Copy + Eq + Hash + Ord> Timers<K> {
    pub fn new() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            armed: FxHashMap::default(),
        }
    }

    /// Ensures `key` is woken at or before `at`. Returns true if this became the earliest
    /// deadline of all (the sleeping timer task must be woken earlier).
    pub fn schedule(&mut self, key: K, at: Instant) -> bool {
        if let Some(existing) = self.armed.get(&key)
            && *existing <= at
        {
            return false;
        }
        let earliest = self.next_deadline().is_none_or(|n| at < n);
        self.armed.insert(key, at);
        self.heap.push(Reverse((at, key)));
        earliest
    }

    /// [`Timers::schedule`] for an owner that keeps, in `armed`, the instant its key is
    /// armed for, and sets it to `None` when the key pops: a later instant, what most
    /// re-arms ask for, is then turned away without a lookup in the map.
    pub fn schedule_mirrored(&mut self, key: K, at: Instant, armed: &mut Option<Instant>) -> bool {
        if armed.is_some_and(|a| a <= at) {
            return false;
        }
        *armed = Some(at);
        self.schedule(key, at)
    }

    /// Forgets a key (its heap entry is dropped lazily when it surfaces).
    pub fn cancel(&mut self, key: K) {
        self.armed.remove(&key);
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.heap.peek() {
            if self.armed.get(key) == Some(at) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }

    /// Pops one key whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        while let Some(Reverse((at, key))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if self.armed.get(&key) == Some(&at) {
                self.armed.remove(&key);
                return Some(key);
            }
        }
        None
    }

    /// Number of armed keys.
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }
}

impl<K: Copy + Eq + Hash + Ord> Default for Timers<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        assert!(timers.schedule(2u32, t0 + Duration::from_millis(20)));
        assert!(timers.schedule(1u32, t0 + Duration::from_millis(10)));
        assert!(!timers.schedule(3u32, t0 + Duration::from_millis(30)));
        assert_eq!(timers.pop_due(t0), None);
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(25)), Some(1));
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(25)), Some(2));
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(25)), None);
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_millis(30)));
    }

    #[test]
    fn later_reschedule_keeps_earlier_entry_and_heap_stays_small() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        timers.schedule(7u32, t0 + Duration::from_millis(5));
        for i in 0..10_000 {
            timers.schedule(7u32, t0 + Duration::from_millis(10 + i));
        }
        assert_eq!(timers.heap.len(), 1);
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(5)), Some(7));
        assert!(timers.is_empty());
    }

    #[test]
    fn a_mirrored_key_pops_at_the_earliest_instant_asked_for() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut timers = Timers::new();
        let mut armed = None;
        assert!(timers.schedule_mirrored(1u32, ms(40), &mut armed));
        assert!(!timers.schedule_mirrored(1u32, ms(60), &mut armed));
        assert_eq!(armed, Some(ms(40)));
        // An earlier instant replaces the armed one, and is the heap's earliest.
        assert!(timers.schedule_mirrored(1u32, ms(20), &mut armed));
        assert_eq!(armed, Some(ms(20)));
        assert_eq!(timers.next_deadline(), Some(ms(20)));
        assert_eq!(timers.pop_due(ms(19)), None);
        assert_eq!(timers.pop_due(ms(20)), Some(1));
        armed = None;
        assert_eq!(
            timers.pop_due(ms(100)),
            None,
            "the superseded entries are dropped"
        );
        // Once popped (and the mirror cleared), a later instant arms it again.
        assert!(timers.schedule_mirrored(1u32, ms(70), &mut armed));
        assert_eq!(timers.pop_due(ms(70)), Some(1));
        assert!(timers.is_empty());
    }

    #[test]
    fn earlier_reschedule_supersedes_and_cancel_removes() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        timers.schedule(1u32, t0 + Duration::from_millis(50));
        timers.schedule(1u32, t0 + Duration::from_millis(10));
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(60)), Some(1));
        assert_eq!(
            timers.pop_due(t0 + Duration::from_millis(60)),
            None,
            "stale entry skipped"
        );
        timers.schedule(2u32, t0);
        timers.cancel(2);
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(1)), None);
        assert_eq!(timers.next_deadline(), None);
    }
}
