//! NaN and infinities in rows read from the store: counted per feature on every row read (not a
//! sample: one is enough to page), and, for features whose view says `non_finite = "invalid"`,
//! turned into INVALID with the defaults. Rows of views without float features are never
//! scanned; cached rows were checked when they were read.

use crate::config::watch::{NonFinite, Watch};

/// Counts `row`'s non-finite values into `counts` (by feature); true when one of them must be
/// answered INVALID.
#[inline]
pub fn check(watch: &Watch, row: &[u8], counts: &mut [u64]) -> bool {
    let mut invalid = false;
    for &i in &watch.floats {
        let f = &watch.features[i];
        if f.offset + f.dtype.width() > row.len() {
            continue; // not a row of this view's width: the layout answers it INVALID anyway
        }
        if !f.value(row).is_finite() {
            counts[i] += 1;
            invalid |= f.non_finite == NonFinite::Invalid;
        }
    }
    invalid
}
