//! Hit ratio of the hot cache (S3-FIFO) against plain LRU at the same byte budget, on Zipf(0.99)
//! over 1M keys with room for 1% of them, and on the same trace polluted by a scan; plus the
//! choice the proxy makes, one cache per shard, against one shared cache.
//!
//! Not a timing benchmark: it replays traces and counts. Run with
//! `cargo bench --bench cache_hit_ratio` (add `-- --quick` for a short run).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use featureproxy::reading::cache::{HotCache, ENTRY_OVERHEAD};
use loadgen::rng::Rng;
use loadgen::scramble::Scrambler;
use loadgen::zipf::Zipf;

/// The proxy's allocator, counting the bytes held by live allocations (as requested; the
/// allocator's own rounding to size classes comes on top).
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROW: [u8; 64] = [7; 64];
const TTL: Duration = Duration::from_secs(3600);

fn key(id: u64) -> Vec<u8> {
    format!("fp:user_features:v1:{id}").into_bytes()
}

/// Byte-bounded LRU with the same per-entry charge as the hot cache.
struct Lru {
    cap: usize,
    bytes: usize,
    map: HashMap<Vec<u8>, usize>,
    // Doubly linked list over a slab: (key, prev, next).
    nodes: Vec<(Vec<u8>, usize, usize)>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

const NIL: usize = usize::MAX;

impl Lru {
    fn new(cap: usize) -> Lru {
        Lru {
            cap,
            bytes: 0,
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }
    fn unlink(&mut self, i: usize) {
        let (_, p, n) = self.nodes[i];
        if p != NIL {
            self.nodes[p].2 = n
        } else {
            self.head = n
        }
        if n != NIL {
            self.nodes[n].1 = p
        } else {
            self.tail = p
        }
    }
    fn push_front(&mut self, i: usize) {
        self.nodes[i].1 = NIL;
        self.nodes[i].2 = self.head;
        if self.head != NIL {
            self.nodes[self.head].1 = i
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i
        }
    }
    fn get(&mut self, k: &[u8]) -> bool {
        match self.map.get(k) {
            Some(&i) => {
                self.unlink(i);
                self.push_front(i);
                true
            }
            None => false,
        }
    }
    fn insert(&mut self, k: Vec<u8>) {
        let charge = k.len() + ROW.len() + ENTRY_OVERHEAD;
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i].0 = k.clone();
                i
            }
            None => {
                self.nodes.push((k.clone(), NIL, NIL));
                self.nodes.len() - 1
            }
        };
        self.map.insert(k, i);
        self.push_front(i);
        self.bytes += charge;
        while self.bytes > self.cap && self.tail != NIL {
            let t = self.tail;
            self.unlink(t);
            let old = std::mem::take(&mut self.nodes[t].0);
            self.bytes -= old.len() + ROW.len() + ENTRY_OVERHEAD;
            self.map.remove(&old);
            self.free.push(t);
        }
    }
}

trait Cache {
    /// Looks `id` up; on a miss, inserts it (as the proxy does after reading Redis). True on a hit.
    fn access(&mut self, id: u64, now: Instant) -> bool;
}

impl Cache for HotCache {
    fn access(&mut self, id: u64, now: Instant) -> bool {
        let k = key(id);
        if self.get(&k, now).is_some() {
            return true;
        }
        self.insert(&k, 0, &ROW, TTL, now);
        false
    }
}

impl Cache for Lru {
    fn access(&mut self, id: u64, _now: Instant) -> bool {
        let k = key(id);
        if self.get(&k) {
            return true;
        }
        self.insert(k);
        false
    }
}

/// A trace: Zipf(s) ranks over `n` keys, scrambled; with `scan_every` > 0, every that-many
/// requests one request reads the next key of a sequential scan over keys never read otherwise.
fn trace(n: u64, s: f64, len: usize, scan_every: usize, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(n, s).expect("valid zipf");
    let scramble = Scrambler::new(n, seed);
    let mut rng = Rng::new(seed);
    let mut scan = n;
    (0..len)
        .map(|i| {
            if scan_every > 0 && i % scan_every == 0 {
                scan += 1;
                scan
            } else {
                scramble.permute(zipf.sample(&mut rng) - 1)
            }
        })
        .collect()
}

