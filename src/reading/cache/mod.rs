//! The hot-entity cache: one per shard, owned by its thread, so a read never waits on a lock.
//!
//! Feature traffic is power-law: a few entities take a large share of reads. Eviction is S3-FIFO
//! (Yang et al., SOSP'23): new entries go to a small FIFO (a tenth of the bytes); only those read
//! again while there move to the main FIFO, so one-hit wonders and scans pass through without
//! displacing the hot set. A ghost filter remembers keys recently dropped from the small FIFO, and
//! a key that comes back soon goes straight to main. Hits only bump a 2-bit counter.
//!
//! Bounded in bytes: every entry is charged its key, its row and [`ENTRY_OVERHEAD`]. Rows are
//! stored as compact copies, never as the `Bytes` the backend hands out (those pin its whole read
//! buffer), and a hit lends the row to the caller, who copies it into the reply: no refcount, no
//! allocation per hit. Every entry expires after its view's hot-cache TTL, so rows written behind
//! the proxy's back are picked up within that TTL; writes through the proxy invalidate at once.
//! An expired entry is never served, but it keeps its place until the store's answer refreshes it
//! (the usual case: a hot key expires, misses once and is read again), so a refresh costs a
//! compare instead of a removal, an allocation and another entry's eviction.
//!
//! Inserts are where a miss costs most: each touches a few cache lines nobody has read lately.
//! So an insert evicts first and reuses the victim's buffer when it is the same size (a view's
//! rows are), and the ghost is a direct-mapped array of fingerprints (one line per lookup), not
//! a list and a hash set.
//!
//! Lookups come in batches ([`HotCache::get_many`]): a probe chases up to three cache lines that
//! are rarely in the CPU's cache (the table's bucket, the slot, the key and row), so a batch runs
//! each stage for every key before the next, prefetching what the next stage reads; the memory
//! misses of a hundred keys then overlap instead of following one another.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

mod batch;
mod evict;
mod ghost;
mod table;

use batch::prefetch;
pub use batch::{KeyList, Probe};
use ghost::Ghost;
use table::Table;

/// Bytes charged per entry beyond its key and row: the slot, the slot vector's growth by
/// doubling, the index's buckets, the FIFO position, the ghost's places, and the allocator's
/// rounding of the key-and-row buffer. `cargo bench --bench cache_hit_ratio` counts the bytes really allocated
/// (benches/RESULTS.md); 176 keeps the byte bound true with room to spare.
pub const ENTRY_OVERHEAD: usize = 176;

/// What a hit lends: the row, borrowed from the cache until the next call that changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit<'a> {
    pub computed_at_ms: u64,
    pub row: &'a [u8],
}

/// Counts kept by the cache itself; the shard publishes them to its stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    /// Entries admitted into the cache (small or main FIFO).
    pub admissions: u64,
    /// Entries dropped from the small FIFO without a second read: one-hit wonders, scan traffic.
    pub rejections: u64,
    /// Entries evicted from the main FIFO to make room.
    pub evictions: u64,
    pub expirations: u64,
    pub invalidations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Slot {
    /// Key then row, in one allocation.
    data: Box<[u8]>,
    key_len: usize,
    hash: u64,
    computed_at_ms: u64,
    expires_at: Instant,
    /// Reads since admission or the last pass of the eviction hand, capped at 3.
    freq: u8,
    queue: Queue,
    /// Bumped when the slot is freed, so queue positions that point to an old occupant are
    /// recognised and skipped.
    generation: u32,
    live: bool,
    /// A lookup has found this entry expired (and counted it): it waits for a refresh.
    expired: bool,
}

impl Slot {
    fn key(&self) -> &[u8] {
        // A freed slot holds no data: its key is empty, never a panic.
        self.data.get(..self.key_len).unwrap_or_default()
    }

