//! The buffers a GET's read fills, kept for the next GET once the reply is encoded. A read needs
//! six of them (where each entity's answer comes from, the rows copied in, the statuses, the
//! ages, where each row is, the store batches served in place); allocating and freeing them per
//! request was a measurable share of a shard's time (`_mi_page_malloc_zero` and `mi_free` in the
//! profiles of benches/RESULTS.md, "seventh pass"). A shard keeps a bounded stack of spare sets.

use std::mem::size_of;
use std::rc::Rc;

use featureproxy_protocol::EntityStatus;

use super::answers::RowRef;
use super::coalescer::BatchResult;
use super::Source;

/// Most bytes of spare buffers one shard keeps (by capacity). A set larger than what is left is
/// freed, not kept: one huge batch must not pin its buffers for the shard's life.
pub(super) const KEEP_BYTES: usize = 4 << 20;

/// One GET's buffers, empty when taken from [`Spares`].
#[derive(Default)]
pub(super) struct Buffers {
    /// Where each entity's answer comes from (while the read is under way).
    pub sources: Vec<Source>,
    /// `row_bytes` per entity, at the entity's index: the rows copied in (cache hits, rows a
    /// layout decoded); the other places are unused.
    pub block: Vec<u8>,
    pub statuses: Vec<EntityStatus>,
    pub ages: Vec<u32>,
    /// Where each entity's row is.
    pub rows: Vec<RowRef>,
    /// The store batches whose rows are served in place.
    pub results: Vec<Rc<BatchResult>>,
}

impl Buffers {
    /// The bytes the set holds, by capacity, its box included (so that even sets that never
    /// grew count against the bound).
    fn bytes(&self) -> usize {
        size_of::<Buffers>()
            + self.sources.capacity() * size_of::<Source>()
            + self.block.capacity()
            + self.statuses.capacity() * size_of::<EntityStatus>()
            + self.ages.capacity() * size_of::<u32>()
            + self.rows.capacity() * size_of::<RowRef>()
            + self.results.capacity() * size_of::<Rc<BatchResult>>()
    }

    /// Empties every buffer, keeping its capacity. Drops what they point to (store batches and
    /// their read buffers), so a spare set pins nothing but its own memory. The block keeps its
    /// length and bytes: the next read resizes it, and reads only the places it writes (see
    /// [`super::answers::RowRef::Block`]), so zeroing it again would be wasted work.
    fn clear(&mut self) {
        self.sources.clear();
        self.statuses.clear();
        self.ages.clear();
        self.rows.clear();
        self.results.clear();
    }
}

/// A shard's spare buffer sets: taken when a read starts, given back when its reply is encoded.
/// Each set is boxed: a read's lookup, its answers and the GET that carries them move a pointer
/// between them, not six vectors (the moves showed as `memmove` in the profile).
#[derive(Default)]
pub(super) struct Spares {
    // Boxed on purpose: the sets leave this vector, and a box moves as a pointer.
    #[allow(clippy::vec_box)]
    kept: Vec<Box<Buffers>>,
    bytes: usize,
}

impl Spares {
    /// A set of empty buffers: a kept one, else new ones (allocated as they grow).
    pub fn take(&mut self) -> Box<Buffers> {
        match self.kept.pop() {
            Some(set) => {
                self.bytes -= set.bytes();
                set
            }
            None => Box::default(),
        }
    }

    /// Keeps `set` for a later read, emptied, unless that would pass [`KEEP_BYTES`].
    pub fn give(&mut self, mut set: Box<Buffers>) {
        let bytes = set.bytes();
        if self.bytes + bytes > KEEP_BYTES {
            return;
        }
        set.clear();
        self.bytes += bytes;
        self.kept.push(set);
    }

    /// Bytes kept now, by capacity.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_set_comes_back_empty_with_its_capacity_and_the_bound_holds() {
        let mut spares = Spares::default();
        let mut set = spares.take();
        set.block.resize(6400, 7);
        set.ages.extend([1, 2, 3]);
        set.results.push(Rc::from(Vec::new()));
        let result = set.results[0].clone();
        let bytes = set.bytes();
        spares.give(set);
        assert_eq!(spares.bytes(), bytes);
        assert_eq!(Rc::strong_count(&result), 1, "a kept set pins no batch");

        let set = spares.take();
        assert_eq!(spares.bytes(), 0);
        assert!(set.ages.is_empty() && set.results.is_empty());
        assert!(set.block.capacity() >= 6400, "the capacity is what is kept");

        // A set that would pass the bound is freed, and the kept bytes stay as they were.
        let mut huge = Box::<Buffers>::default();
        huge.block.reserve(KEEP_BYTES + 1);
        spares.give(set);
        let before = spares.bytes();
        spares.give(huge);
        assert_eq!(spares.bytes(), before);
        assert!(spares.bytes() <= KEEP_BYTES);
    }
}
