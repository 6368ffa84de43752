//! The table of a session's pending calls, keyed by call id.
//!
//! Call ids are sequential per session, and calls mostly complete in the
//! order they were made, so the live ids lie in a short window: a ring of
//! slots indexed by `id` modulo its (power-of-two) length finds a call with
//! one masked index and one compare, where a hash map hashed, probed and
//! moved the entry through its groups. A call that stays pending while the
//! ids wrap the ring (a slow answer, a call whose answer never comes) is
//! moved to a hash map, the spill, when a newer call needs its slot; the
//! ring doubles instead (up to [`MAX_RING`] slots) when more than half of
//! it is live, so a busy client does not spill. The ring is allocated on the
//! first call; [`IdTable::shrink`] releases a grown one when nothing is
//! pending.
//!
//! Bounds: the table holds exactly the calls this end made and has not yet
//! completed (each leaves on its answer, its deadline or the session's end),
//! so its size is bounded by what the caller starts, never by the peer: an
//! answer can only remove an entry, and one with an unknown or stale id
//! (an id whose slot holds another call, or no call) finds nothing.

use std::hash::BuildHasherDefault;

use crate::lazy::LazyMap;
use crate::session::IdHasher;

/// The ring's first length (allocated on the first call).
const FIRST_RING: usize = 16;

/// The longest ring [`IdTable::shrink`] keeps when nothing is pending
/// (slots of about 64 bytes: 4 KiB).
const KEEP_RING: usize = 64;

/// The longest ring (slots of about 64 bytes: 64 KiB); calls beyond it that
/// are in flight at once go to the spill map.
pub(crate) const MAX_RING: usize = 1024;

/// Pending calls by id: a ring indexed by id, and a map for the stragglers.
pub(crate) struct IdTable<V> {
    /// Empty, or a power-of-two number of slots; slot `id & (len - 1)`.
    ring: Box<[Option<(u64, V)>]>,
    /// Entries pushed out of the ring by a newer id (or that collided when
    /// it grew); one pointer while empty (an idle session holds this table:
    /// issue 13's idle bytes).
    spill: LazyMap<u64, V, BuildHasherDefault<IdHasher>>,
    /// Entries in `ring` (the spill counts its own).
    in_ring: usize,
}

impl<V> Default for IdTable<V> {
    fn default() -> Self {
        IdTable {
            ring: Box::default(),
            spill: LazyMap::default(),
            in_ring: 0,
        }
    }
}

impl<V> IdTable<V> {
    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.in_ring + self.spill.len()
    }

    #[inline]
    fn slot(&self, id: u64) -> usize {
        (id as usize) & (self.ring.len() - 1)
    }

    /// Adds `v` under `id` (ids are unique: a session never reuses one).
    #[inline]
    pub(crate) fn insert(&mut self, id: u64, v: V) {
        if !self.ring.is_empty() {
            let i = self.slot(id);
            let slot = &mut self.ring[i];
            if slot.is_none() {
                // The common case: the slot's last call completed.
                *slot = Some((id, v));
                self.in_ring += 1;
                return;
            }
        }
        self.insert_slow(id, v);
    }

    /// [`IdTable::insert`] when the ring is not allocated yet or the slot
    /// is taken.
    #[cold]
    fn insert_slow(&mut self, id: u64, v: V) {
        if self.ring.is_empty() {
            self.ring = empty_ring(FIRST_RING);
        }
        let mut i = self.slot(id);
        if self.ring[i].is_some()
            && 2 * self.in_ring > self.ring.len()
            && self.ring.len() < MAX_RING
        {
            self.grow();
            i = self.slot(id);
        }
        if let Some((old, ov)) = self.ring[i].take() {
            // An older call still pending in this slot: it waits in the spill.
            self.in_ring -= 1;
            self.spill.insert(old, ov);
        }
        self.ring[i] = Some((id, v));
        self.in_ring += 1;
    }

    /// Doubles the ring; an entry that collides in the new one (its id and
    /// a newer one differ by a multiple of the new length) goes to the spill.
    #[cold]
    fn grow(&mut self) {
        let n = self.ring.len() * 2;
        let old = std::mem::replace(&mut self.ring, empty_ring(n));
        self.in_ring = 0;
        for (id, v) in Vec::from(old).into_iter().flatten() {
            let i = self.slot(id);
            match &self.ring[i] {
                None => {
                    self.ring[i] = Some((id, v));
                    self.in_ring += 1;
                }
                Some(_) => {
                    self.spill.insert(id, v);
                }
            }
        }
    }

    /// Removes and returns the entry of `id` (None for an unknown id).
    #[inline]
    pub(crate) fn remove(&mut self, id: u64) -> Option<V> {
        if !self.ring.is_empty() {
            let i = self.slot(id);
            if matches!(&self.ring[i], Some((k, _)) if *k == id) {
                self.in_ring -= 1;
                return self.ring[i].take().map(|(_, v)| v);
            }
        }
        if self.spill.is_empty() {
            None
        } else {
            self.spill.remove(&id)
        }
    }

    /// The entry of `id`.
    pub(crate) fn get(&self, id: u64) -> Option<&V> {
        if !self.ring.is_empty() {
            if let Some((k, v)) = &self.ring[self.slot(id)] {
                if *k == id {
                    return Some(v);
                }
            }
        }
        self.spill.get(&id)
    }

    /// The entry of `id`, to change it.
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        if !self.ring.is_empty() {
            let i = self.slot(id);
            if matches!(&self.ring[i], Some((k, _)) if *k == id) {
                return self.ring[i].as_mut().map(|(_, v)| v);
            }
        }
        self.spill.get_mut(&id)
    }

    /// Takes every entry out, in id order.
    pub(crate) fn drain_sorted(&mut self) -> Vec<(u64, V)> {
        let mut all: Vec<(u64, V)> = Vec::with_capacity(self.len());
        for s in self.ring.iter_mut() {
            if let Some(e) = s.take() {
                all.push(e);
            }
        }
        self.in_ring = 0;
        all.extend(self.spill.take_all());
        all.sort_unstable_by_key(|e| e.0);
        all
    }

    /// Releases the spill, and a ring grown past [`KEEP_RING`] slots, when
    /// nothing is pending. A small ring stays (as the hash map it replaced
    /// kept its capacity): a client whose calls all completed at a batch's
    /// end (16 in flight, answered together) would otherwise allocate and
    /// regrow its ring for every round of calls.
    pub(crate) fn shrink(&mut self) {
        if self.len() == 0 {
            if self.ring.len() > KEEP_RING {
                self.ring = Box::default();
            }
            self.spill.clear();
        }
    }

    /// Slots allocated in the ring, and entries in the spill (tests).
    #[cfg(test)]
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.ring.len(), self.spill.len())
    }
}

