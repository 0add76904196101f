//! The hot cache on its own: hits, expiry, refresh, the byte bound under churn, scan
//! resistance, and batches doing what single calls do.

use super::*;

const TTL: Duration = Duration::from_secs(60);

fn key(i: u64) -> Vec<u8> {
    format!("fp:v:v1:{i}").into_bytes()
}

#[test]
fn hit_returns_the_row_and_its_timestamp() {
    let mut c = HotCache::new(1 << 20);
    let now = Instant::now();
    c.insert(b"k", 42, &[1, 2, 3], TTL, now);
    assert_eq!(
        c.get(b"k", now),
        Some(Hit {
            computed_at_ms: 42,
            row: &[1, 2, 3]
        })
    );
    assert_eq!(c.get(b"x", now), None);
    assert_eq!((c.counts().hits, c.counts().misses), (1, 1));
}

#[test]
fn a_batch_finds_what_single_lookups_find() {
    let mut c = HotCache::new(1 << 20);
    let now = Instant::now();
    for i in 0..200u64 {
        let ttl = if i % 10 == 0 {
            Duration::from_millis(5)
        } else {
            TTL
        };
        c.insert(&key(i), i, &i.to_le_bytes(), ttl, now);
    }
    // Cached, never cached, and expired keys, some twice in one batch.
    let asked: Vec<u64> = (0..300).map(|n| (n * 7) % 260).collect();
    let mut keys = KeyList::default();
    for &i in &asked {
        keys.push_with(|b| b.extend_from_slice(&key(i)));
    }
    let later = now + Duration::from_millis(10);
    let mut got = Vec::new();
    c.get_many(&keys, later, &mut Vec::new(), |index, hit| {
        got.push((index, hit.computed_at_ms, hit.row.to_vec()))
    });
    let want: Vec<(usize, u64, Vec<u8>)> = asked
        .iter()
        .enumerate()
        .filter(|&(_, &i)| i < 200 && i % 10 != 0)
        .map(|(index, &i)| (index, i, i.to_le_bytes().to_vec()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(c.counts().hits, want.len() as u64);
    assert_eq!(c.counts().misses, (asked.len() - want.len()) as u64);
    assert_eq!(
        c.counts().expirations,
        20,
        "each expired key counts once, however often it is asked for"
    );
    assert_eq!(c.entries(), 200, "expired entries wait for their refresh");
}

#[test]
fn a_batch_of_inserts_does_what_single_inserts_do() {
    let now = Instant::now();
    let (mut one, mut many) = (HotCache::new(1 << 16), HotCache::new(1 << 16));
    // Rounds of 50 keys out of 400, each key's row newer or older than the one cached: the
    // cache overflows, refreshes in place and refuses older rows alike both ways.
    let mut seed = 11u64;
    for round in 0..40u64 {
        let mut keys = KeyList::default();
        let mut items = Vec::new();
        for _ in 0..50 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let k = (seed >> 40) % 400;
            let at = round * 10 + (seed >> 20) % 15;
            keys.push_with(|b| b.extend_from_slice(&key(k)));
            items.push((at, at.to_le_bytes().to_vec()));
            one.insert(&key(k), at, &at.to_le_bytes(), TTL, now);
        }
        many.insert_many(
            &keys,
            |j| (items[j].0, &items[j].1[..]),
            TTL,
            now,
            &mut Vec::new(),
        );
        assert_eq!(one.counts(), many.counts(), "round {round}");
        assert_eq!(one.bytes(), many.bytes());
    }
    for k in 0..400 {
        assert_eq!(one.get(&key(k), now), many.get(&key(k), now), "key {k}");
    }
}

#[test]
fn entries_expire_after_their_ttl() {
    let mut c = HotCache::new(1 << 20);
    let now = Instant::now();
    c.insert(b"k", 1, &[0; 8], Duration::from_millis(100), now);
    assert!(c.get(b"k", now + Duration::from_millis(99)).is_some());
    assert!(c.get(b"k", now + Duration::from_millis(100)).is_none());
    assert!(c.get(b"k", now + Duration::from_millis(150)).is_none());
    assert_eq!(c.counts().expirations, 1);
    assert_eq!(c.counts().misses, 2);
    // Never served again, but it keeps its place (and its bytes) for the refresh.
    assert_eq!((c.entries(), c.bytes()), (1, 1 + 8 + ENTRY_OVERHEAD));
}

#[test]
fn a_refresh_after_expiry_renews_in_place() {
    let mut c = HotCache::new(1 << 20);
    let now = Instant::now();
    let ttl = Duration::from_millis(100);
    c.insert(b"k", 10, &[1; 8], ttl, now);
    let later = now + Duration::from_millis(200);
    assert!(c.get(b"k", later).is_none());
    // The store answers the same row again: no new admission, served until later + ttl.
    c.insert(b"k", 10, &[1; 8], ttl, later);
    assert_eq!(c.counts().admissions, 1);
    assert_eq!(c.get(b"k", later).map(|h| h.row.to_vec()), Some(vec![1; 8]));
    assert!(c.get(b"k", later + ttl).is_none());
    // Once expired, an older row (a backfill rewrote Redis) is taken: it is what Redis holds.
    let much_later = later + Duration::from_secs(1);
    c.insert(b"k", 5, &[2; 8], ttl, much_later);
    let hit = c
        .get(b"k", much_later)
        .expect("the older row replaced the expired one");
    assert_eq!((hit.computed_at_ms, hit.row.to_vec()), (5, vec![2; 8]));
    assert_eq!(c.counts().expirations, 2);
    assert_eq!((c.entries(), c.counts().admissions), (1, 1));
}

#[test]
fn an_insert_that_evicts_reuses_the_victim_s_buffer() {
    // Room for 40 entries of the same size; once full, every insert evicts one (a one-hit
    // wonder from the small FIFO) and takes its buffer.
    let row = [9u8; 32];
    let mut c = HotCache::new(40 * (key(100).len() + row.len() + ENTRY_OVERHEAD));
    let now = Instant::now();
    for i in 100..140 {
        c.insert(&key(i), 1, &row, TTL, now);
    }
    let buffers: Vec<*const u8> = c.slots.iter().map(|s| s.data.as_ptr()).collect();
    for i in 140..400 {
        c.insert(&key(i), 1, &row, TTL, now);
        assert!(c.bytes() <= c.capacity());
    }
    assert_eq!(c.counts().rejections, 260);
    let now_held: Vec<*const u8> = c.slots.iter().map(|s| s.data.as_ptr()).collect();
    assert_eq!(now_held, buffers, "every insert took its victim's buffer");
    for i in 396..400 {
        assert_eq!(
            c.get(&key(i), now).map(|h| h.row),
            Some(&row[..]),
            "key {i}"
        );
    }
}

#[test]
fn zero_ttl_caches_nothing() {
    let mut c = HotCache::new(1 << 20);
    c.insert(b"k", 1, &[0; 8], Duration::ZERO, Instant::now());
    assert_eq!(c.entries(), 0);
}

#[test]
fn invalidation_removes_and_refresh_keeps_newest() {
    let mut c = HotCache::new(1 << 20);
    let now = Instant::now();
    c.insert(b"k", 10, &[1], TTL, now);
    c.insert(b"k", 5, &[2], TTL, now);
    assert_eq!(
        c.get(b"k", now).unwrap().row[..],
        [1],
        "an older read must not replace a newer row"
    );
    c.insert(b"k", 11, &[3], TTL, now);
    assert_eq!(c.get(b"k", now).unwrap().row[..], [3]);
    assert!(c.invalidate(b"k"));
    assert!(!c.invalidate(b"k"));
    assert_eq!(c.get(b"k", now), None);
    assert_eq!(c.counts().invalidations, 1);
}

#[test]
fn byte_bound_holds_under_churn() {
    let cap = 64 * 1024;
    let mut c = HotCache::new(cap);
    let now = Instant::now();
    let mut seed = 7u64;
    for n in 0..200_000u64 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = key(seed >> 50);
        match n % 7 {
            0 => {
                c.invalidate(&k);
            }
            1 | 2 => {
                c.get(&k, now);
            }
            _ => c.insert(&k, n, &vec![n as u8; 16 + (seed % 64) as usize], TTL, now),
        }
        assert!(
            c.bytes() <= cap,
            "{} bytes over a {cap} bound at step {n}",
            c.bytes()
        );
    }
    // The queues hold live entries plus a bounded number of stale positions.
    assert!(
        c.small.len() + c.main.len() <= 2 * c.entries() + 2 * 64 + 2,
        "{} + {} positions for {} entries",
        c.small.len(),
        c.main.len(),
        c.entries()
    );
    let accounted: usize = c.slots.iter().filter(|s| s.live).map(|s| s.charge()).sum();
    assert_eq!(accounted, c.bytes());
}

