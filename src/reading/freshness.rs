//! Freshness: how old a stored row is and what that makes it (FRESH, STALE, EXPIRED), by its
//! view's thresholds. Ages are wall-clock: computed_at comes from the writer's clock.

use featureproxy_protocol::Status;

use crate::config::registry::View;

/// The age in ms of a value computed at `computed_at_ms`, seen at `now_ms`. A timestamp from the
/// future (clock skew between writer and proxy) counts as age 0 rather than wrapping around.
pub fn age_ms(now_ms: u64, computed_at_ms: u64) -> u32 {
    now_ms
        .saturating_sub(computed_at_ms)
        .min(u32::MAX as u64 - 1) as u32
}

/// FRESH, STALE or EXPIRED by the view's thresholds.
pub fn freshness(view: &View, age_ms: u32) -> Status {
    let age = age_ms as u128;
    if age > view.max_staleness.as_millis() {
        Status::Expired
    } else if age > view.stale_after.as_millis() {
        Status::Stale
    } else {
        Status::Fresh
    }
}

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::registry::Registry;

    fn view() -> View {
        let r = Registry::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/features.toml"
        ))
        .unwrap();
        r.by_name("user_features").unwrap().clone()
    }

    #[test]
    fn freshness_thresholds() {
        let v = view();
        assert_eq!(freshness(&v, 0), Status::Fresh);
        assert_eq!(freshness(&v, 120_000), Status::Fresh);
        assert_eq!(freshness(&v, 120_001), Status::Stale);
        assert_eq!(freshness(&v, 600_000), Status::Stale);
        assert_eq!(freshness(&v, 600_001), Status::Expired);
        assert_eq!(age_ms(1000, 2000), 0);
        assert_eq!(age_ms(5000, 2000), 3000);
    }
}
