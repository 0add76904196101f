//! Redis beneath the storage seam: the [`node`] (one server, its connection and breaker; its
//! [`reads`] go out grouped, one write per call), the
//! backends built from nodes ([`standalone`], [`cluster`]), client-side-caching notices of writes made behind
//! the proxy ([`tracking`]), the private server a newcomer gets without `--redis` ([`child`]), and
//! URLs fit for logs ([`url`]).

pub mod child;
pub mod cluster;
pub mod node;
pub mod pipe;
pub mod reads;
pub mod resp;
pub mod standalone;
pub mod tls;
pub mod tracking;
pub mod url;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::store::breaker::BreakerConfig;
use crate::store::{Backend, Change, StoreError};
use crate::telemetry::counters::ShardStats;
use crate::telemetry::histograms::ShardHistograms;
use cluster::members::{ChangeSink, Members, NodeSettings};
use cluster::{Cluster, ReadFrom};
use node::Node;
use standalone::Standalone;

/// What a shard needs to reach its Redis.
pub struct Connect {
    /// `redis://...` or `redis-cluster://...` (`rediss` for TLS).
    pub url: String,
    /// TLS for every connection, for a `rediss` URL.
    pub tls: Option<Arc<tls::RedisTls>>,
    pub read_from: ReadFrom,
    pub command_timeout: Duration,
    pub breaker: BreakerConfig,
    /// Client tracking prefixes, when the hot cache should hear of writes behind its back.
    pub tracking: Option<Vec<String>>,
    pub stats: Arc<ShardStats>,
    pub histograms: Rc<RefCell<ShardHistograms>>,
}

/// A shard's Redis: the backend, and where it tells of rows that changed behind its back.
pub struct Store {
    pub backend: Rc<dyn Backend>,
    changes: ChangeSink,
}

impl Store {
    /// Sends every notice of changed rows to `f` from now on.
    pub fn on_change(&self, f: impl Fn(Change) + 'static) {
        *self.changes.borrow_mut() = Some(Rc::new(f));
    }
}

/// The first server a URL names ("host:port"): the standalone server, or a cluster's first seed.
pub fn first_address(url: &str) -> Option<String> {
    if cluster::is_cluster_url(url) {
        return cluster::seeds_of(url).ok()?.into_iter().next();
    }
    match tls::fred_config(url, None).ok()?.server {
        fred::types::config::ServerConfig::Centralized { server } => {
            Some(format!("{}:{}", server.host, server.port))
        }
        _ => None,
    }
}

/// Connects (in the background) to a standalone Redis or a Redis Cluster, by the URL's scheme.
pub fn connect(c: Connect) -> Result<Store, StoreError> {
    if cluster::is_cluster_url(&c.url) {
        let seeds = cluster::seeds_of(&c.url)?;
        let members = Members::new(NodeSettings {
            command_timeout: c.command_timeout,
            breaker: c.breaker,
            stats: c.stats.clone(),
            histograms: c.histograms,
            tracking: c.tracking,
            tls: c.tls,
        });
        let changes = members.changes();
        let cluster = Cluster::new(seeds, c.read_from, members, c.stats);
        tokio::task::spawn_local(cluster.clone().run());
        return Ok(Store {
            backend: cluster,
            changes,
        });
    }
    let node = Node::start(
        &c.url,
        c.tls.as_deref(),
        None,
        c.command_timeout,
        c.breaker,
        c.stats.clone(),
        c.histograms,
    )?;
    let changes: ChangeSink = Rc::new(RefCell::new(None));
    if let Some(prefixes) = c.tracking {
        let sink = changes.clone();
        tokio::task::spawn_local(tracking::run(
            c.url.clone(),
            c.tls.clone(),
            prefixes,
            c.stats,
            tracking::Armed::Shard,
            move |change| {
                let f = sink.borrow().clone();
                if let Some(f) = f {
                    f(change);
                }
            },
        ));
    }
    Ok(Store {
        backend: Rc::new(Standalone::new(node)),
        changes,
    })
}
