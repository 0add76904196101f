//! A store of the tests' own, beneath the reading stage's seam: the seam promises one outcome per
//! key, so the coalescer and the reader are tested against answers chosen by entity name, and
//! against reads held until the test lets them land. (Redis itself is exercised by the
//! integration tests, against a real server.)

use std::cell::RefCell;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use tokio::sync::{Notify, Semaphore};

use crate::config::registry::{Registry, View};
use crate::reading::freshness;
use crate::store::{Backend, Failure, Fetched, KeyBlock, Landing, ReadKey, StoreError, WriteItem};

/// Answers by the entity's name: `down-*` failed, `gone-*` absent, `open-*` behind an open
/// breaker (never asked), `frozen-*` on a node that does not answer (they land as timed out
/// once the read's timeout passes, after the read's other keys have landed), `nN` (N a number)
/// a fresh row of N.0s, anything else a fresh row of 7.0s. Records the entities of each read.
pub struct TestStore {
    view: View,
    /// The entities each read asked for, in order.
    asked: RefCell<Vec<Vec<Bytes>>>,
    read_started: Notify,
    /// Some: each read waits for a permit ([`TestStore::land`]) before it answers.
    landings: Option<Semaphore>,
}

impl TestStore {
    /// Reads answer at once.
    pub fn new(view: View) -> TestStore {
        TestStore {
            view,
            asked: RefCell::default(),
            read_started: Notify::new(),
            landings: None,
        }
    }

    /// Each read waits until the test lets it land.
    pub fn holding(view: View) -> TestStore {
        TestStore {
            landings: Some(Semaphore::new(0)),
            ..TestStore::new(view)
        }
    }

    /// Lets `n` more held reads land.
    pub fn land(&self, n: usize) {
        self.landings
            .as_ref()
            .expect("a holding store")
            .add_permits(n);
    }

    /// The store key of `entity`.
    pub fn key(&self, entity: &str) -> ReadKey {
        let mut reads = KeyBlock::default();
        assert!(
            reads.push(&self.view.layout, entity.as_bytes()),
            "a packed view has a key for every entity"
        );
        let mut built = reads.drain();
        built.next().expect("the read just built")
    }

    /// Every entity asked for so far, all reads together; and forgets them.
    pub fn take_asked(&self) -> Vec<Bytes> {
        self.asked.take().into_iter().flatten().collect()
    }

    /// Waits until `n` reads have been asked in all; their entities.
    pub async fn reads(&self, n: usize) -> Vec<Vec<Bytes>> {
        while self.asked.borrow().len() < n {
            self.read_started.notified().await;
        }
        self.asked.borrow().clone()
    }

    fn entity(&self, key: &ReadKey) -> Vec<u8> {
        self.view.layout.entity_of(&key.key).unwrap().into_owned()
    }

    fn answer(&self, entity: &[u8]) -> Fetched {
        if entity.starts_with(b"down-") {
            return Fetched::Failed(Failure::Unavailable);
        }
        if entity.starts_with(b"gone-") {
            return Fetched::Absent;
        }
        let value = std::str::from_utf8(entity)
            .ok()
            .and_then(|e| e.strip_prefix('n')?.parse::<f32>().ok())
            .unwrap_or(7.0);
        let row: Vec<u8> = (0..16).flat_map(|_| value.to_le_bytes()).collect();
        let (mut kb, mut vb) = (BytesMut::new(), BytesMut::new());
        let Ok(WriteItem::Value { value, .. }) =
            self.view
                .layout
                .write(&mut kb, &mut vb, entity, freshness::now_ms(), &row)
        else {
            unreachable!("the test store serves a packed view")
        };
        Fetched::Value(value)
    }
}

impl Backend for TestStore {
    fn admits(&self, key: &ReadKey, _now: Instant) -> bool {
        !self.entity(key).starts_with(b"open-")
    }

    /// Some keys (`open-*`) are behind an open breaker: each is asked about.
    fn admits_all(&self, _now: Instant) -> bool {
        false
    }

    fn read<'a>(
        &'a self,
        keys: &'a [ReadKey],
        timeout: Duration,
        landing: &'a dyn Landing,
    ) -> LocalBoxFuture<'a, ()> {
        let entities: Vec<Vec<u8>> = keys.iter().map(|k| self.entity(k)).collect();
        self.asked
            .borrow_mut()
            .push(entities.iter().map(|e| Bytes::copy_from_slice(e)).collect());
        self.read_started.notify_one();
        async move {
            if let Some(landings) = &self.landings {
                landings.acquire().await.unwrap().forget();
            }
            let frozen = |e: &[u8]| e.starts_with(b"frozen-");
            for (i, e) in entities.iter().enumerate().filter(|(_, e)| !frozen(e)) {
                landing.put(i, self.answer(e));
            }
            landing.landed();
            if entities.iter().any(|e| frozen(e)) {
                tokio::time::sleep(timeout).await;
                for (i, _) in entities.iter().enumerate().filter(|(_, e)| frozen(e)) {
                    landing.put(i, Fetched::Failed(Failure::Timeout));
                }
                landing.landed();
            }
        }
        .boxed_local()
    }

    fn write(
        &self,
        _items: Vec<WriteItem>,
        _timeout: Duration,
    ) -> LocalBoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed_local()
    }

    fn ready(&self) -> LocalBoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed_local()
    }

    fn close(&self) -> LocalBoxFuture<'_, ()> {
        async {}.boxed_local()
    }
}

/// `user_features` of examples/features.toml, with its registry.
pub fn user_features() -> (std::sync::Arc<Registry>, View) {
    let registry = std::sync::Arc::new(
        Registry::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/features.toml"
        ))
        .unwrap(),
    );
    let view = registry.by_name("user_features").unwrap().clone();
    (registry, view)
}
