//! [`ZonePreference`]: the caller's own zone first, spilling over when it
//! is not healthy enough.

use super::{Candidate, Policy};

/// Sends calls only to the nodes whose `network.sn` equals the caller's
/// `zone` while at least `min_healthy_percent` % of those nodes (and at least
/// one) are healthy — not ejected by outlier detection; otherwise to every
/// node (spill-over), by weight. The default threshold is 50 %.
///
/// Anchors: Envoy's zone-aware routing keeps traffic local unless the local
/// zone cannot carry it, and Kubernetes topology-aware routing falls back to
/// cluster-wide endpoints when a zone lacks enough of them. Unlike Envoy we do
/// not send a proportional residue across zones: either the zone is healthy
/// enough and takes every call, or the fleet does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZonePreference {
    zone: String,
    min_healthy_percent: u8,
}

impl ZonePreference {
    /// Prefer nodes whose `network.sn` is `zone`, with the default threshold (50 %).
    pub fn new(zone: impl Into<String>) -> Self {
        Self { zone: zone.into(), min_healthy_percent: 50 }
    }

    /// Sets the share of the zone's nodes that must be healthy to keep calls in it.
    pub fn with_min_healthy_percent(mut self, percent: u8) -> Self {
        self.min_healthy_percent = percent.min(100);
        self
    }
}

impl Policy for ZonePreference {
    fn apply(&self, candidates: &mut [Candidate<'_>]) {
        let local = |c: &Candidate<'_>| c.node.network.sn == self.zone && c.weight > 0;
        let in_zone = candidates.iter().filter(|c| local(c)).count();
        let healthy = candidates.iter().filter(|c| local(c) && c.healthy).count();
        let enough = healthy > 0 && healthy * 100 >= in_zone * usize::from(self.min_healthy_percent);
        if !enough {
            return;
        }
        for candidate in candidates.iter_mut() {
            if candidate.node.network.sn != self.zone {
                candidate.weight = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::node;
    use super::*;

    /// Weights after the policy, for nodes `(zone, healthy)`.
    fn prefer(nodes: &[(&str, bool)], percent: u8) -> Vec<i64> {
        let built: Vec<_> = nodes.iter().map(|(zone, _)| node("v1", zone)).collect();
        let mut candidates: Vec<Candidate<'_>> = built
            .iter()
            .zip(nodes)
            .map(|(node, (_, healthy))| Candidate { node, weight: 100, healthy: *healthy, age: Duration::MAX })
            .collect();
        ZonePreference::new("a").with_min_healthy_percent(percent).apply(&mut candidates);
        candidates.iter().map(|c| c.weight).collect()
    }

    #[test]
    fn the_zone_keeps_calls_at_the_threshold_and_spills_below_it() {
        assert_eq!(prefer(&[("a", true), ("a", false), ("b", true)], 50), [100, 100, 0], "1 of 2 healthy is 50 %");
        assert_eq!(prefer(&[("a", true), ("a", false), ("a", false), ("b", true)], 50), [100, 100, 100, 100]);
        assert_eq!(prefer(&[("b", true), ("b", true)], 50), [100, 100], "no node in the zone: every node");
    }
}
