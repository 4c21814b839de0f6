//! [`FanoutRegistrar`]: one instance registered on several backends at once
//! (the dual-registration step of a migration). A decorator: it is itself a
//! [`Register`] over other `Register`s.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;

use crate::{Error, Register, Result, RetryHooks, ServiceNode};

/// Registers on every member; one member failing does not stop the others.
///
/// - `install` writes to every member and succeeds when at least one did;
///   members that failed are logged with their backend (the error names it)
///   and retried by their own keepalive. It fails only when all failed.
/// - `sustain_lease` runs every member's keepalive concurrently; each
///   member's retry hooks report failures with the member's own error (which
///   names its backend). It returns when all have ended: `Ok` after
///   `uninstall`, else the first member's error.
/// - `uninstall` removes from every member and reports the first error after
///   trying all.
#[derive(Clone)]
pub struct FanoutRegistrar {
    members: Vec<Arc<dyn Register>>,
}

impl std::fmt::Debug for FanoutRegistrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutRegistrar").field("members", &self.members.len()).finish()
    }
}

impl FanoutRegistrar {
    /// A registrar over `members` (at least one).
    pub fn new(members: Vec<Arc<dyn Register>>) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::invalid("fanout.members", "at least one registrar is needed"));
        }
        Ok(Self { members })
    }

    /// The members, in order.
    pub fn members(&self) -> &[Arc<dyn Register>] {
        &self.members
    }
}

#[async_trait]
impl Register for FanoutRegistrar {
    async fn install(&self, node: ServiceNode) -> Result<ServiceNode> {
        let results = join_all(self.members.iter().map(|m| m.install(node.clone()))).await;
        let mut first_ok = None;
        let mut first_err = None;
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(stored) => {
                    first_ok.get_or_insert(stored);
                }
                Err(e) => {
                    tracing::warn!(member = i, error = %e, "fan-out: install failed on one backend; the others proceed");
                    first_err.get_or_insert(e);
                }
            }
        }
        match (first_ok, first_err) {
            (Some(stored), _) => Ok(stored),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::invalid("fanout.members", "no members")),
        }
    }

    async fn sustain_lease(&self) -> Result<()> {
        let results = join_all(self.members.iter().map(|m| m.sustain_lease())).await;
        results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
    }

    async fn uninstall(&self) -> Result<()> {
        let results = join_all(self.members.iter().map(|m| m.uninstall())).await;
        results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
    }

    async fn drain(&self) -> Result<()> {
        let results = join_all(self.members.iter().map(|m| m.drain())).await;
        results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
    }

    async fn undrain(&self) -> Result<()> {
        let results = join_all(self.members.iter().map(|m| m.undrain())).await;
        results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
    }

    fn set_hooks(&self, hooks: RetryHooks) {
        for m in &self.members {
            m.set_hooks(hooks.clone());
        }
    }

    fn node(&self) -> Option<ServiceNode> {
        self.members.iter().find_map(|m| m.node())
    }
}
