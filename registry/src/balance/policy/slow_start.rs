//! [`SlowStart`]: a new node's share ramps up.

use std::time::Duration;

use super::{Candidate, Policy};

/// A node the channel has known for less than `window` gets a share of its
/// weight that grows linearly with its age, from `min_percent` % (default
/// 10) to all of it — Envoy's slow-start mode with `aggression` 1 (linear).
/// Age is counted from when this channel first saw the node, on its own
/// clock, so a writer's clock does not matter; nodes present when the
/// channel is built count as old (they are already warm).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowStart {
    window: Duration,
    min_percent: u8,
}

impl SlowStart {
    /// Ramps over `window`, starting at 10 %.
    pub fn new(window: Duration) -> Self {
        Self { window, min_percent: 10 }
    }

    /// Sets the share a brand-new node starts with (percent, 1 to 100).
    pub fn with_min_percent(mut self, percent: u8) -> Self {
        self.min_percent = percent.clamp(1, 100);
        self
    }

    /// The share (per mille) of its weight a node of `age` gets.
    fn per_mille(&self, age: Duration) -> i64 {
        if self.window.is_zero() || age >= self.window {
            return 1000;
        }
        let ramp = i64::try_from(age.as_millis() * 1000 / self.window.as_millis().max(1)).unwrap_or(1000);
        ramp.max(i64::from(self.min_percent) * 10)
    }
}

impl Policy for SlowStart {
    fn apply(&self, candidates: &mut [Candidate<'_>]) {
        for candidate in candidates.iter_mut() {
            let share = self.per_mille(candidate.age);
            // Scaled by 1000 for everyone so old nodes keep their exact ratio.
            candidate.weight = candidate.weight.saturating_mul(share);
        }
    }

    fn refresh_after(&self, candidates: &[Candidate<'_>]) -> Option<Duration> {
        // Twenty steps over the window are smooth enough for a ramp.
        candidates.iter().any(|c| c.age < self.window).then(|| (self.window / 20).max(Duration::from_millis(10)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_grows_linearly_from_the_minimum_to_all() {
        let ramp = SlowStart::new(Duration::from_secs(10)).with_min_percent(10);
        assert_eq!(ramp.per_mille(Duration::ZERO), 100);
        assert_eq!(ramp.per_mille(Duration::from_secs(5)), 500);
        assert_eq!(ramp.per_mille(Duration::from_secs(10)), 1000);
        assert_eq!(ramp.per_mille(Duration::MAX), 1000, "nodes known from the start are warm");
    }
}
