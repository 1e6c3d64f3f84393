//! Instants on one node's monotonic clock, as whole milliseconds since an arbitrary origin.
//!
//! Every [`Millis`] belongs to the clock of the node that read it: the core never compares
//! readings of two nodes (a [`crate::table::Stamp`] names the leadership whose clock it is on).
//! The shell reads `Instant::now() - origin` with one `origin` per process and truncates to
//! whole milliseconds with [`Millis::from_elapsed`]; truncation is accounted for where it matters
//! (see [`crate::config::Timing::fence_wait_ms`]).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

/// A reading of one node's monotonic clock, in milliseconds since that node's origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// The origin.
    pub const ZERO: Millis = Millis(0);

    /// The reading for `elapsed` since the origin, truncated to whole milliseconds.
    pub fn from_elapsed(elapsed: Duration) -> Self {
        Millis(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    /// This instant plus `ms` milliseconds, saturating.
    pub fn plus(self, ms: u64) -> Self {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` on the same clock, 0 if `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Whole milliseconds in `d`, rounded down (for spans a holder may use: shorter is safer).
pub(crate) fn floor_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole milliseconds in `d`, rounded up (for spans someone must wait: longer is safer).
pub(crate) fn ceil_ms(d: Duration) -> u64 {
    let ns = d.as_nanos();
    u64::try_from(ns.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_goes_the_safe_way() {
        assert_eq!(floor_ms(Duration::from_micros(1999)), 1);
        assert_eq!(ceil_ms(Duration::from_micros(1001)), 2);
        assert_eq!(ceil_ms(Duration::from_millis(3)), 3);
        assert_eq!(Millis(5).since(Millis(7)), 0);
        assert_eq!(Millis(u64::MAX).plus(1), Millis(u64::MAX));
        assert_eq!(Millis::from_elapsed(Duration::from_micros(2500)), Millis(2));
    }
}
