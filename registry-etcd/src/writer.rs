//! Writing one instance: a put under the instance's etcd lease, renewed over
//! etcd's keepalive stream.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use registry_core::store::{Scope, StoreWriter};
use registry_core::{Error, Result, ServiceNode};
use tokio::sync::Mutex;

use crate::error::{Call, KIND, needing};

/// An open keepalive stream for one lease.
struct LeaseKeepalive {
    id: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

impl LeaseKeepalive {
    async fn open(client: &mut Client, id: i64) -> std::result::Result<Self, etcd_client::Error> {
        // Opening sends the first keepalive and reads its answer ("lease not
        // found" when it is gone).
        let (keeper, responses) = client.lease_keep_alive(id).await?;
        Ok(Self { id, keeper, responses })
    }

    /// One keepalive round trip: the lease's remaining TTL (0 when it is gone).
    async fn round_trip(&mut self) -> std::result::Result<i64, etcd_client::Error> {
        self.keeper.keep_alive().await?;
        match self.responses.message().await? {
            Some(response) => Ok(response.ttl()),
            None => Err(etcd_client::Error::LeaseKeepAliveError("keepalive stream closed by the server".into())),
        }
    }
}

/// Writes one instance's record and keeps its lease alive.
pub(crate) struct EtcdWriter {
    client: Client,
    scope: Scope,
    timeout: Duration,
    /// The lease's keepalive stream, opened by the first renew and reopened
    /// after it breaks. Taken out while in use, so a renew cut short by a
    /// deadline leaves no half-read stream behind.
    keepalive: Mutex<Option<LeaseKeepalive>>,
}

impl EtcdWriter {
    pub(crate) fn new(client: Client, scope: Scope, timeout: Duration) -> Self {
        Self { client, scope, timeout, keepalive: Mutex::new(None) }
    }

    fn call(&self, operation: &'static str) -> Call {
        Call::new(operation, self.timeout)
    }

    async fn renew_lease(&self, id: i64) -> Result<()> {
        let mut slot = self.keepalive.lock().await;
        if let Some(mut held) = slot.take().filter(|k| k.id == id) {
            match held.round_trip().await {
                Ok(ttl) if ttl > 0 => {
                    *slot = Some(held);
                    return Ok(());
                }
                Ok(_) => return Err(Error::LeaseExpired { backend: KIND }),
                Err(e) => {
                    let error = self.call("keepalive").map(e);
                    if matches!(error, Error::LeaseExpired { .. } | Error::PermissionDenied { .. }) {
                        return Err(error);
                    }
                    // The stream broke (server restarted, connection lost):
                    // a fresh stream may work right away.
                    tracing::debug!(lease_id = id, %error, "keepalive stream broke; reopening");
                }
            }
        }
        let mut client = self.client.clone();
        // Opening is itself a keepalive round trip.
        let opened = LeaseKeepalive::open(&mut client, id).await.map_err(|e| self.call("keepalive").map(e))?;
        *slot = Some(opened);
        Ok(())
    }
}

#[async_trait]
impl StoreWriter for EtcdWriter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn grant(&self, ttl: Duration) -> Result<i64> {
        self.keepalive.lock().await.take();
        // etcd leases have whole seconds; never grant less than asked for.
        let seconds = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).unwrap_or(i64::MAX).max(1);
        let mut client = self.client.clone();
        let granted = self.call("lease grant").run(client.lease_grant(seconds, None)).await?;
        Ok(granted.id())
    }

    async fn put(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        if node.lease_id <= 0 {
            // Never write a record without a lease: it would outlive the instance.
            return Err(Error::LeaseExpired { backend: KIND });
        }
        // For the error only: the put encodes the node itself.
        let size = node.to_json()?.len();
        let key = self.scope.record_key(&node.meta.app_id, node.lease_id);
        let mut client = self.client.clone();
        match crate::operator::put_keeping_mark(&mut client, &key, node, self.timeout).await {
            Ok(()) => Ok(()),
            Err(Error::TooLarge { limit, .. }) => Err(Error::TooLarge { what: "node JSON".into(), size, limit }),
            Err(e) => Err(needing(e, || format!("read and write permission on the key `{key}`"))),
        }
    }

    /// One keepalive round trip, bounded by the request timeout. Core's
    /// keepalive driver bounds each renewal attempt by the lease's remaining
    /// time and tries again on a fresh call when one hangs; a cancelled
    /// attempt drops the stream it held (see `keepalive`), so the next one
    /// opens a new stream, which the balanced channel may send to another
    /// member.
    async fn renew(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.renew_lease(node.lease_id)).await {
            Ok(result) => result,
            Err(_) => Err(self.call("keepalive").timed_out()),
        }
    }

    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        self.keepalive.lock().await.take();
        let mut client = self.client.clone();
        let key = self.scope.record_key(&node.meta.app_id, node.lease_id);
        let deleted = self.call("delete").run(client.delete(key.clone(), None)).await;
        deleted.map_err(|e| needing(e, || format!("write permission on the key `{key}`")))?;
        if node.lease_id > 0 {
            match self.call("lease revoke").run(client.lease_revoke(node.lease_id)).await {
                Ok(_) | Err(Error::LeaseExpired { .. }) => {}
                Err(e) => {
                    return Err(needing(e, || format!("write permission on every key of lease {}", node.lease_id)));
                }
            }
        }
        Ok(())
    }
}
