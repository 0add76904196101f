//! What watching served values costs per entity, in isolation: the NaN/infinity check every row
//! read from the store gets, and the sampling decision every served entity gets, with the tally
//! of the 1% sampled (16 f32 features of examples/features.toml's user_features). Set beside the
//! proxy's CPU per entity (benches/RESULTS.md) these give the share of a request the watching can
//! take, which an end-to-end A/B on this box cannot resolve below a few percent.
//! `cargo bench --bench value_watch`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use featureproxy::config::registry::Registry;
use featureproxy::reading::finite;
use featureproxy::reading::sampler::Sampler;
use featureproxy::telemetry::values::ViewTally;

/// Rows of 16 f32 values spread over [0, 16384), as loadgen seeds them.
fn rows(n: usize) -> Vec<[u8; 64]> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            let mut row = [0u8; 64];
            for v in row.chunks_exact_mut(4) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.copy_from_slice(&(((x >> 40) as f32) / 1024.0).to_le_bytes());
            }
            row
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/features.toml");
    let registry = Registry::load(path).expect("examples/features.toml loads");
    let view = &registry.views()[0];
    let watch = view.watch.clone();
    let rows = rows(4096);
    let mut g = c.benchmark_group("value watch");
    g.throughput(Throughput::Elements(rows.len() as u64));

    let mut counts = vec![0u64; watch.features.len()];
    g.bench_function("NaN/inf check, every row read (16 f32)", |b| {
        b.iter(|| {
            let mut invalid = 0;
            for row in &rows {
                invalid += finite::check(&watch, black_box(row), &mut counts) as u32;
            }
            black_box(invalid)
        })
    });

    for rate in [0.0, 0.01, 1.0] {
        let mut sampler = Sampler::new(7);
        let mut tally = ViewTally::new(watch.clone());
        g.bench_function(
            format!("sample at {rate} and tally (per served entity)"),
            |b| {
                // As the reader does it, in GETs of 100: each batch's sampled positions, one
                // call per sample.
                b.iter(|| {
                    for batch in rows.chunks(100) {
                        let n = batch.len();
                        let mut next = sampler.next_in(view.id, rate, 0, n);
                        while let Some(i) = next {
                            tally.record_row(black_box(&batch[i]));
                            next = sampler.next_in(view.id, rate, i + 1, n);
                        }
                    }
                })
            },
        );
        black_box(tally.sampled);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
