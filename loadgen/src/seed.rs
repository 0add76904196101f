//! `loadgen seed`: writes every warm entity of a view through the proxy with batched PUTs, several
//! in flight, then reads a sample back to check it.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use featureproxy_client::{Client, ClientOptions, Status};
use featureproxy_protocol::Dtype;

use crate::keys::{row_values, warm_count, write_key, write_row};
use crate::rng::Rng;
use crate::scramble::Scrambler;

#[derive(Debug, Clone)]
pub struct SeedConfig {
    pub addr: String,
    pub view: String,
    pub entities: u64,
    pub cold_fraction: f64,
    pub batch: u64,
    pub inflight: usize,
    pub connections: usize,
    pub seed: u64,
    pub key_prefix: Vec<u8>,
    pub token: Option<String>,
    /// Entities read back at the end to check them (0: none).
    pub verify: u64,
    /// Connect to the proxy over TLS with these settings.
    pub tls: Option<featureproxy_client::TlsOptions>,
}

#[derive(Debug, Clone)]
pub struct SeedSummary {
    pub written: u64,
    pub elapsed: Duration,
    pub verified: u64,
    pub verify_failures: Vec<String>,
}

/// Writes ids `0..warm_count` in batches, in an order shuffled by `seed`, `inflight` PUTs at once.
pub async fn seed(cfg: SeedConfig) -> Result<SeedSummary, String> {
    let opts = ClientOptions {
        token: cfg.token.clone(),
        client_name: "loadgen-seed".into(),
        timeout: Duration::from_secs(30),
        pool_size: cfg.connections.max(1),
        tls: cfg.tls.clone(),
        ..Default::default()
    };
    let client = Client::connect(&cfg.addr, opts)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.addr))?;
    let schema = client
        .schema(&cfg.view)
        .await
        .map_err(|e| format!("view {:?}: {e}", cfg.view))?;
    let dtypes: Arc<Vec<Dtype>> = Arc::new(schema.features().iter().map(|f| f.dtype).collect());
    let warm = warm_count(cfg.entities, cfg.cold_fraction);
    let batch = cfg.batch.max(1);
    let batches = warm.div_ceil(batch);
    let order = Scrambler::new(batches.max(1), cfg.seed);
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut written = 0u64;
    let mut last_print = Instant::now();
    let mut last_decile = 0;
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0u64;
    eprintln!(
        "seed: {warm} of {} entities of {} ({} features, {} B rows) through {} in PUTs of {batch}, {} in flight",
        cfg.entities,
        cfg.view,
        dtypes.len(),
        schema.row_bytes(),
        cfg.addr,
        cfg.inflight
    );
    while next < batches || !tasks.is_empty() {
        while next < batches && tasks.len() < cfg.inflight.max(1) {
            let b = order.permute(next);
            next += 1;
            let (lo, hi) = (b * batch, ((b + 1) * batch).min(warm));
            let (client, view, dtypes, prefix) = (
                client.clone(),
                cfg.view.clone(),
                dtypes.clone(),
                cfg.key_prefix.clone(),
            );
            tasks.spawn(async move {
                let now = SystemTime::now();
                let rows: Vec<(Vec<u8>, SystemTime, Vec<featureproxy_client::Value>)> = (lo..hi)
                    .map(|id| {
                        let mut key = Vec::with_capacity(prefix.len() + 8);
                        write_key(&mut key, &prefix, id);
                        (key, now, row_values(&dtypes, id))
                    })
                    .collect();
                // PUT is idempotent: retry a failed batch a few times.
                let mut last = None;
                for attempt in 0..4u32 {
                    match client.put(&view, &rows).await {
                        Ok(n) => return Ok(n as u64),
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(format!(
                    "PUT of ids {lo}..{hi} failed 4 times: {}",
                    last.map(|e| e.to_string()).unwrap_or_default()
                ))
            });
        }
        match tasks.join_next().await {
            Some(Ok(Ok(n))) => written += n,
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(format!("a PUT task failed: {e}")),
            None => {}
        }
        let done = written as f64 / warm.max(1) as f64;
        let rate = written as f64 / start.elapsed().as_secs_f64().max(1e-3);
        if tty && last_print.elapsed() > Duration::from_millis(200) {
            last_print = Instant::now();
            let eta = (warm - written) as f64 / rate.max(1.0);
            eprint!(
                "\r\x1b[2Kseed: {written}/{warm} rows ({:.0}%), {rate:.0} rows/s, ETA {eta:.0}s",
                done * 100.0
            );
        } else if !tty && (done * 10.0) as u32 > last_decile {
            last_decile = (done * 10.0) as u32;
            eprintln!(
                "seed: {written}/{warm} rows ({:.0}%), {rate:.0} rows/s",
                done * 100.0
            );
        }
    }
    let elapsed = start.elapsed();
    if tty {
        eprintln!();
    }
    eprintln!(
        "seed: wrote {written} rows in {:.1}s ({:.0} rows/s)",
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64().max(1e-3)
    );
    // Read a sample back: warm ids must hold f(id, j), cold ids nothing.
    let mut failures = Vec::new();
    let mut verified = 0;
    if cfg.verify > 0 && cfg.entities > 0 {
        let mut rng = Rng::derive(cfg.seed, 0x5eed);
        let ids: Vec<u64> = (0..cfg.verify)
            .map(|_| rng.range_inclusive(0, cfg.entities - 1))
            .collect();
        for chunk in ids.chunks(500) {
            let keys: Vec<Vec<u8>> = chunk
                .iter()
                .map(|id| {
                    let mut k = Vec::new();
                    write_key(&mut k, &cfg.key_prefix, *id);
                    k
                })
                .collect();
            let got = client
                .get_with(
                    &cfg.view,
                    &keys,
                    featureproxy_client::GetOptions {
                        bypass_cache: true,
                        deadline: None,
                    },
                )
                .await
                .map_err(|e| format!("reading the sample back: {e}"))?;
            let mut expected = Vec::new();
            for (i, id) in chunk.iter().enumerate() {
                verified += 1;
                let st = got.status(i).status;
                if *id >= warm {
                    if st != Status::Missing {
                        failures.push(format!(
                            "cold id {id}: status {} (expected missing)",
                            st.name()
                        ));
                    }
                } else if !matches!(st, Status::Fresh | Status::Stale) {
                    failures.push(format!("id {id}: status {}", st.name()));
                } else {
                    expected.clear();
                    write_row(&mut expected, &dtypes, *id);
                    if got.raw_row(i) != &expected[..] {
                        failures.push(format!("id {id}: row differs from f(id, j)"));
                    }
                }
            }
        }
        if failures.is_empty() {
            eprintln!("seed: read back {verified} sampled entities: all as written");
        } else {
            eprintln!(
                "seed: read back {verified} sampled entities: {} wrong, e.g. {}",
                failures.len(),
                failures[0]
            );
        }
    }
    Ok(SeedSummary {
        written,
        elapsed,
        verified,
        verify_failures: failures,
    })
}