/// Hit ratio over the part of the trace after `warmup`, with requests spread over `caches`
/// (one per shard) at random, as connections are.
fn hit_ratio(caches: &mut [Box<dyn Cache>], trace: &[u64], warmup: usize) -> f64 {
    let now = Instant::now();
    let mut rng = Rng::new(99);
    let (mut hits, mut total) = (0u64, 0u64);
    for (i, &id) in trace.iter().enumerate() {
        let shard = (rng.next_u64() % caches.len() as u64) as usize;
        let hit = caches[shard].access(id, now);
        if i >= warmup {
            total += 1;
            hits += hit as u64;
        }
    }
    hits as f64 / total as f64
}

/// What an entry really costs beyond its key and row: bytes of live allocations grown by filling
/// a cache, per entry, minus the key and row bytes; compared with the charge the cache accounts.
/// Vectors grow by doubling, so the figure depends on where the fill stops: several sizes.
fn measure_overhead() {
    for n in [50_000u64, 200_000, 700_000] {
        let now = Instant::now();
        let before = LIVE.load(std::sync::atomic::Ordering::Relaxed);
        let mut cache = HotCache::new(usize::MAX / 2);
        let mut payload = 0usize;
        for id in 0..n {
            let k = key(id);
            payload += k.len() + ROW.len();
            cache.insert(&k, 0, &ROW, TTL, now);
            std::hint::black_box(cache.get(&k, now).is_some());
        }
        let grown = LIVE.load(std::sync::atomic::Ordering::Relaxed) - before;
        let real = grown.saturating_sub(payload) as f64 / n as f64;
        println!(
            "per-entry overhead at {n} entries: charged {ENTRY_OVERHEAD} B, allocated {real:.0} B beyond key and row ({grown} B live for {payload} B of keys and rows)"
        );
        std::hint::black_box(&cache);
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    measure_overhead();
    let n: u64 = 1_000_000;
    let len = if quick { 2_000_000 } else { 10_000_000 };
    let warmup = len / 5;
    let per_entry = key(n / 2).len() + ROW.len() + ENTRY_OVERHEAD;
    let cap = (n as usize / 100) * per_entry; // room for 1% of the keys
    println!("keys {n}, requests {len} (first {warmup} warm the cache), capacity {cap} bytes = 1% of keys at {per_entry} bytes/entry");
    let zipf = trace(n, 0.99, len, 0, 1);
    let scanned = trace(n, 0.99, len, 3, 1); // a third of requests are a one-pass scan
    let top1 = {
        let mut counts: HashMap<u64, u64> = HashMap::new();
        for id in &zipf {
            *counts.entry(*id).or_default() += 1
        }
        let mut v: Vec<u64> = counts.into_values().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.iter().take(n as usize / 100).sum::<u64>() as f64 / len as f64
    };
    println!("top 1% of keys take {:.1}% of the Zipf trace", top1 * 100.0);
    println!();
    println!("| trace | cache | layout | hit ratio |");
    println!("|---|---|---|---|");
    for (name, t) in [("zipf 0.99", &zipf), ("zipf 0.99 + 1/3 scan", &scanned)] {
        type Layout = (&'static str, &'static str, Vec<Box<dyn Cache>>);
        let rows: Vec<Layout> = vec![
            ("LRU", "1 cache", vec![Box::new(Lru::new(cap))]),
            (
                "S3-FIFO (featureproxy)",
                "1 cache",
                vec![Box::new(HotCache::new(cap))],
            ),
            (
                "S3-FIFO (featureproxy)",
                "2 shards, budget split",
                vec![
                    Box::new(HotCache::new(cap / 2)),
                    Box::new(HotCache::new(cap / 2)),
                ],
            ),
            (
                "S3-FIFO (featureproxy)",
                "2 shards, budget each",
                vec![Box::new(HotCache::new(cap)), Box::new(HotCache::new(cap))],
            ),
            (
                "LRU",
                "2 shards, budget split",
                vec![Box::new(Lru::new(cap / 2)), Box::new(Lru::new(cap / 2))],
            ),
        ];
        for (cache, layout, mut caches) in rows {
            let r = hit_ratio(&mut caches, t, warmup);
            println!("| {name} | {cache} | {layout} | {:.2}% |", r * 100.0);
        }
    }
}