#[test]
fn one_hit_wonders_do_not_displace_the_hot_set() {
    // Room for about 100 entries; 50 hot keys read often, then a scan of 10,000 cold keys.
    let mut c = HotCache::new(100 * (ENTRY_OVERHEAD + 16 + 8));
    let now = Instant::now();
    for round in 0..5 {
        for i in 0..50 {
            if c.get(&key(i), now).is_none() {
                c.insert(&key(i), round, &[0; 8], TTL, now);
            }
        }
    }
    for i in 1_000..11_000 {
        if c.get(&key(i), now).is_none() {
            c.insert(&key(i), 0, &[0; 8], TTL, now);
        }
    }
    let hot_left = (0..50).filter(|&i| c.get(&key(i), now).is_some()).count();
    assert!(
        hot_left >= 45,
        "only {hot_left} of 50 hot keys survived a scan"
    );
    assert!(c.counts().rejections > 9_000);
}

#[test]
fn overhead_covers_the_slot() {
    // The charge per entry must cover what an entry really costs beyond key and row.
    let slot = std::mem::size_of::<Slot>();
    let index = 4 * 8; // the table's buckets: at most four of 8 bytes per entry
    let positions = std::mem::size_of::<(u32, u32)>();
    let alloc_header = 16; // the key-and-row buffer's allocation, rounded
    let ghost = 2 * std::mem::size_of::<u32>(); // at most two places per entry
    assert!(
        slot + index + positions + alloc_header + ghost <= ENTRY_OVERHEAD,
        "slot is {slot} bytes"
    );
    let mut c = HotCache::new(1 << 30);
    for i in 0..10_000 {
        c.insert(&key(i), 1, &[0; 8], TTL, Instant::now());
        assert!(c.ghost.bytes() <= ghost * c.entries().max(16), "at {i}");
        assert!(c.table.bytes() <= index * c.entries().max(8), "at {i}");
    }
}
