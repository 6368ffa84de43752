//! The id → location index: a dense vector for the recent, densely used id range and
//! an ordered map for the ids below it, so memory follows the live records, not the
//! highest id ever allocated (ids are never reused, so old survivors end up sparse).

use std::collections::BTreeMap;

use crate::db::Loc;

/// Slots the dense part may hold beyond four per live record before it is given up.
const DENSE_SLACK: u64 = 64;

/// Estimated heap bytes of one entry of the sparse map (key, value, node overhead).
const SPARSE_ENTRY_BYTES: usize = 48;

/// Live record locations by id.
///
/// Invariant: every key of `sparse` is below `base`; `dense[i]` is the slot of id
/// `base + i` (absent slots have `off == 0`); `dense_live` counts present slots.
#[derive(Debug)]
pub(crate) struct IdIndex {
    base: u64,
    dense: Vec<Loc>,
    dense_live: u64,
    sparse: BTreeMap<u64, Loc>,
}

impl Default for IdIndex {
    fn default() -> Self {
        IdIndex {
            base: 1,
            dense: Vec::new(),
            dense_live: 0,
            sparse: BTreeMap::new(),
        }
    }
}

/// True if a dense range of `span` ids with `live` present is worth a vector.
fn dense_enough(span: u64, live: u64) -> bool {
    span <= live.saturating_mul(4).saturating_add(DENSE_SLACK)
}

impl IdIndex {
    /// Builds an index from entries in ascending id order (each id once), choosing the
    /// largest dense range that is at least a quarter full.
    pub(crate) fn from_sorted(entries: Vec<(u64, Loc)>) -> IdIndex {
        let mut idx = IdIndex::default();
        let Some(&(max, _)) = entries.last() else {
            return idx;
        };
        let n = entries.len() as u64;
        let split = entries
            .iter()
            .enumerate()
            .position(|(i, (id, _))| dense_enough(max - id + 1, n - i as u64))
            .unwrap_or(entries.len());
        let mut it = entries.into_iter();
        idx.sparse = it.by_ref().take(split).collect();
        let rest: Vec<(u64, Loc)> = it.collect();
        if let Some(&(first, _)) = rest.first() {
            idx.base = first;
            idx.dense = vec![Loc::default(); (max - first + 1) as usize];
            for (id, loc) in rest {
                idx.dense[(id - first) as usize] = loc;
                idx.dense_live += 1;
            }
        } else {
            idx.base = max + 1;
        }
        idx
    }

    /// Re-chooses the dense range (after recovery or compaction).
    pub(crate) fn rebuild(&mut self) {
        let entries: Vec<(u64, Loc)> = self.iter().collect();
        *self = IdIndex::from_sorted(entries);
    }

    fn dense_slot(&self, id: u64) -> Option<usize> {
        let i = id.checked_sub(self.base)?;
        (i < self.dense.len() as u64).then_some(i as usize)
    }

    /// The location of live record `id`.
    pub(crate) fn get(&self, id: u64) -> Option<Loc> {
        match self.dense_slot(id) {
            Some(i) => Some(self.dense[i]).filter(Loc::present),
            None => self.sparse.get(&id).copied(),
        }
    }

    /// Sets (or with `None` removes) the location of `id`; returns the previous one.
    pub(crate) fn set(&mut self, id: u64, loc: Option<Loc>) -> Option<Loc> {
        let loc = loc.filter(Loc::present);
        if let Some(i) = self.dense_slot(id) {
            let old = Some(self.dense[i]).filter(Loc::present);
            self.dense[i] = loc.unwrap_or_default();
            self.dense_live = self.dense_live + u64::from(loc.is_some()) - u64::from(old.is_some());
            let span = self.dense.len() as u64;
            if !dense_enough(span, self.dense_live.saturating_mul(4)) {
                // under a sixteenth full (or empty): its records move to the map and
                // the vector is freed; later ids start a new one
                self.spill();
            }
            return old;
        }
        if id < self.base {
            return match loc {
                Some(l) => self.sparse.insert(id, l),
                None => self.sparse.remove(&id),
            };
        }
        // above the dense range
        let l = loc?;
        if self.dense.is_empty() {
            self.base = id;
            self.dense.push(l);
            self.dense_live = 1;
            return None;
        }
        let span = id - self.base + 1;
        if dense_enough(span, self.dense_live + 1) {
            self.dense.resize(span as usize, Loc::default());
        } else {
            // the vector would be mostly empty: its records move to the map, and a new
            // dense range starts at `id`
            self.spill();
            self.base = id;
            self.dense.push(Loc::default());
        }
        let i = (id - self.base) as usize;
        self.dense[i] = l;
        self.dense_live += 1;
        None
    }

