//! Cost of the hot cache's operations on the request path: a hit, a miss, an insert that evicts;
//! and batches of 100 in a cache of the proxy's default size, far larger than the CPU's caches,
//! where lookups and inserts wait on memory as they do in the proxy.
//! `cargo bench --bench cache_ops`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use featureproxy::reading::cache::{HotCache, KeyList};

fn key(i: u64) -> Vec<u8> {
    format!("fp:user_features:v1:{i}").into_bytes()
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let ttl = Duration::from_secs(3600);
    let row = [1u8; 64];
    let keys: Vec<Vec<u8>> = (0..10_000).map(key).collect();
    let mut cache = HotCache::new(64 << 20);
    for k in &keys {
        cache.insert(k, 1, &row, ttl, now);
    }
    let mut i = 0usize;
    c.bench_function("cache get hit (10k entries)", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(cache.get(&keys[i], now).map(|h| h.computed_at_ms))
        })
    });
    let missing = key(99_999_999);
    c.bench_function("cache get miss", |b| {
        b.iter(|| black_box(cache.get(&missing, now).is_some()))
    });
    let mut small = HotCache::new(1 << 20);
    let mut n = 0u64;
    let fresh: Vec<Vec<u8>> = (0..100_000).map(|i| key(1_000_000 + i)).collect();
    c.bench_function("cache insert with eviction (1 MiB)", |b| {
        b.iter(|| {
            n += 1;
            small.insert(&fresh[(n % 100_000) as usize], n, &row, ttl, now);
        })
    });
}

/// `lists` batches of 100 keys each, `key(first + …)` drawn by a fixed LCG over `span` ids.
fn batches(lists: usize, first: u64, span: u64, seed: u64) -> Vec<KeyList> {
    let mut x = seed;
    (0..lists)
        .map(|_| {
            let mut keys = KeyList::default();
            for _ in 0..100 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = first + (x >> 33) % span;
                keys.push_with(|b| b.extend_from_slice(&key(id)));
            }
            keys
        })
        .collect()
}

fn bench_batches(c: &mut Criterion) {
    let now = Instant::now();
    let ttl = Duration::from_secs(3600);
    let row = [1u8; 64];
    // 64 MiB, the proxy's default: 200,000 entries fit without eviction.
    const CACHED: u64 = 200_000;
    let mut cache = HotCache::new(64 << 20);
    for id in 0..CACHED {
        cache.insert(&key(id), 1, &row, ttl, now);
    }
    assert_eq!(cache.entries(), CACHED as usize);
    let hits = batches(1000, 0, CACHED, 1);
    let mut probes = Vec::new();
    let mut j = 0;
    c.bench_function("cache get_many 100 hits (64 MiB, 200k entries)", |b| {
        b.iter(|| {
            j = (j + 1) % hits.len();
            let mut sum = 0u64;
            cache.get_many(&hits[j], now, &mut probes, |_, hit| {
                sum += hit.row[0] as u64
            });
            black_box(sum)
        })
    });
    // Fill to the brim, then every insert of a new key evicts one: 5,000 batches of fresh keys
    // (500,000, more than the cache holds, so a key is gone by the time it comes round again).
    let mut id = CACHED;
    while cache.counts().rejections + cache.counts().evictions == 0 {
        cache.insert(&key(id), 1, &row, ttl, now);
        id += 1;
    }
    let fresh = batches(5000, id, 500_000, 2);
    let mut k = 0;
    c.bench_function(
        "cache insert_many 100 misses, each evicting (64 MiB, full)",
        |b| {
            b.iter(|| {
                k = (k + 1) % fresh.len();
                cache.insert_many(&fresh[k], |_| (1, &row[..]), ttl, now, &mut probes);
            })
        },
    );
}

criterion_group!(benches, bench, bench_batches);
criterion_main!(benches);
