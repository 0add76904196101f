//! What a batch of cache operations carries between its stages: the keys of one request in
//! one buffer, each key's probe, and the CPU prefetch hint the stages use.

/// Cache keys of one batch, in one buffer: built once per request, probed by
/// [`super::HotCache::get_many`] and reused for the inserts that follow.
#[derive(Debug, Default)]
pub struct KeyList {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl KeyList {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Appends one key, written by `build` at the end of the buffer.
    pub fn push_with(&mut self, build: impl FnOnce(&mut Vec<u8>)) {
        build(&mut self.bytes);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Key `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// One probe of a batch between its stages: the key's hash and the slot its tag pointed to.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub(super) hash: u64,
    pub(super) candidate: Option<u32>,
}

/// Asks the CPU to start loading the line at `p`; a hint, never a fault, whatever `p` is.
#[inline(always)]
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint with no architectural effect; any address is allowed.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