    /// Moves the dense part's records into the map and frees the vector.
    fn spill(&mut self) {
        let base = self.base;
        let dense = std::mem::take(&mut self.dense);
        self.base = base.saturating_add(dense.len() as u64);
        self.dense_live = 0;
        for (i, l) in dense.into_iter().enumerate() {
            if l.present() {
                self.sparse.insert(base + i as u64, l);
            }
        }
    }

    /// Live entries in ascending id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, Loc)> + '_ {
        let base = self.base;
        self.sparse.iter().map(|(k, v)| (*k, *v)).chain(
            self.dense
                .iter()
                .enumerate()
                .filter(|(_, l)| l.present())
                .map(move |(i, l)| (base + i as u64, *l)),
        )
    }

    /// The smallest live id `>= id`.
    pub(crate) fn next_from(&self, id: u64) -> Option<u64> {
        if id < self.base {
            if let Some((k, _)) = self.sparse.range(id..).next() {
                return Some(*k);
            }
        }
        let start = id.saturating_sub(self.base) as usize;
        self.dense
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, l)| l.present())
            .map(|(i, _)| self.base + i as u64)
    }

    /// The largest live id `<= id`.
    pub(crate) fn prev_from(&self, id: u64) -> Option<u64> {
        if id >= self.base && !self.dense.is_empty() {
            let top = ((id - self.base) as usize).min(self.dense.len() - 1);
            if let Some(i) = (0..=top).rev().find(|&i| self.dense[i].present()) {
                return Some(self.base + i as u64);
            }
        }
        self.sparse.range(..=id).next_back().map(|(k, _)| *k)
    }

    /// Approximate heap bytes held by the index.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.dense.capacity() * std::mem::size_of::<Loc>() + self.sparse.len() * SPARSE_ENTRY_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(off: u64) -> Option<Loc> {
        Some(Loc {
            off,
            len: 1,
            kind: 0,
            flags: 0,
        })
    }

    /// The index against a plain map, over a pseudo-random mix of operations.
    #[test]
    fn matches_a_map() {
        let mut idx = IdIndex::default();
        let mut model = BTreeMap::new();
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = 1u64;
        for step in 0..20_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let id = match rng % 10 {
                0..=4 => {
                    next += 1;
                    next - 1
                }
                5 => {
                    next += 1 << 20; // a jump of the id floor
                    next
                }
                _ => 1 + rng % next,
            };
            let l = if rng % 7 < 2 { None } else { loc(step + 1) };
            assert_eq!(idx.set(id, l), model.get(&id).copied(), "step {step}");
            match l {
                Some(l) => model.insert(id, l),
                None => model.remove(&id),
            };
            if step % 5000 == 0 {
                idx.rebuild();
            }
        }
        let got: Vec<(u64, Loc)> = idx.iter().collect();
        let want: Vec<(u64, Loc)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(got, want);
        for probe in [0, 1, 5, 1000, next / 2, next, next + 5] {
            assert_eq!(idx.get(probe), model.get(&probe).copied());
            assert_eq!(
                idx.next_from(probe),
                model.range(probe..).next().map(|(k, _)| *k)
            );
            assert_eq!(
                idx.prev_from(probe),
                model.range(..=probe).next_back().map(|(k, _)| *k)
            );
        }
        // memory follows the live records, not the id range (> 2^30 here)
        assert!(next > 1 << 30);
        assert!(idx.heap_bytes() <= 16 * 16 * 2 * model.len() + 4096);
        idx.rebuild();
        assert!(idx.heap_bytes() <= 4 * 16 * model.len() + 48 * model.len() + 2048);
    }

    #[test]
    fn far_ids_stay_small() {
        let mut idx = IdIndex::default();
        idx.set(3, loc(8));
        idx.set(1 << 40, loc(16));
        idx.set((1 << 40) + 1, loc(24));
        assert!(idx.heap_bytes() < 1024);
        idx.rebuild();
        assert!(idx.heap_bytes() < 1024);
        assert_eq!(idx.get(1 << 40), loc(16));
        assert_eq!(idx.get(3), loc(8));
        assert_eq!(idx.next_from(4), Some(1 << 40));
        assert_eq!(idx.prev_from((1 << 40) - 1), Some(3));
    }
}
