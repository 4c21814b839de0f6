//! The shared conformance scenarios, one behaviour each, generic over [`Backend`].
//!
//! Each scenario works in its own random namespace and env, asserts only on
//! what it wrote, and removes all of it ([`World::cleanup`]); after the
//! suite the runner checks on the server that every scenario namespace is
//! empty. [`all`] lists them for the runner.

mod client;
mod index;
mod isolation;
mod lifecycle;
mod liveness;
mod outage;
mod robustness;
mod scale;
mod world;

use futures::future::BoxFuture;

pub use client::{EXPECTED_TRANSCRIPT, generic_client_gives_identical_results, generic_client_transcript};
pub use index::{method_index_follows_nodes, two_instances_newest_first};
pub use isolation::{env_isolation, namespace_isolation};
pub use lifecycle::{
    discovery_started_before_anything_exists, drain_is_seen_and_undone, events_report_up_and_down,
    install_then_discover_by_every_method, invalid_names_are_rejected, operator_drain_survives_the_owner,
    uninstall_disappears_promptly, uninstall_is_idempotent,
};
pub use liveness::{crashed_instance_expires_within_ttl, keepalive_holds_past_three_ttls};
pub use outage::outage_then_recovery;
pub use robustness::{foreign_and_malformed_entries_ignored, unwatch_stops_promptly};
pub use scale::{fifty_concurrent_installs_all_visible, large_node_round_trips};
pub(crate) use world::namespaces_of;
pub use world::{Instance, World};

use crate::{Backend, Capability};

/// What a scenario needs from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// The shared server.
    SharedServer,
    /// A server of its own that it stops and restarts.
    DedicatedServer,
}

/// A scenario as the runner sees it.
pub struct Scenario<B> {
    /// Test name (`<backend>::<name>`).
    pub name: &'static str,
    /// What it needs.
    pub needs: Needs,
    /// Capabilities beyond the common contract ([`Backend::capability`]).
    pub requires: &'static [Capability],
    /// The scenario.
    pub run: for<'a> fn(&'a B) -> BoxFuture<'a, anyhow::Result<()>>,
}

macro_rules! scenario {
    ($name:ident, $needs:expr) => {
        scenario!($name, $needs, [])
    };
    ($name:ident, $needs:expr, [$($capability:ident),*]) => {
        Scenario {
            name: stringify!($name),
            needs: $needs,
            requires: &[$(Capability::$capability),*],
            run: |b| Box::pin($name(b)),
        }
    };
}

/// Every scenario, in a stable order.
pub fn all<B: Backend>() -> Vec<Scenario<B>> {
    use Needs::*;
    vec![
        scenario!(install_then_discover_by_every_method, SharedServer, [InstanceRecords]),
        scenario!(two_instances_newest_first, SharedServer, [InstanceRecords]),
        scenario!(uninstall_disappears_promptly, SharedServer),
        scenario!(uninstall_is_idempotent, SharedServer),
        scenario!(drain_is_seen_and_undone, SharedServer, [DrainVisible]),
        scenario!(operator_drain_survives_the_owner, SharedServer, [OperatorActions]),
        scenario!(keepalive_holds_past_three_ttls, SharedServer),
        scenario!(crashed_instance_expires_within_ttl, SharedServer),
        scenario!(env_isolation, SharedServer),
        scenario!(namespace_isolation, SharedServer),
        scenario!(method_index_follows_nodes, SharedServer, [InstanceMethods]),
        scenario!(discovery_started_before_anything_exists, SharedServer),
        scenario!(events_report_up_and_down, SharedServer),
        scenario!(foreign_and_malformed_entries_ignored, SharedServer, [RawWrites]),
        scenario!(invalid_names_are_rejected, SharedServer),
        scenario!(fifty_concurrent_installs_all_visible, SharedServer),
        scenario!(large_node_round_trips, SharedServer),
        scenario!(unwatch_stops_promptly, SharedServer),
        scenario!(generic_client_gives_identical_results, SharedServer),
        scenario!(outage_then_recovery, DedicatedServer),
    ]
}
