//! [`VecMap`] and [`VecSet`]: ordered maps and sets in one sorted `Vec`.
//!
//! The subset of `BTreeMap`/`BTreeSet` the client core and the hook use, with the same
//! order (iteration by key), for the small collections a connection holds: its
//! subscriptions, publishes in flight and their outcomes, outstanding requests and
//! directs. `BTreeMap`'s node code (insert, remove, merging and stealing between nodes)
//! and `HashMap`'s tables are compiled once per key and value type; over the seven maps
//! and sets of each kind they cost the demo's wasm 41 KB and 14 KB (brotli: 11 and 4 KB);
//! a sorted `Vec` is a binary search and a memmove (docs/benchmarks.md).
//! Lookups are O(log n); inserts and removes O(n), fine for the hundreds these hold
//! (inserting in key order, as publish sequence numbers arrive, appends).

use std::borrow::Borrow;

/// A map ordered by key, kept as a sorted `Vec` of pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> VecMap<K, V> {
    /// An empty map (allocates nothing).
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Entries in key order, values mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The entry with the smallest key.
    pub fn first(&self) -> Option<(&K, &V)> {
        self.entries.first().map(|(k, v)| (k, v))
    }

    /// Removes and returns the entry with the smallest key.
    pub fn pop_first(&mut self) -> Option<(K, V)> {
        (!self.entries.is_empty()).then(|| self.entries.remove(0))
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value for `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value for `key`, mutable.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// The value for `key`, inserting `make()` first when there is none.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key, make()));
                i
            }
        };
        &mut self.entries[i].1
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a mut VecMap<K, V> {
    type Item = (&'a K, &'a mut V);
    type IntoIter =
        std::iter::Map<std::slice::IterMut<'a, (K, V)>, fn(&'a mut (K, V)) -> (&'a K, &'a mut V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }
}

/// A set ordered by value, kept as a sorted `Vec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecSet<K>(VecMap<K, ()>);

impl<K> Default for VecSet<K> {
    fn default() -> Self {
        Self(VecMap::new())
    }
}

impl<K: Ord> VecSet<K> {
    /// An empty set (allocates nothing).
    pub const fn new() -> Self {
        Self(VecMap::new())
    }

    /// Adds `key`; false if it was there already.
    pub fn insert(&mut self, key: K) -> bool {
        self.0.insert(key, ()).is_none()
    }

    /// Removes `key`; false if it was not there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.0.remove(key).is_some()
    }

    /// Whether `key` is there.
    pub fn contains<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.0.contains_key(key)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Keys in order.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.0.keys()
    }
}

impl<K: Ord> FromIterator<K> for VecSet<K> {
    fn from_iter<I: IntoIterator<Item = K>>(iter: I) -> Self {
        let mut set = Self::new();
        for k in iter {
            set.insert(k);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u16),
        Remove(u8),
        GetOrInsert(u8, u16),
        PopFirst,
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => any::<u8>().prop_map(Op::Remove),
            2 => (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
            2 => Just(Op::PopFirst),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Every operation answers as `BTreeMap` / `BTreeSet` does, and iteration keeps
        /// their order.
        #[test]
        fn behaves_like_the_btree_collections(ops in proptest::collection::vec(op(), 0..200)) {
            let mut ours = VecMap::new();
            let mut theirs = BTreeMap::new();
            let mut set = VecSet::new();
            let mut tset = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        prop_assert_eq!(ours.insert(k, v), theirs.insert(k, v));
                        prop_assert_eq!(set.insert(k), tset.insert(k));
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(ours.remove(&k), theirs.remove(&k));
                        prop_assert_eq!(set.remove(&k), tset.remove(&k));
                    }
                    Op::GetOrInsert(k, v) => {
                        // Wrapping: a value of u16::MAX is a valid input, not an overflow.
                        let a = ours.get_or_insert_with(k, || v);
                        *a = a.wrapping_add(1);
                        let b = theirs.entry(k).or_insert(v);
                        *b = b.wrapping_add(1);
                    }
                    Op::PopFirst => prop_assert_eq!(ours.pop_first(), theirs.pop_first()),
                    Op::Clear => {
                        ours.clear();
                        theirs.clear();
                    }
                }
                prop_assert_eq!(ours.len(), theirs.len());
                prop_assert_eq!(ours.is_empty(), theirs.is_empty());
                prop_assert_eq!(ours.first(), theirs.first_key_value());
                prop_assert!(ours.iter().eq(theirs.iter()));
                prop_assert!(set.iter().eq(tset.iter()));
                for k in [0u8, 7, 100, 255] {
                    prop_assert_eq!(ours.get(&k), theirs.get(&k));
                    prop_assert_eq!(ours.contains_key(&k), theirs.contains_key(&k));
                    prop_assert_eq!(set.contains(&k), tset.contains(&k));
                }
            }
        }
    }
}
