//! The [`Backend`] trait a backend's test glue implements.

use std::sync::Arc;

use async_trait::async_trait;
use registry_core::operator::Operator;
use registry_core::store::{Scope, Store};
use registry_core::{Discoverer, Meta, Registrar, ServiceConf};

use crate::Unavailable;

/// What a scenario may need beyond the contract every backend meets. A
/// backend declares what it lacks ([`Backend::capability`]); the scenarios
/// that need it are reported not applicable with the backend's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// [`Backend::put_foreign`] writes raw records in the store's own format.
    RawWrites,
    /// The store keeps each instance's node as its registrar wrote it, so
    /// discovery answers every field (addresses, kernel, registration time)
    /// and orders instances by registration time.
    InstanceRecords,
    /// Each instance declares its own method set: re-installing with other
    /// methods moves that instance in the method index.
    InstanceMethods,
    /// A draining instance stays discoverable, marked draining.
    DrainVisible,
    /// Operator actions (`registryctl drain`) on the store's records.
    OperatorActions,
}

/// Which server a backend instance uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerUse {
    /// The server shared by every ordinary scenario of the run.
    Shared,
    /// A server of its own, which the scenario may stop and restart.
    Dedicated,
}

/// A backend under test: builds registrars and discoverers on a real server
/// and can do to the server what scenarios need.
#[async_trait]
pub trait Backend: Send + Sync + Sized + 'static {
    /// A cheap check, before any scenario runs, that the server can be had
    /// (its binary is installed, or the user's server is configured).
    fn available() -> Result<(), Unavailable> {
        Ok(())
    }

    /// The same check for scenarios that stop and restart the server: they
    /// always use a local server of their own (a user's cluster cannot be
    /// stopped), so this usually checks for the local binary.
    fn dedicated_available() -> Result<(), Unavailable> {
        Self::available()
    }

    /// Whether the backend has `capability`; `Err(reason)` reports the
    /// scenarios that need it as not applicable, with the reason (never as
    /// passed). Default: every capability.
    fn capability(capability: Capability) -> Result<(), String> {
        let _ = capability;
        Ok(())
    }

    /// Starts the server (or connects to the user's) and the client.
    /// `Err` means the server is not available: the run fails under
    /// `REGISTRY_TEST_REQUIRE=1`, else the backend's scenarios are ignored.
    async fn start(server: ServerUse) -> Result<Self, Unavailable>;

    /// Called before a scenario uses `namespace` (Kubernetes creates the
    /// namespace object and whatever else a registrar there needs).
    async fn prepare_namespace(&self, _namespace: &str) -> anyhow::Result<()> {
        Ok(())
    }

    /// The backend's store: the scenarios' registrars, discoverers and
    /// operator actions are built on it.
    fn store(&self) -> &dyn Store;

    /// A registrar for the instance `meta`. Default: on [`store`](Self::store);
    /// a backend whose instances need more (a Pod of their own) builds it here.
    async fn registrar(&self, meta: Meta, conf: ServiceConf) -> registry_core::Result<Registrar> {
        Registrar::new(self.store(), meta, conf)
    }

    /// A discoverer of `env` on [`store`](Self::store).
    async fn discoverer(&self, env: &str, conf: ServiceConf) -> registry_core::Result<Discoverer> {
        Discoverer::new(self.store(), env, conf)
    }

    /// Operator actions on the records of `scope` (the store's
    /// [`Store::operator`]): what `registryctl drain` uses. Every backend
    /// offers them; the scenario `operator_drain_survives_the_owner` checks
    /// they behave the same.
    async fn operator(&self, scope: &Scope) -> registry_core::Result<Arc<dyn Operator>> {
        self.store().operator(scope)
    }

    /// Writes, the backend's own way, a record that our registrars did not
    /// write: `value` (e.g. invalid JSON, or a node of another env) stored
    /// where discovery of `scope` will list it, under a name derived from `name`.
    async fn put_foreign(&self, scope: &Scope, name: &str, value: &str) -> anyhow::Result<()>;

    /// Removes what [`put_foreign`](Backend::put_foreign) wrote under `name`
    /// in `scope`, whatever the store made of it (Consul: the KV entry, the
    /// agent service and the session holding the entry).
    async fn remove_foreign(&self, scope: &Scope, name: &str) -> anyhow::Result<()>;

    /// Called by a scenario's cleanup when it is done with `namespace`,
    /// after its registrars uninstalled: removes what the backend's glue
    /// made for it ([`prepare_namespace`](Backend::prepare_namespace)'s
    /// namespace object, Pods it ran for registrars). Default: nothing.
    async fn release_namespace(&self, _namespace: &str) -> anyhow::Result<()> {
        Ok(())
    }

    /// What the store still holds under `namespace`, named the store's way
    /// (keys, services, sessions, objects), read on the server. The runner
    /// asks it for every scenario namespace after the suite and fails the
    /// run unless each is empty. `None`: this backend cannot tell (the
    /// check is reported as not made, never as passed).
    async fn leftovers(&self, namespace: &str) -> anyhow::Result<Option<Vec<String>>>;

    /// The instance of `registrar` crashed: its keepalive task was aborted
    /// (the suite did that). Backends whose liveness is not a lease do here
    /// what the platform would do (Kubernetes `pod` mode: the Pod stops running).
    async fn crashed(&self, _registrar: &Registrar) -> anyhow::Result<()> {
        Ok(())
    }

    /// Stops the server, keeping its data (only on a [`ServerUse::Dedicated`] backend).
    async fn stop_server(&self) -> anyhow::Result<()>;

    /// Starts the server again on the same ports and data.
    async fn start_server(&self) -> anyhow::Result<()>;
}
