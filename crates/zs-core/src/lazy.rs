//! [`LazyMap`]: a map that takes one pointer until its first entry.
//!
//! Most sessions never stage a batch or move a BigStream, yet each of those
//! maps costs 32-48 bytes inline in every session (issue 13's idle-bytes goal,
//! session 12). `LazyMap` keeps the map behind an `Option<Box<_>>` that is
//! allocated on the first insert and dropped by [`LazyMap::clear`]; it offers
//! the few `HashMap` methods the session uses, with the same names and
//! meaning, so the code reads as before.

use std::borrow::Borrow;
use std::collections::hash_map::{Entry, HashMap, Iter, Keys, Values};
use std::hash::{BuildHasher, Hash};
use std::ops::Index;

/// A `HashMap<K, V, S>` that allocates nothing (and takes 8 bytes) while empty.
// The box is the point: an empty `HashMap` takes 32-48 bytes inline, the box 8.
#[allow(clippy::box_collection)]
pub(crate) struct LazyMap<K, V, S = std::collections::hash_map::RandomState>(
    Option<Box<HashMap<K, V, S>>>,
);

impl<K, V, S> Default for LazyMap<K, V, S> {
    fn default() -> Self {
        LazyMap(None)
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> LazyMap<K, V, S> {
    /// The map, made on first use.
    fn map(&mut self) -> &mut HashMap<K, V, S> {
        self.0.get_or_insert_with(Default::default)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub(crate) fn contains_key<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.0.as_ref().is_some_and(|m| m.contains_key(k))
    }

    pub(crate) fn get<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.0.as_ref()?.get(k)
    }

    pub(crate) fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.0.as_mut()?.get_mut(k)
    }

    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.map().insert(k, v)
    }

    pub(crate) fn entry(&mut self, k: K) -> Entry<'_, K, V> {
        self.map().entry(k)
    }

    /// Removes `k`; the map's memory goes with its last entry.
    pub(crate) fn remove<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let m = self.0.as_mut()?;
        let v = m.remove(k);
        if m.is_empty() {
            self.0 = None;
        }
        v
    }

    pub(crate) fn keys(&self) -> std::iter::Flatten<std::option::IntoIter<Keys<'_, K, V>>> {
        self.0.as_ref().map(|m| m.keys()).into_iter().flatten()
    }

    pub(crate) fn values(&self) -> std::iter::Flatten<std::option::IntoIter<Values<'_, K, V>>> {
        self.0.as_ref().map(|m| m.values()).into_iter().flatten()
    }

    pub(crate) fn iter(&self) -> std::iter::Flatten<std::option::IntoIter<Iter<'_, K, V>>> {
        self.0.as_ref().map(|m| m.iter()).into_iter().flatten()
    }

    /// Takes every entry out (in no order) and releases the map.
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = (K, V)> {
        self.0.take().into_iter().flat_map(|m| m.into_iter())
    }

    /// Empties the map and releases its memory.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }
}

impl<K: Eq + Hash + Borrow<Q>, Q: Eq + Hash + ?Sized, V, S: BuildHasher> Index<&Q>
    for LazyMap<K, V, S>
{
    type Output = V;

    fn index(&self, k: &Q) -> &V {
        match &self.0 {
            Some(m) => &m[k],
            None => panic!("LazyMap: no entry for the key"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_costs_one_pointer_and_no_allocation() {
        assert_eq!(std::mem::size_of::<LazyMap<u64, [u8; 64]>>(), 8);
        let mut m: LazyMap<u64, u32> = LazyMap::default();
        assert!(m.0.is_none() && m.is_empty());
        assert_eq!(m.len(), 0);
        assert!(!m.contains_key(&1) && m.get_mut(&1).is_none() && m.remove(&1).is_none());
        m.insert(1, 10);
        *m.entry(2).or_insert(0) += 5;
        assert_eq!((m.len(), m[&1], m[&2]), (2, 10, 5));
        m.remove(&1);
        assert!(m.0.is_some());
        m.remove(&2);
        assert!(m.0.is_none(), "the last removal releases the map");
        m.insert(3, 3);
        m.clear();
        assert!(m.0.is_none());
    }

    proptest! {
        /// Behaves as a `HashMap` under any sequence of the session's operations.
        #[test]
        fn same_as_hashmap(ops in proptest::collection::vec((0u8..5, 0u64..8, any::<u32>()), 0..64)) {
            let mut a: LazyMap<u64, u32> = LazyMap::default();
            let mut b: HashMap<u64, u32> = HashMap::new();
            for (op, k, v) in ops {
                match op {
                    0 => prop_assert_eq!(a.insert(k, v), b.insert(k, v)),
                    1 => prop_assert_eq!(a.remove(&k), b.remove(&k)),
                    2 => { *a.entry(k).or_insert(0) ^= v; *b.entry(k).or_insert(0) ^= v; }
                    3 if a.get(&k) != b.get(&k) => prop_assert!(false, "get differs"),
                    3 => {
                        if let Some(x) = a.get_mut(&k) {
                            *x = x.wrapping_add(v);
                        }
                        if let Some(x) = b.get_mut(&k) {
                            *x = x.wrapping_add(v);
                        }
                    }
                    _ => { a.clear(); b.clear(); }
                }
                prop_assert_eq!(a.len(), b.len());
                prop_assert_eq!(a.is_empty(), b.is_empty());
                prop_assert_eq!(a.contains_key(&k), b.contains_key(&k));
                let mut ka: Vec<u64> = a.keys().copied().collect();
                let mut kb: Vec<u64> = b.keys().copied().collect();
                ka.sort_unstable(); kb.sort_unstable();
                prop_assert_eq!(ka, kb);
                let sa: u64 = a.values().map(|&x| u64::from(x)).sum();
                let sb: u64 = b.values().map(|&x| u64::from(x)).sum();
                prop_assert_eq!(sa, sb);
            }
        }
    }
}
