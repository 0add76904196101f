//! What a GET is answered with: one status, age and row per entity, in request order, and where
//! each row's bytes are. A row the store sent is read in place from the store's read buffer
//! until the reply is encoded (its only copy is into the reply); a row from the hot cache was
//! copied out when the read started (the cache lends rows only while it is borrowed), and so
//! was a row the layout had to decode into our packed form (Feast's). The answers live in the
//! read's [`Buffers`], which go back to the shard's spares once the reply is encoded.

use std::borrow::Cow;
use std::rc::Rc;

use featureproxy_protocol::{EntityStatus, Status, AGE_UNKNOWN};

use super::coalescer::{BatchResult, Pending};
use super::finite;
use super::freshness;
use super::spares::Buffers;
use crate::config::registry::View;
use crate::store::{Fetched, Stored};
use crate::telemetry::values::ViewTally;

/// The answers to one GET.
pub struct Answers {
    /// Statuses, ages, row places and served batches, and the block of rows copied in.
    bufs: Box<Buffers>,
    row_bytes: usize,
}

/// Where one entity's row is.
#[derive(Debug, Clone, Copy)]
pub(super) enum RowRef {
    /// In the block, at the entity's index, where the read copied it. (The block's other
    /// places hold nothing to read: only the places a read writes are ever marked `Block`.)
    Block,
    /// In place in the store's answer: slot `index` of batch result `result`.
    Fetched { result: usize, index: usize },
    /// The view's defaults.
    Default,
}

/// One entity judged: its status, age, when its value was computed (0 where none) and where
/// its row is.
pub(super) struct Judged {
    pub status: Status,
    pub age: u32,
    pub computed_at_ms: u64,
    pub row: RowRef,
}

impl Judged {
    /// A stored row computed at `computed_at_ms`, found at `row`: FRESH or STALE by its age, or
    /// EXPIRED with the defaults.
    fn stored(view: &View, computed_at_ms: u64, now_ms: u64, row: RowRef) -> Judged {
        let age = freshness::age_ms(now_ms, computed_at_ms);
        let status = freshness::freshness(view, age);
        Judged {
            status,
            age,
            computed_at_ms,
            row: if status == Status::Expired {
                RowRef::Default
            } else {
                row
            },
        }
    }

    /// The view's defaults, with `status` saying why.
    pub fn defaults(status: Status) -> Judged {
        Judged {
            status,
            age: AGE_UNKNOWN,
            computed_at_ms: 0,
            row: RowRef::Default,
        }
    }
}

impl Answers {
    /// Answers for `n` entities of rows of `row_bytes`, in `bufs`, whose block holds the rows
    /// copied in so far (cache hits) and whose answer buffers are empty.
    pub(super) fn new(n: usize, row_bytes: usize, mut bufs: Box<Buffers>) -> Answers {
        bufs.statuses.reserve(n);
        bufs.ages.reserve(n);
        bufs.rows.reserve(n);
        Answers { bufs, row_bytes }
    }

    /// Gives the read's emptied sources vector back to the buffers, for the next read.
    pub(super) fn keep_sources(&mut self, sources: Vec<super::Source>) {
        debug_assert!(sources.is_empty());
        self.bufs.sources = sources;
    }

    /// The buffers, for the shard's spares once the reply is encoded.
    pub(super) fn into_buffers(self) -> Box<Buffers> {
        self.bufs
    }

    pub(super) fn push(&mut self, judged: &Judged, cached: bool) {
        self.bufs
            .statuses
            .push(EntityStatus::new(judged.status, cached));
        self.bufs.ages.push(judged.age);
        self.bufs.rows.push(judged.row);
    }

    /// Every entity's status, in request order.
    pub fn statuses(&self) -> &[EntityStatus] {
        &self.bufs.statuses
    }

    /// Every entity's age in milliseconds ([`featureproxy_protocol::AGE_UNKNOWN`] where none).
    pub fn ages(&self) -> &[u32] {
        &self.bufs.ages
    }

