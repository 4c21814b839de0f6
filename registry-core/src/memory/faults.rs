//! Fault hooks of the embedded store for tests (feature `testing`, not part
//! of the API): a record in no format of ours, and a simulated outage. The
//! conformance suite's memory glue drives its foreign-record and outage
//! scenarios through them, as other backends' glue writes raw keys and stops
//! a real server.

use std::sync::atomic::Ordering;

use super::{MemoryStore, Record};
use crate::Result;

impl MemoryStore {
    #[doc(hidden)]
    /// Writes a raw value under `key` with no lease (for tests of foreign and
    /// malformed records).
    pub fn put_raw(&self, key: &str, value: &str) -> Result<()> {
        let mut state = self.lock()?;
        let revision = state.bump(key.to_owned(), Some(value.to_owned()));
        state.records.insert(key.to_owned(), Record { value: value.to_owned(), mod_revision: revision });
        drop(state);
        self.shared.revision.send_replace(revision);
        Ok(())
    }

    #[doc(hidden)]
    /// Simulates an outage (`false`) and the return (`true`): while
    /// unreachable every call fails with `BackendUnavailable` and open watch
    /// streams break; leases keep expiring, as on a server clients cannot reach.
    pub fn set_reachable(&self, reachable: bool) {
        self.shared.reachable.store(reachable, Ordering::SeqCst);
        self.shared.revision.send_modify(|_| {});
    }

    /// The keys under `prefix`, live or not yet reaped (for [`crate::testing`]).
    pub(crate) fn keys_under(&self, prefix: &str) -> Result<Vec<String>> {
        let state = self.lock()?;
        Ok(state.records.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    /// Deletes `key` whatever wrote it (for [`crate::testing`]).
    pub(crate) fn delete_raw(&self, key: &str) -> Result<()> {
        let mut state = self.lock()?;
        let deleted = state.delete_key(key);
        let revision = state.revision;
        drop(state);
        if deleted {
            self.shared.revision.send_replace(revision);
        }
        Ok(())
    }
}
