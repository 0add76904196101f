//! S3-FIFO's eviction for the hot cache: which entry leaves to make room, and the upkeep of the
//! two FIFOs. An entry on probation (the small FIFO) that was read again moves to main; one that
//! was not leaves, and its key goes to the ghost. In main, an entry read since the hand last
//! passed gets another round (its count lowered); one that was not leaves.

use super::batch::prefetch;
use super::{HotCache, Queue};

impl HotCache {
    /// Evicts from the small FIFO while it holds more than its share, else from main.
    pub(super) fn evict_one(&mut self) -> bool {
        if self.small_bytes > self.small_target || self.main.is_empty() {
            self.evict_small()
        } else {
            self.evict_main()
        }
    }

    fn live_position(&mut self, pos: (u32, u32)) -> bool {
        let slot = &self.slots[pos.0 as usize];
        let live = slot.live && slot.generation == pos.1;
        if !live {
            self.stale_positions = self.stale_positions.saturating_sub(1);
        }
        live
    }

    fn evict_small(&mut self) -> bool {
        let Some(pos) = self.pop_live(Queue::Small) else {
            return false;
        };
        let slot = &mut self.slots[pos.0 as usize];
        if slot.freq > 0 {
            // Read again while on probation: it has earned a place in main.
            let charge = slot.charge();
            slot.freq = 0;
            slot.queue = Queue::Main;
            self.small_bytes -= charge;
            self.main_bytes += charge;
            self.main.push_back(pos);
            return true;
        }
        let hash = slot.hash;
        self.evict_slot(pos.0);
        self.counts.rejections += 1;
        self.ghost.add(hash);
        true
    }

    fn evict_main(&mut self) -> bool {
        while let Some(pos) = self.pop_live(Queue::Main) {
            let slot = &mut self.slots[pos.0 as usize];
            if slot.freq > 0 {
                slot.freq -= 1;
                self.main.push_back(pos);
                continue;
            }
            self.evict_slot(pos.0);
            self.counts.evictions += 1;
            return true;
        }
        false
    }

    /// Takes the front position of `queue` whose slot still holds its entry, dropping the stale
    /// ones before it.
    fn pop_live(&mut self, queue: Queue) -> Option<(u32, u32)> {
        loop {
            // The next victims are the slots behind this one: start loading them, so the hand
            // and the inserts that follow do not wait for them.
            self.prefetch_victims(queue);
            let pos = match queue {
                Queue::Small => self.small.pop_front(),
                Queue::Main => self.main.pop_front(),
            }?;
            if self.live_position(pos) {
                return Some(pos);
            }
        }
    }

    /// Frees a victim already taken off its queue: unlike an invalidation, it leaves no stale
    /// position behind.
    fn evict_slot(&mut self, i: u32) {
        self.unlink(i);
        self.stale_positions -= 1;
    }

    /// Starts loading what the hand will touch at the positions ahead, far enough ahead that it
    /// has arrived by then (one or two places ahead was too close: the profile showed the hand
    /// waiting on the slot it read the hash from): the slot eight places on, and for the one
    /// three places on (its slot requested five positions ago) its buffer and its table line.
    fn prefetch_victims(&self, queue: Queue) {
        let positions = match queue {
            Queue::Small => &self.small,
            Queue::Main => &self.main,
        };
        if let Some(&(ahead, _)) = positions.get(8) {
            prefetch(&self.slots[ahead as usize]);
        }
        if let Some(&(next, _)) = positions.get(3) {
            let slot = &self.slots[next as usize];
            prefetch(slot.data.as_ptr());
            self.table.prefetch(slot.hash);
        }
    }

    /// Invalidations leave positions behind in the FIFOs; drop them once they outnumber the live
    /// entries, so churn without eviction cannot grow the queues without bound.
    pub(super) fn compact_if_needed(&mut self) {
        if self.stale_positions <= self.table.len().max(64) {
            return;
        }
        let slots = &self.slots;
        let live =
            |p: &(u32, u32)| slots[p.0 as usize].live && slots[p.0 as usize].generation == p.1;
        self.small.retain(live);
        self.main.retain(live);
        self.stale_positions = 0;
    }
}
