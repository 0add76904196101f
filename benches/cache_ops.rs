//! Cost of the hot cache's operations on the request path: a hit, a miss, an insert that evicts.
//! `cargo bench --bench cache_ops`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use featureproxy::reading::cache::HotCache;

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

criterion_group!(benches, bench);
criterion_main!(benches);