    /// The row served for entity `i`.
    pub fn row<'a>(&'a self, view: &'a View, i: usize) -> &'a [u8] {
        match self.bufs.rows[i] {
            RowRef::Block => &self.bufs.block[i * self.row_bytes..(i + 1) * self.row_bytes],
            RowRef::Fetched { result, index } => {
                match self.bufs.results[result]
                    .get(index)
                    .and_then(|f| f.get())
                    .map(|f| view.layout.decode(f))
                {
                    Some(Stored::Row {
                        row: Cow::Borrowed(row),
                        ..
                    }) => row,
                    // Only rows the layout lends are kept in place (see `judge_fetched`).
                    _ => &view.default_row,
                }
            }
            RowRef::Default => &view.default_row,
        }
    }

    /// Every entity's row, in request order.
    pub fn rows<'a>(&'a self, view: &'a View) -> impl Iterator<Item = &'a [u8]> + 'a {
        (0..self.bufs.rows.len()).map(move |i| self.row(view, i))
    }

    /// A cached row, already in the block: FRESH or STALE by its age, or EXPIRED with the
    /// defaults.
    pub(super) fn judge_cached(view: &View, computed_at_ms: u64, now_ms: u64) -> Judged {
        Judged::stored(view, computed_at_ms, now_ms, RowRef::Block)
    }

    /// What the store answered for entity `i`, judged; its row stays where the store put it
    /// (or, decoded into a form of the layout's own, is copied into the block). Its NaN and
    /// infinities are counted into `tally` (by feature) and, where the view says so, make it
    /// INVALID; so is the feature that made a Feast row INVALID.
    #[inline]
    pub(super) fn judge_fetched(
        &mut self,
        view: &View,
        i: usize,
        p: &Pending,
        now_ms: u64,
        tally: &mut ViewTally,
    ) -> Judged {
        // Not landed by the deadline: its node has not answered (the batch's others may have).
        let Some(result) = p.batch.result() else {
            return Judged::defaults(Status::Degraded);
        };
        let Some(fetched) = result.get(p.index).and_then(|f| f.get()) else {
            return Judged::defaults(Status::Degraded);
        };
        let (computed_at_ms, in_place) = match fetched {
            Fetched::Failed(_) => return Judged::defaults(Status::Degraded),
            fetched => match view.layout.decode(fetched) {
                Stored::Absent => return Judged::defaults(Status::Missing),
                Stored::Invalid => {
                    if let Some(f) = view.layout.invalid_field(fetched) {
                        if let Some(n) = tally.invalid_by_field.get_mut(f) {
                            *n += 1;
                        }
                    }
                    return Judged::defaults(Status::Invalid);
                }
                Stored::Row {
                    computed_at_ms,
                    row,
                } => {
                    if finite::check(&view.watch, &row, &mut tally.non_finite) {
                        return Judged::defaults(Status::Invalid);
                    }
                    let in_place = matches!(row, Cow::Borrowed(_));
                    if let Cow::Owned(row) = row {
                        let rb = self.row_bytes;
                        put_row(&mut self.bufs.block[i * rb..(i + 1) * rb], &row);
                    }
                    (computed_at_ms, in_place)
                }
            },
        };
        let row = if in_place {
            RowRef::Fetched {
                result: self.result_index(result.clone()),
                index: p.index,
            }
        } else {
            RowRef::Block
        };
        Judged::stored(view, computed_at_ms, now_ms, row)
    }

    /// The answers' index of a batch result, kept once however many entities it serves.
    fn result_index(&mut self, result: Rc<BatchResult>) -> usize {
        let results = &mut self.bufs.results;
        match results.iter().rposition(|r| Rc::ptr_eq(r, &result)) {
            Some(i) => i,
            None => {
                results.push(result);
                results.len() - 1
            }
        }
    }
}

/// Copies `row` into its place in the block; a row of another length (never stored: layouts
/// check it) is cut or padded with zeros rather than shifting the rows after it.
pub(super) fn put_row(dst: &mut [u8], row: &[u8]) {
    let n = dst.len().min(row.len());
    dst[..n].copy_from_slice(&row[..n]);
    dst[n..].fill(0);
}
