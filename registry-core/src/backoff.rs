//! Capped exponential backoff with jitter, shared by the keepalive driver and
//! the list/watch state machine: `backon`'s exponential backoff (the one the
//! Kubernetes backend's conflict retries use), with no limit on attempts and
//! a reset after a success, which its retry adaptors do not offer to a loop
//! that keeps its own state.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Exponential backoff: `initial`, doubling up to `max`, each delay jittered
/// (by up to the delay itself, then capped at `max`) so that a fleet does
/// not retry in lockstep.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// A backoff from `initial` up to `max` (`max` is raised to `initial` if lower).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        let builder = ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self { builder, delays: builder.build(), max }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Starts again from `initial` (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let initial = Duration::from_millis(100);
        let mut b = Backoff::new(initial, Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= initial && first <= initial * 2, "{first:?}");
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        // Past the doubling, every delay is the cap's.
        assert!(b.next_delay() >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() <= initial * 2);
    }
}
