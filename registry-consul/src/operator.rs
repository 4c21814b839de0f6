//! Operator marks on Consul: a KV key `<record key>/drained` beside the
//! instance's record, acquired with the record's own session. The instance
//! never writes that key, so its writes keep the mark; the session's
//! `delete` behaviour removes it with the instance (uninstall, or the check
//! going critical). Acquiring with the record's session is the precondition:
//! the mark can only land on the instance that holds the record now.
//!
//! Records written by the Go framework have no KV record and no session, so
//! they cannot carry a mark (`InstanceNotFound`).

use std::sync::Arc;

use async_trait::async_trait;
use registry_core::operator::Operator;
use registry_core::store::Scope;
use registry_core::{Error, Result};

use crate::client::{Client, KvFailure};
use crate::error::KIND;

/// The mark's key is the record's key plus this.
pub(crate) const MARK_SUFFIX: &str = "/drained";

/// Operator actions on the records of one scope.
pub(crate) struct ConsulOperator {
    client: Arc<Client>,
    scope: Scope,
}

impl ConsulOperator {
    pub(crate) fn new(client: Arc<Client>, scope: Scope) -> Self {
        Self { client, scope }
    }
}

#[async_trait]
impl Operator for ConsulOperator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn set_drained(&self, app_id: &str, lease_id: i64, drained: bool) -> Result<()> {
        let key = self.scope.record_key(app_id, lease_id);
        let mark = format!("{key}{MARK_SUFFIX}");
        let not_found = || Error::InstanceNotFound { app_id: app_id.to_owned(), lease_id };
        // Lists the record and its mark (and keys that merely share the prefix).
        let (entries, _) = self.client.agent.kv_list(&key, None).await?;
        let record = entries.iter().find(|e| e.key == key);
        let marked = entries.iter().find(|e| e.key == mark);
        let Some(session) = record.and_then(|r| r.session.clone()) else { return Err(not_found()) };
        if !drained {
            if marked.is_some() {
                self.client.kv_delete(&mark).await?;
            }
            return Ok(());
        }
        if marked.is_some_and(|m| m.session.as_deref() == Some(session.as_str())) {
            return Ok(());
        }
        match self.client.kv_acquire(&mark, "drained by an operator", &session).await {
            Ok(true) => {
                tracing::info!(key = %mark, "operator mark written");
                Ok(())
            }
            // Held by another session: a mark of an earlier incarnation not yet deleted.
            Ok(false) => Err(Error::Conflict { backend: KIND, what: format!("KV key {mark}"), attempts: 1 }),
            // The record's session ended since the read: the instance is gone.
            Err(KvFailure::InvalidSession) => Err(not_found()),
            Err(KvFailure::Other(e)) => Err(e),
        }
    }
}
