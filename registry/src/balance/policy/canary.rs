//! [`CanarySplit`]: a fixed share of the calls to a canary version.

use super::{Candidate, Policy};

/// Sends `percent` % of the calls to the nodes of version `canary` and the
/// rest to the other nodes, each side split by the nodes' weights. While one
/// side has no node in rotation, the other takes every call (a canary that is
/// not deployed yet, or the last stable node gone, must not fail calls).
///
/// The split is exact: the weights are rescaled so the two sides' totals
/// stand in the ratio `percent : 100 − percent`, and smooth weighted round
/// robin keeps every node within one call of its share over any window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanarySplit {
    canary: String,
    percent: u8,
}

impl CanarySplit {
    /// `percent` % (at most 100) of the calls to version `canary`.
    pub fn new(canary: impl Into<String>, percent: u8) -> Self {
        Self { canary: canary.into(), percent: percent.min(100) }
    }
}

impl Policy for CanarySplit {
    fn apply(&self, candidates: &mut [Candidate<'_>]) {
        let is_canary = |c: &Candidate<'_>| c.node.meta.version == self.canary;
        let total = |canary: bool| -> i64 {
            candidates.iter().filter(|c| is_canary(c) == canary && c.weight > 0).map(|c| c.weight).sum()
        };
        let (canary_total, stable_total) = (total(true), total(false));
        if canary_total == 0 || stable_total == 0 {
            return;
        }
        let percent = i64::from(self.percent);
        for candidate in candidates.iter_mut() {
            // canary side: w · p · S; stable side: w · (100 − p) · C, so the
            // totals are p·C·S and (100 − p)·S·C.
            let factor = if is_canary(candidate) { percent * stable_total } else { (100 - percent) * canary_total };
            candidate.weight = candidate.weight.saturating_mul(factor);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::node;
    use super::*;

    fn split(versions: &[&str], percent: u8) -> Vec<i64> {
        let nodes: Vec<_> = versions.iter().map(|v| node(v, "")).collect();
        let mut candidates: Vec<Candidate<'_>> =
            nodes.iter().map(|node| Candidate { node, weight: 100, healthy: true, age: Duration::MAX }).collect();
        CanarySplit::new("v2", percent).apply(&mut candidates);
        candidates.iter().map(|c| c.weight).collect()
    }

    #[test]
    fn the_sides_totals_stand_in_the_configured_ratio() {
        let weights = split(&["v1", "v1", "v2"], 5);
        let (stable, canary) = (weights[0] + weights[1], weights[2]);
        assert_eq!(stable * 5, canary * 95);
    }

    #[test]
    fn with_one_side_empty_the_other_takes_every_call() {
        assert_eq!(split(&["v1", "v1"], 5), [100, 100]);
        assert_eq!(split(&["v2"], 5), [100]);
    }
}
