//! [`VersionSubset`]: only one version's nodes.

use super::{Candidate, Policy};

/// Sends calls only to nodes whose `meta.version` is `version`; with none
/// of them discovered, calls wait for one and then fail with `UNAVAILABLE`
/// like any channel without nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionSubset {
    version: String,
}

impl VersionSubset {
    /// Only nodes of `version`.
    pub fn new(version: impl Into<String>) -> Self {
        Self { version: version.into() }
    }
}

impl Policy for VersionSubset {
    fn apply(&self, candidates: &mut [Candidate<'_>]) {
        for candidate in candidates {
            if candidate.node.meta.version != self.version {
                candidate.weight = 0;
            }
        }
    }
}
