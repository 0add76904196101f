//! The shard's Redis backend behind its circuit breaker: every call asks the breaker first and
//! reports its outcome, and failures are counted by kind. Both the coalescer (reads) and PUT
//! (writes) go through here, so one breaker sees all of the shard's Redis traffic.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use crate::backend::{Backend, BackendError};
use crate::breaker::{Breaker, BreakerState, Transition};
use crate::histograms::ShardHistograms;
use crate::stats::ShardStats;

pub struct GuardedRedis {
    backend: Backend,
    breaker: Breaker,
    stats: Arc<ShardStats>,
    histograms: Rc<RefCell<ShardHistograms>>,
}

fn breaker_open() -> BackendError {
    BackendError::Unavailable(
        "circuit breaker open: Redis failed recently; retry after it recovers".into(),
    )
}

impl GuardedRedis {
    pub fn new(
        backend: Backend,
        breaker: Breaker,
        stats: Arc<ShardStats>,
        histograms: Rc<RefCell<ShardHistograms>>,
    ) -> GuardedRedis {
        GuardedRedis {
            backend,
            breaker,
            stats,
            histograms,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// True while the breaker is open: callers serve defaults without queueing a read.
    pub fn rejects(&self) -> bool {
        self.breaker.rejects(Instant::now())
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// One MGET, unless the breaker is open.
    pub async fn read(
        &self,
        keys: &[Bytes],
        timeout: Duration,
    ) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.admit()?;
        self.stats.redis_commands.inc();
        self.stats.redis_keys.add(keys.len() as u64);
        let started = Instant::now();
        let result = self.backend.read(keys, timeout).await;
        self.histograms.borrow_mut().record_redis(started.elapsed());
        self.finish(result.as_ref().err());
        result
    }

    /// SET every item with `ttl`, unless the breaker is open.
    pub async fn write(
        &self,
        items: Vec<(Bytes, Bytes)>,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        self.admit()?;
        self.stats.redis_commands.add(items.len() as u64);
        self.stats.redis_keys.add(items.len() as u64);
        let started = Instant::now();
        let result = self.backend.write(items, ttl, timeout).await;
        self.histograms.borrow_mut().record_redis(started.elapsed());
        self.finish(result.as_ref().err());
        result
    }

    fn admit(&self) -> Result<(), BackendError> {
        match self.breaker.try_acquire(Instant::now()) {
            Ok(t) => {
                self.note(t);
                Ok(())
            }
            Err(_rejected) => {
                self.stats.breaker_rejections.inc();
                Err(breaker_open())
            }
        }
    }

    fn finish(&self, error: Option<&BackendError>) {
        match error {
            Some(BackendError::Timeout(_)) => self.stats.redis_timeouts.inc(),
            Some(BackendError::Unavailable(_)) => self.stats.redis_unavailable.inc(),
            None => {}
        }
        let t = self.breaker.record(Instant::now(), error.is_none());
        if let (
            Some(Transition {
                to: BreakerState::Open,
                ..
            }),
            Some(BackendError::Timeout(_)),
        ) = (t, error)
        {
            // A frozen server keeps its connection "up" and fred's own checks miss it under
            // steady traffic: drop the connection so the reconnect logic takes over.
            let backend = self.backend.clone();
            tokio::task::spawn_local(async move { backend.reconnect().await });
        }
        self.note(t);
    }

    fn note(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        self.stats.breaker_transitions.inc();
        self.stats.breaker_state.store(t.to.gauge(), Relaxed);
        let shard = self.stats.shard;
        match t.to {
            BreakerState::Open => warn!(
                shard,
                from = t.from.name(),
                "circuit breaker opened: Redis calls fail; reads get defaults (DEGRADED), writes BACKEND_UNAVAILABLE"
            ),
            BreakerState::HalfOpen => info!(shard, "circuit breaker half-open: probing Redis"),
            BreakerState::Closed => info!(shard, "circuit breaker closed: Redis answers again"),
        }
    }
}
