//! The Rust client against a proxy that sheds: a burst of GETs on one connection gets some
//! answered OVERLOADED; the client retries each shed GET at most once, within its retry budget,
//! and every call ends with the rows or OVERLOADED, never a hang. Real proxy, real Redis.

mod common;

use std::time::{Duration, Instant};

use common::{flat_row, now_ms, Proxy, Redis};
use featureproxy_client::{
    Client, ClientOptions, Error, ErrorCode, GetOptions, Status, RETRY_BUDGET_GETS_PER_RETRY,
    RETRY_BUDGET_MIN_RETRIES,
};

/// Sheds whenever more than 4 requests wait on a connection at all (a 1 µs target).
const SHEDDING: &str = "shed_queue_delay = \"1us\"\nmax_inflight_per_connection = 4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_burst_is_retried_at_most_once_within_the_budget() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, SHEDDING);
    let opts = ClientOptions {
        pool_size: 1,
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let c = Client::connect(proxy.addr(), opts).await.unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("burst-{i}")).collect();
    let rows: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), now_ms(), flat_row(i as f32)))
        .collect();
    assert_eq!(c.put("user_features", &rows).await.unwrap(), 100);
    c.schema("user_features").await.unwrap();
    let gets_before = proxy.metric("featureproxy_client_gets_total", &[]);
    let shed_before = proxy.metric("featureproxy_requests_shed_total", &[]);

    // The burst: every GET released at once on the one connection, each of 20 keys read from
    // Redis, so that the requests pile up in the proxy's socket faster than it serves them. A
    // generous server deadline, so a served GET is FRESH even on a starved machine.
    let n = 2000usize;
    let get = GetOptions {
        deadline: Some(Duration::from_secs(5)),
        bypass_cache: true,
    };
    let (go, gate) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            let mut gate = gate.clone();
            let wanted: Vec<usize> = (0..20).map(|j| (i + j * 7) % 100).collect();
            let ask: Vec<String> = wanted.iter().map(|&k| keys[k].clone()).collect();
            tokio::spawn(async move {
                gate.wait_for(|open| *open).await.unwrap();
                (wanted, c.get_with("user_features", &ask, get).await)
            })
        })
        .collect();
    let started = Instant::now();
    go.send_replace(true);
    let (mut served, mut overloaded) = (0u64, 0u64);
    for t in tasks {
        // Each call is bounded by the client's timeout; this bounds the test if it were not.
        let (wanted, result) = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("a GET hung past its timeout")
            .unwrap();
        match result {
            Ok(b) => {
                for (j, &k) in wanted.iter().enumerate() {
                    assert_eq!(b.status(j).status, Status::Fresh, "{}", keys[k]);
                    assert_eq!(b.row(j), flat_row(k as f32), "{}", keys[k]);
                }
                served += 1;
            }
            Err(Error::Server {
                code: ErrorCode::Overloaded,
                ..
            }) => overloaded += 1,
            Err(e) => panic!("a GET failed: {e}"),
        }
    }
    let elapsed = started.elapsed();
    let (retries, refused) = (c.overload_retries(), c.overload_retries_refused());
    let gets = proxy.metric("featureproxy_client_gets_total", &[]) - gets_before;
    let shed = proxy.metric("featureproxy_requests_shed_total", &[]) - shed_before;
    eprintln!(
        "{n} GETs in {elapsed:?}: {served} served, {overloaded} OVERLOADED; \
         {retries} retries, {refused} refused by the budget; the proxy received {gets} GETs \
         and shed {shed}"
    );

    assert_eq!(served + overloaded, n as u64);
    assert!(served > 0 && overloaded > 0, "the burst was partly shed");
    // The proxy saw each call's GET once, plus one per counted retry...
    assert_eq!(gets, (n as u64 + retries) as f64);
    // ...and every OVERLOADED it sent was either retried or is a caller's final answer.
    assert_eq!(shed, (overloaded + retries) as f64);
    // Each call's first shed was retried or refused (the 10 s timeout leaves room for every
    // pause); the refused ones and the retries shed again are the callers' OVERLOADEDs.
    assert!(overloaded >= refused);
    // The budget: 10% of the GETs, plus 10 for each second-long window the burst touched.
    let windows = elapsed.as_secs() + 2;
    let budget = n as u64 / RETRY_BUDGET_GETS_PER_RETRY + RETRY_BUDGET_MIN_RETRIES * windows;
    assert!(retries > 0, "some shed GETs were retried");
    assert!(
        retries <= budget,
        "{retries} retries, above the budget of {budget}"
    );
    assert!(refused > 0, "a burst shed far above 10% meets the budget");
}
