//! A generational slab: stable small keys for the call and worker tables.
//!
//! Keys carry a generation so that a stale key — a late completion for a call
//! that already timed out, a message from a worker that was replaced — is
//! recognised and rejected instead of hitting whatever reuses the slot.

/// A key into a [`Slab`]: slot index plus the slot's generation at insert time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// Packs the key into 56 bits (index: 32, generation: low 24), leaving the top
    /// byte for the caller (the engine puts its core-loop index there).
    pub fn to_u56(self) -> u64 {
        (u64::from(self.generation & 0x00ff_ffff) << 32) | u64::from(self.index)
    }

    /// Unpacks [`to_u56`](Self::to_u56); the top byte is ignored.
    pub fn from_u56(raw: u64) -> Self {
        Self {
            index: raw as u32,
            generation: ((raw >> 32) & 0x00ff_ffff) as u32,
        }
    }

    /// The slot index (dense, small: usable as an epoll token).
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// The key of the value in slot `index` at `generation`; `index` is a
    /// position in the entries, which `insert` keeps below 2^32.
    fn of_slot(index: usize, generation: u32) -> Self {
        Self {
            index: index as u32,
            generation,
        }
    }
}

enum Entry<T> {
    Occupied {
        generation: u32,
        value: T,
    },
    Vacant {
        generation: u32,
        next_free: Option<u32>,
    },
}

/// A slab with generational keys; O(1) insert, get and remove, no allocation
/// once it has grown to its working size.
pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free_head: Option<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free_head: None,
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// An empty slab with room for `capacity` values before it reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            free_head: None,
            len: 0,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slab is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts `value` and returns its key.
    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        match self.free_head {
            Some(index) => {
                let entry = &mut self.entries[index as usize];
                let Entry::Vacant {
                    generation,
                    next_free,
                } = *entry
                else {
                    unreachable!("free list points at an occupied slot")
                };
                self.free_head = next_free;
                // Generations are compared in 24 bits on the wire (see `to_u56`).
                let generation = generation.wrapping_add(1) & 0x00ff_ffff;
                *entry = Entry::Occupied { generation, value };
                Key { index, generation }
            }
            None => {
                let index = u32::try_from(self.entries.len()).expect("slab has 2^32 entries");
                self.entries.push(Entry::Occupied {
                    generation: 0,
                    value,
                });
                Key {
                    index,
                    generation: 0,
                }
            }
        }
    }

    /// The value under `key`, if the key is current.
    pub fn get(&self, key: Key) -> Option<&T> {
        match self.entries.get(key.index as usize)? {
            Entry::Occupied { generation, value } if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    /// The value under `key`, if the key is current.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.entries.get_mut(key.index as usize)? {
            Entry::Occupied { generation, value } if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    /// Removes and returns the value under `key`, if the key is current.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let entry = self.entries.get_mut(key.index as usize)?;
        match entry {
            Entry::Occupied { generation, .. } if *generation == key.generation => {
                let vacant = Entry::Vacant {
                    generation: key.generation,
                    next_free: self.free_head,
                };
                let Entry::Occupied { value, .. } = std::mem::replace(entry, vacant) else {
                    unreachable!()
                };
                self.free_head = Some(key.index);
                self.len -= 1;
                Some(value)
            }
            _ => None,
        }
    }

    /// The current key of the value at slot `index`, if it is occupied.
    pub fn key_at(&self, index: usize) -> Option<Key> {
        match self.entries.get(index)? {
            Entry::Occupied { generation, .. } => Some(Key::of_slot(index, *generation)),
            Entry::Vacant { .. } => None,
        }
    }

    /// Iterates over `(key, &value)`.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Occupied { generation, value } => {
                    Some((Key::of_slot(i, *generation), value))
                }
                Entry::Vacant { .. } => None,
            })
    }

    /// Iterates over `(key, &mut value)`.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Occupied { generation, value } => {
                    Some((Key::of_slot(i, *generation), value))
                }
                Entry::Vacant { .. } => None,
            })
    }

    /// Keys of all values (a snapshot, so the slab can be mutated while walking it).
    pub fn keys_into(&self, out: &mut Vec<Key>) {
        out.clear();
        out.extend(self.iter().map(|(k, _)| k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_are_rejected() {
        let mut slab = Slab::default();
        let a = slab.insert("a");
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b");
        assert_eq!(a.index(), b.index(), "slot is reused");
        assert_eq!(slab.get(a), None, "old key must not see the new value");
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.len(), 1);
    }

    #[test]
    fn key_packing_round_trips() {
        let mut slab = Slab::default();
        let mut keys = Vec::new();
        for i in 0..1000 {
            keys.push(slab.insert(i));
        }
        for k in &keys[..500] {
            slab.remove(*k);
        }
        for i in 0..500 {
            keys.push(slab.insert(i));
        }
        for k in &keys[500..] {
            let raw = k.to_u56() | (7u64 << 56);
            assert_eq!(Key::from_u56(raw), *k);
            assert!(slab.get(Key::from_u56(raw)).is_some());
        }
        assert_eq!(slab.iter().count(), 1000);
    }
}
