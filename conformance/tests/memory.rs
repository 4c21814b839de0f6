//! The conformance suite on the embedded in-memory backend.

use std::process::ExitCode;

use async_trait::async_trait;
use conformance::{Backend, Runner, ServerUse, Unavailable};
use registry_core::memory::MemoryStore;
use registry_core::store::{Scope, Store};

/// The embedded backend; a "server" is a `MemoryStore`, and an outage makes it unreachable.
struct Memory {
    store: MemoryStore,
}

#[async_trait]
impl Backend for Memory {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    async fn start(_server: ServerUse) -> Result<Self, Unavailable> {
        Ok(Memory { store: MemoryStore::new() })
    }

    async fn put_foreign(&self, scope: &Scope, name: &str, value: &str) -> anyhow::Result<()> {
        Ok(self.store.put_raw(&format!("{}{name}", scope.key_prefix()), value)?)
    }

    async fn remove_foreign(&self, scope: &Scope, name: &str) -> anyhow::Result<()> {
        Ok(registry_core::testing::memory_delete(&self.store, &format!("{}{name}", scope.key_prefix()))?)
    }

    async fn leftovers(&self, namespace: &str) -> anyhow::Result<Option<Vec<String>>> {
        Ok(Some(registry_core::testing::memory_keys(&self.store, &format!("{namespace}/"))?))
    }

    async fn stop_server(&self) -> anyhow::Result<()> {
        self.store.set_reachable(false);
        Ok(())
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        self.store.set_reachable(true);
        Ok(())
    }
}

fn main() -> ExitCode {
    Runner::new().suite::<Memory>("memory").run()
}
