//! Operator marks on etcd: the field `drained_by_operator` in the record's
//! JSON, written in a transaction conditional on the record's
//! `mod_revision` (a write of the instance in between makes it retry on the
//! new value, never undo it), keeping the record's lease. The instance's own
//! puts carry the field over the same way ([`put_keeping_mark`]).

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use registry_core::operator::{MAX_ATTEMPTS, Operator, is_marked, set_mark};
use registry_core::store::Scope;
use registry_core::{Error, Result, ServiceNode};

use crate::error::{Call, KIND};

/// Operator actions on the records of one scope.
pub(crate) struct EtcdOperator {
    client: Client,
    scope: Scope,
    timeout: Duration,
}

impl EtcdOperator {
    pub(crate) fn new(client: Client, scope: Scope, timeout: Duration) -> Self {
        Self { client, scope, timeout }
    }
}

/// The record under `key`, if any.
async fn current(client: &mut Client, key: &str, timeout: Duration) -> Result<Option<KeyValue>> {
    let got = Call::new("get", timeout).run(client.get(key, None)).await?;
    Ok(got.kvs().first().cloned())
}

/// Puts `value` under `key` with `lease` if the key is still at `revision`
/// (`None`: absent); true when written.
async fn put_if(
    client: &mut Client,
    key: &str,
    value: String,
    lease: i64,
    revision: Option<i64>,
    timeout: Duration,
) -> Result<bool> {
    let compare = match revision {
        Some(r) => Compare::mod_revision(key, CompareOp::Equal, r),
        None => Compare::create_revision(key, CompareOp::Equal, 0),
    };
    let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
    let txn = Txn::new().when([compare]).and_then([put]);
    let answer = Call::new("txn", timeout).run(client.txn(txn)).await?;
    Ok(answer.succeeded())
}

/// The instance's own put: `node` under `key` with its lease, carrying over
/// an operator's mark found on the record, conditional on the revision read
/// (so a mark written in between is not lost: the put is retried on it).
pub(crate) async fn put_keeping_mark(
    client: &mut Client,
    key: &str,
    node: &ServiceNode,
    timeout: Duration,
) -> Result<()> {
    let plain = node.to_json()?;
    for _ in 0..MAX_ATTEMPTS {
        let stored = current(client, key, timeout).await?;
        let marked = stored.as_ref().is_some_and(|kv| kv.value_str().is_ok_and(is_marked));
        let value = if marked && !node.drained_by_operator {
            ServiceNode { drained_by_operator: true, ..node.clone() }.to_json()?
        } else {
            plain.clone()
        };
        if put_if(client, key, value, node.lease_id, stored.map(|kv| kv.mod_revision()), timeout).await? {
            return Ok(());
        }
    }
    Err(Error::Conflict { backend: KIND, what: format!("key {key}"), attempts: MAX_ATTEMPTS })
}

#[async_trait]
impl Operator for EtcdOperator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn set_drained(&self, app_id: &str, lease_id: i64, drained: bool) -> Result<()> {
        let key = self.scope.record_key(app_id, lease_id);
        self.mark(&key, app_id, lease_id, drained)
            .await
            .map_err(|e| crate::error::needing(e, || format!("read and write permission on the key `{key}`")))
    }
}

impl EtcdOperator {
    async fn mark(&self, key: &str, app_id: &str, lease_id: i64, drained: bool) -> Result<()> {
        let mut client = self.client.clone();
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = current(&mut client, key, self.timeout).await? else {
                return Err(Error::InstanceNotFound { app_id: app_id.to_owned(), lease_id });
            };
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            if is_marked(&value) == drained {
                return Ok(());
            }
            let value = set_mark(&value, drained)?;
            if put_if(&mut client, key, value, kv.lease(), Some(kv.mod_revision()), self.timeout).await? {
                tracing::info!(key, drained, "operator mark written");
                return Ok(());
            }
        }
        Err(Error::Conflict { backend: KIND, what: format!("key {key}"), attempts: MAX_ATTEMPTS })
    }
}