fn empty_ring<V>(n: usize) -> Box<[Option<(u64, V)>]> {
    (0..n).map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_calls_stay_in_a_small_ring() {
        let mut t: IdTable<u64> = IdTable::default();
        for id in 1..10_000u64 {
            t.insert(id, id * 3);
            if id > 8 {
                assert_eq!(t.remove(id - 8), Some((id - 8) * 3));
            }
        }
        assert_eq!(t.len(), 8);
        assert_eq!(t.shape(), (FIRST_RING, 0));
    }

    #[test]
    fn a_call_that_never_completes_spills_without_growing_the_ring() {
        let mut t: IdTable<u64> = IdTable::default();
        t.insert(1, 1); // never answered
        for id in 2..5_000u64 {
            t.insert(id, id);
            assert_eq!(t.remove(id), Some(id));
        }
        assert_eq!(t.shape(), (FIRST_RING, 1));
        assert_eq!(t.get(1), Some(&1));
        assert_eq!(t.remove(1), Some(1));
        assert_eq!(t.len(), 0);
        t.shrink();
        assert_eq!(t.shape(), (FIRST_RING, 0), "a small ring is kept");
    }

    #[test]
    fn many_in_flight_grow_the_ring_up_to_its_bound_then_spill() {
        let mut t: IdTable<u64> = IdTable::default();
        let n = 3 * MAX_RING as u64;
        for id in 1..=n {
            t.insert(id, id);
        }
        assert_eq!(t.len(), n as usize);
        assert_eq!(t.shape().0, MAX_RING);
        // Forged and stale ids find nothing and change nothing.
        for forged in [0, n + 1, n + MAX_RING as u64, u64::MAX] {
            assert_eq!(t.remove(forged), None);
            assert!(t.get(forged).is_none());
        }
        assert_eq!(t.len(), n as usize);
        for id in (1..=n).rev() {
            assert_eq!(t.get_mut(id).copied(), Some(id));
            assert_eq!(t.remove(id), Some(id), "id {id}");
            assert_eq!(t.remove(id), None, "a second answer to {id}");
        }
        assert_eq!(t.len(), 0);
        t.shrink();
        assert_eq!(t.shape(), (0, 0), "a grown ring is released");
    }

    #[test]
    fn drain_gives_every_entry_in_id_order() {
        let mut t: IdTable<u64> = IdTable::default();
        for id in [5u64, 1, 21, 37, 2, 3000] {
            t.insert(id, id + 1);
        }
        let got: Vec<u64> = t.drain_sorted().into_iter().map(|e| e.0).collect();
        assert_eq!(got, [1, 2, 5, 21, 37, 3000]);
        assert_eq!(t.len(), 0);
    }
}
