//! Criterion: the cost of drawing one entity (Zipf rank by rejection-inversion, scrambled into an
//! id) and of building a whole 1-entity and 100-entity request's entity list.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use loadgen::rng::Rng;
use loadgen::scramble::Scrambler;
use loadgen::spec::BatchSpec;
use loadgen::workload::{write_entity_key, Workload};
use loadgen::zipf::Zipf;

fn zipf(c: &mut Criterion) {
    let mut g = c.benchmark_group("zipf");
    g.throughput(Throughput::Elements(1));
    for (n, s) in [(1_000_000u64, 0.99), (1_000_000, 1.2), (100_000_000, 0.99)] {
        let z = Zipf::new(n, s).unwrap();
        let mut rng = Rng::new(1);
        g.bench_function(format!("sample n={n} s={s}"), |b| {
            b.iter(|| black_box(z.sample(&mut rng)))
        });
    }
    let z = Zipf::new(1_000_000, 0.99).unwrap();
    let p = Scrambler::new(1_000_000, 1);
    let mut rng = Rng::new(1);
    g.bench_function("sample+scramble n=1M s=0.99", |b| {
        b.iter(|| black_box(p.permute(z.sample(&mut rng) - 1)))
    });
    g.finish();

    let mut g = c.benchmark_group("request_keys");
    for batch in [1u32, 100] {
        let w = Workload::new(
            1_000_000,
            0.99,
            1,
            BatchSpec {
                min: batch,
                max: batch,
            },
            0.0,
            None,
        )
        .unwrap();
        let mut keys = Vec::with_capacity(4096);
        let mut k = 0u64;
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch {batch}"), |b| {
            b.iter(|| {
                keys.clear();
                k += 1;
                w.entities_of(0, 4, k, |e, _| write_entity_key(&mut keys, b"u:", e));
                black_box(keys.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, zipf);
criterion_main!(benches);