    fn charge(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// A byte-bounded S3-FIFO cache of rows by cache key (the reading stage makes it from the view
/// id and the entity key).
pub struct HotCache {
    capacity: usize,
    small_target: usize,
    table: Table,
    slots: Vec<Slot>,
    free: Vec<u32>,
    small: VecDeque<(u32, u32)>,
    main: VecDeque<(u32, u32)>,
    small_bytes: usize,
    main_bytes: usize,
    /// Queue positions whose slot was freed by invalidation; compacted when they pile up.
    stale_positions: usize,
    ghost: Ghost,
    hasher: foldhash::fast::FixedState,
    counts: CacheCounts,
}

fn hash_of(hasher: &foldhash::fast::FixedState, key: &[u8]) -> u64 {
    hasher.hash_one(key)
}

impl HotCache {
    /// A cache of at most `capacity_bytes`; 0 disables it.
    pub fn new(capacity_bytes: usize) -> HotCache {
        HotCache {
            capacity: capacity_bytes,
            small_target: capacity_bytes / 10,
            table: Table::new(),
            slots: Vec::new(),
            free: Vec::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            stale_positions: 0,
            ghost: Ghost::for_entries(16),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            counts: CacheCounts::default(),
        }
    }

    pub fn counts(&self) -> CacheCounts {
        self.counts
    }

    /// Bytes charged now (keys, rows and per-entry overhead); never above the capacity.
    pub fn bytes(&self) -> usize {
        self.small_bytes + self.main_bytes
    }

    pub fn entries(&self) -> usize {
        self.table.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn find(&self, key: &[u8], hash: u64) -> Option<u32> {
        self.table
            .find(hash, |slot| self.slots[slot as usize].key() == key)
    }

    /// The row cached for `key`, unless absent or older than its TTL at `now`.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<Hit<'_>> {
        let hash = hash_of(&self.hasher, key);
        let i = self.find(key, hash);
        self.take_hit(i, now)
    }

    /// Looks up every key of `keys` and calls `found(index, hit)` for each one cached and alive
    /// at `now`; the others are misses. `probes` is scratch, reused across calls.
    pub fn get_many(
        &mut self,
        keys: &KeyList,
        now: Instant,
        probes: &mut Vec<Probe>,
        mut found: impl FnMut(usize, Hit<'_>),
    ) {
        self.probe_all(keys, probes);
        // Stage 3: confirm each key and answer.
        for (index, (key, p)) in keys.iter().zip(probes.iter()).enumerate() {
            let i = match p.candidate {
                Some(i) if self.slots[i as usize].live && self.slots[i as usize].key() == key => {
                    Some(i)
                }
                // Another key with the same 32 tag bits came first, or the slot expired earlier
                // in this batch: look the whole way.
                Some(_) => self.find(key, p.hash),
                None => None,
            };
            if let Some(hit) = self.take_hit(i, now) {
                found(index, hit);
            }
        }
    }

    /// The first stages of a batch, for every key of `keys` into `probes`: hash, and start
    /// loading the table's line; then, those lines being on their way, find the slot whose tag
    /// matches (without reading any slot) and start loading it; then its key and row.
    fn probe_all(&self, keys: &KeyList, probes: &mut Vec<Probe>) {
        probes.clear();
        for key in keys.iter() {
            let hash = hash_of(&self.hasher, key);
            self.table.prefetch(hash);
            probes.push(Probe {
                hash,
                candidate: None,
            });
        }
        for p in probes.iter_mut() {
            p.candidate = self.table.find(p.hash, |_| true);
            if let Some(i) = p.candidate {
                prefetch(&self.slots[i as usize]);
            }
        }
        for p in probes.iter() {
            if let Some(i) = p.candidate {
                let data = &self.slots[i as usize].data;
                prefetch(data.as_ptr());
                // Key then row rarely fit one line (a 64-byte row never does with its key):
                // the line after is loaded too, or copying the row out waits for it.
                if data.len() > 64 {
                    prefetch(data.as_ptr().wrapping_add(64));
                }
            }
        }
    }

    /// Counts a lookup that found slot `i` (or nothing). An expired entry is a miss; it stays
    /// for the refresh that usually follows, and counts as an expiration once.
    fn take_hit(&mut self, i: Option<u32>, now: Instant) -> Option<Hit<'_>> {
        let Some(i) = i else {
            self.counts.misses += 1;
            return None;
        };
        let slot = &mut self.slots[i as usize];
        // Read: popular, whether or not its row is still good.
        slot.freq = (slot.freq + 1).min(3);
        if now >= slot.expires_at {
            if !slot.expired {
                slot.expired = true;
                self.counts.expirations += 1;
            }
            self.counts.misses += 1;
            return None;
        }
        self.counts.hits += 1;
        Some(Hit {
            computed_at_ms: slot.computed_at_ms,
            row: &slot.data[slot.key_len..],
        })
    }

    /// Caches a copy of `row` for `key` until `now + ttl`. An entry larger than a tenth of the
    /// cache is not cached at all: it would flush the small FIFO on its own.
    pub fn insert(
        &mut self,
        key: &[u8],
        computed_at_ms: u64,
        row: &[u8],
        ttl: Duration,
        now: Instant,
    ) {
        let hash = hash_of(&self.hasher, key);
        self.insert_hashed(key, hash, computed_at_ms, row, ttl, now);
    }

    /// [`HotCache::insert`] for every key of `keys`: `item(index)` gives key `index`'s
    /// computed-at time and row. Like [`HotCache::get_many`], it looks for all the keys (a row
    /// the cache already holds is refreshed in place) before it changes anything, prefetching.
    pub fn insert_many<'r>(
        &mut self,
        keys: &KeyList,
        item: impl Fn(usize) -> (u64, &'r [u8]),
        ttl: Duration,
        now: Instant,
        probes: &mut Vec<Probe>,
    ) {
        if ttl.is_zero() {
            return;
        }
        self.probe_all(keys, probes);
        for (index, (key, p)) in keys.iter().zip(probes.iter()).enumerate() {
            let (computed_at_ms, row) = item(index);
            self.insert_hashed(key, p.hash, computed_at_ms, row, ttl, now);
        }
    }

    fn insert_hashed(
        &mut self,
        key: &[u8],
        hash: u64,
        computed_at_ms: u64,
        row: &[u8],
        ttl: Duration,
        now: Instant,
    ) {
        let charge = key.len() + row.len() + ENTRY_OVERHEAD;
        if ttl.is_zero() || charge > self.small_target.max(1) {
            return;
        }
        if let Some(i) = self.find(key, hash) {
            self.refresh(i, key, computed_at_ms, row, ttl, now);
            return;
        }
        // Room first, so that the victim's buffer can take the new entry.
        while self.bytes() + charge > self.capacity && self.evict_one() {}
        let to_main = self.ghost.take(hash);
        let free = self.free.pop();
        let (buffer, generation) = match free {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                (std::mem::take(&mut slot.data), slot.generation)
            }
            None => (Box::default(), 0),
        };
        let slot = Slot {
            data: fill(buffer, key, row),
            key_len: key.len(),
            hash,
            computed_at_ms,
            expires_at: now + ttl,
            freq: 0,
            queue: if to_main { Queue::Main } else { Queue::Small },
            generation,
            live: true,
            expired: false,
        };
        let i = match free {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.table.insert(hash, i);
        if to_main {
            self.main.push_back((i, generation));
            self.main_bytes += charge;
        } else {
            self.small.push_back((i, generation));
            self.small_bytes += charge;
        }
        self.counts.admissions += 1;
        // A quarter of the entries, rounded up to a power of two (see the ghost's module).
        self.ghost.fit(self.table.len() / 4);
        self.compact_if_needed();
    }

    /// A newer read of cached slot `i`: its row and expiry are renewed in place; it keeps its
    /// place and frequency. An older row is refused while the cached one is alive; once that
    /// has expired, what the store answers now is what it holds.
    fn refresh(
        &mut self,
        i: u32,
        key: &[u8],
        computed_at_ms: u64,
        row: &[u8],
        ttl: Duration,
        now: Instant,
    ) {
        let slot = &mut self.slots[i as usize];
        if computed_at_ms < slot.computed_at_ms && now < slot.expires_at {
            return;
        }
        slot.expires_at = now + ttl;
        slot.expired = false;
        if computed_at_ms == slot.computed_at_ms && &slot.data[slot.key_len..] == row {
            // The store confirmed the same row again: it is current as of now.
            return;
        }
        let old = slot.charge();
        slot.data = fill(std::mem::take(&mut slot.data), key, row);
        slot.computed_at_ms = computed_at_ms;
        let new = slot.charge();
        match slot.queue {
            Queue::Small => self.small_bytes = self.small_bytes + new - old,
            Queue::Main => self.main_bytes = self.main_bytes + new - old,
        }
        while self.bytes() > self.capacity && self.evict_one() {}
    }

    /// Drops every entry (counted as invalidations).
    pub fn clear(&mut self) {
        let live: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].live)
            .collect();
        for i in live {
            self.remove(i);
            self.counts.invalidations += 1;
        }
        self.small.clear();
        self.main.clear();
        self.stale_positions = 0;
    }

