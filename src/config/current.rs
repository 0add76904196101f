//! The registry a shard serves, replaced by a reload between two of the shard's turns (the shard
//! is one thread, so no request is being served at that moment). A request pins the registry it
//! started with and finishes on it, even if a reload lands while it waits on the store.
//!
//! Why an `Rc` around the shared `Arc`: pinning is then a plain increment on this shard's own
//! memory, with no atomic operation on a cache line every shard touches.

use std::cell::RefCell;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use super::registry::Registry;

/// A shard's registry in force.
pub struct Current {
    pinned: RefCell<Pinned>,
}

/// A registry a request holds until it is answered.
// The extra `Rc` is the point: cloning it touches only this shard's memory (see the module doc).
#[allow(clippy::redundant_allocation)]
#[derive(Clone)]
pub struct Pinned(Rc<Arc<Registry>>);

impl Current {
    pub fn new(registry: Arc<Registry>) -> Current {
        Current {
            pinned: RefCell::new(Pinned(Rc::new(registry))),
        }
    }

    /// The registry in force now, held for as long as the caller keeps it.
    pub fn pin(&self) -> Pinned {
        self.pinned.borrow().clone()
    }

    /// Puts `registry` in force for the requests that start from now on.
    pub fn replace(&self, registry: Arc<Registry>) {
        *self.pinned.borrow_mut() = Pinned(Rc::new(registry));
    }
}

impl Deref for Pinned {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.0
    }
}
