//! Routing policies: small pieces that decide how much of the traffic each
//! discovered node gets, composed in order over a channel's node set
//! ([`ChannelBuilder::policy`](super::ChannelBuilder::policy)).
//!
//! A policy sees every node the selector matched as a [`Candidate`] — the
//! node, the weight the policies before it left (starting from the node's
//! own `weight`), whether it is healthy (not ejected) and how long the
//! channel has known it — and changes the weights; a weight of 0 takes the
//! node out of rotation. The channel recomputes the weights when the node
//! set or an ejection changes, and when a policy asks to
//! ([`Policy::refresh_after`], for ramps). Picking stays smooth weighted
//! round robin, so whatever split the policies set is exact over a window.
//!
//! - [`VersionSubset`]: only the nodes of one version (`meta.version`);
//! - [`CanarySplit`]: a fixed share of the calls to one version, the rest to the others;
//! - [`ZonePreference`]: the caller's own zone (`network.sn`) while enough of it is healthy;
//! - [`SlowStart`]: a new node's share ramps up over a window.

mod canary;
mod slow_start;
mod version;
mod zone;

use std::time::Duration;

use registry_core::ServiceNode;

pub use canary::CanarySplit;
pub use slow_start::SlowStart;
pub use version::VersionSubset;
pub use zone::ZonePreference;

/// One node as a policy sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Candidate<'a> {
    /// The discovered node.
    pub node: &'a ServiceNode,
    /// Its weight so far (0 = out of rotation).
    pub weight: i64,
    /// Not ejected by outlier detection.
    pub healthy: bool,
    /// How long this channel has known the node (on its own monotonic clock:
    /// writers' clocks do not matter).
    pub age: Duration,
}

/// A routing policy over a channel's nodes (see the [module docs](self)).
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Changes the candidates' weights.
    fn apply(&self, candidates: &mut [Candidate<'_>]);

    /// How soon the weights must be computed again although nothing
    /// changed (a ramp in progress); `None` when only changes matter.
    fn refresh_after(&self, candidates: &[Candidate<'_>]) -> Option<Duration> {
        let _ = candidates;
        None
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use registry_core::{Meta, ServiceNode};

    /// A node of `version` in `zone`.
    pub(crate) fn node(version: &str, zone: &str) -> ServiceNode {
        let mut node = ServiceNode { meta: Meta::new("dev", "shop", version), ..Default::default() };
        node.network.sn = zone.to_owned();
        node
    }
}