    /// Drops `key` (a write made the cached row wrong). Returns whether it was cached.
    pub fn invalidate(&mut self, key: &[u8]) -> bool {
        let hash = hash_of(&self.hasher, key);
        match self.find(key, hash) {
            Some(i) => {
                self.remove(i);
                self.counts.invalidations += 1;
                self.compact_if_needed();
                true
            }
            None => false,
        }
    }

    /// Frees slot `i` wherever it is, and its buffer; its queue position goes stale.
    fn remove(&mut self, i: u32) {
        self.unlink(i);
        self.slots[i as usize].data = Box::default();
    }

    /// Frees slot `i` but keeps its buffer for the insert that evicted it: `free` is a stack,
    /// so that insert takes this slot next.
    fn unlink(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        let charge = slot.charge();
        match slot.queue {
            Queue::Small => self.small_bytes -= charge,
            Queue::Main => self.main_bytes -= charge,
        }
        let hash = slot.hash;
        slot.live = false;
        slot.key_len = 0;
        slot.generation = slot.generation.wrapping_add(1);
        self.table.remove(hash, i);
        self.free.push(i);
        self.stale_positions += 1;
    }
}

/// `key` then `row` in `buffer` when it is their size, else in a new one.
fn fill(mut buffer: Box<[u8]>, key: &[u8], row: &[u8]) -> Box<[u8]> {
    if buffer.len() != key.len() + row.len() {
        let mut v = Vec::with_capacity(key.len() + row.len());
        v.extend_from_slice(key);
        v.extend_from_slice(row);
        return v.into_boxed_slice();
    }
    let (k, r) = buffer.split_at_mut(key.len());
    k.copy_from_slice(key);
    r.copy_from_slice(row);
    buffer
}

#[cfg(test)]
mod tests;
