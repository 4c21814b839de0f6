//! Writing one instance: agent service + TTL check, the Go-shaped node in the
//! service meta, the full node in KV under a session bound to the check.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use registry_core::store::{Scope, StoreWriter};
use registry_core::{Error, Result, ServiceNode};

use crate::agent::{ServiceRegistration, TtlCheck, go_duration};
use crate::client::{Client, KvFailure, lock};
use crate::error::{KIND, KV_VALUE_LIMIT, META_VALUE_LIMIT, MIN_DEREGISTER_AFTER};
use crate::names;

/// Names of one instance's objects.
struct Ids {
    service_id: String,
    check_id: String,
    key: String,
}

/// What the writer holds for its current instance.
struct Held {
    lease_id: i64,
    /// Session holding the KV entry; `None` until one was acquired.
    session: Option<String>,
}

pub(crate) struct ConsulWriter {
    client: Arc<Client>,
    scope: Scope,
    held: Mutex<Option<Held>>,
}

/// `host:port` (or `[v6]:port`) split for the service's Address/Port.
fn address_and_port(internal: &str) -> (Option<String>, Option<u16>) {
    let Some((host, port)) = internal.rsplit_once(':') else { return (None, None) };
    let Ok(port) = port.parse::<u16>() else { return (None, None) };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() { (None, Some(port)) } else { (Some(host.to_owned()), Some(port)) }
}

impl ConsulWriter {
    pub(crate) fn new(client: Arc<Client>, scope: Scope) -> Self {
        Self { client, scope, held: Mutex::new(None) }
    }

    fn ids(&self, node: &ServiceNode) -> Ids {
        let service_id = names::service_id(&self.scope, &node.meta.app_id, node.lease_id);
        Ids {
            check_id: format!("service:{service_id}"),
            key: self.scope.record_key(&node.meta.app_id, node.lease_id),
            service_id,
        }
    }

    /// `go_json`: the Go-shaped node ([`ServiceNode::to_go_json`]), put into
    /// meta `node` when it fits.
    fn registration(&self, node: &ServiceNode, go_json: &str, ttl: Duration, ids: &Ids) -> ServiceRegistration {
        let mut meta = BTreeMap::from([
            ("app_id".to_owned(), node.meta.app_id.clone()),
            ("env".to_owned(), node.meta.env.clone()),
            ("version".to_owned(), node.meta.version.clone()),
            ("namespace".to_owned(), self.scope.namespace.clone()),
        ]);
        if go_json.len() <= META_VALUE_LIMIT {
            meta.insert("node".to_owned(), go_json.to_owned());
        }
        let tags = [&node.meta.app_id, &node.meta.version].into_iter().filter(|t| !t.is_empty()).cloned().collect();
        let (address, port) = address_and_port(&node.network.internal);
        ServiceRegistration {
            id: ids.service_id.clone(),
            name: names::layout_service_name(self.client.config.layout, &self.scope, &node.meta.app_id),
            tags,
            meta,
            address,
            port,
            check: TtlCheck {
                check_id: ids.check_id.clone(),
                name: "registry heartbeat".to_owned(),
                notes: "passed every TTL/2 by the registry keepalive; its KV record is bound to it".to_owned(),
                ttl: go_duration(ttl),
                status: "passing".to_owned(),
                deregister_critical_service_after: go_duration((ttl * 3).max(MIN_DEREGISTER_AFTER)),
            },
        }
    }

    /// The session held for `lease_id`: `None` when this writer holds another
    /// instance (or none), `Some(None)` when it holds this one without a session.
    fn held_session(&self, lease_id: i64) -> Option<Option<String>> {
        lock(&self.held).as_ref().filter(|h| h.lease_id == lease_id).map(|h| h.session.clone())
    }

    fn hold(&self, lease_id: i64, session: Option<String>) {
        *lock(&self.held) = Some(Held { lease_id, session });
    }

    /// Writes `json` to the instance's KV key under a session bound to its
    /// check (`session`, or a new one), and returns the session used.
    async fn write_record(&self, ids: &Ids, json: &str, session: Option<String>) -> Result<String> {
        let client = &self.client;
        let mut session = match session {
            Some(s) => s,
            None => client.agent.create_session(&ids.service_id, &ids.check_id).await?,
        };
        const ATTEMPTS: u32 = 3;
        for _ in 0..ATTEMPTS {
            match client.kv_acquire(&ids.key, json, &session).await {
                Ok(true) => return Ok(session),
                // Another session (an earlier one of this instance) holds the
                // key, which only this instance writes: take it over.
                Ok(false) => client.kv_delete(&ids.key).await?,
                Err(KvFailure::InvalidSession) => {
                    session = client.agent.create_session(&ids.service_id, &ids.check_id).await?;
                }
                Err(KvFailure::Other(e)) => return Err(e),
            }
        }
        Err(Error::Conflict { backend: KIND, what: format!("KV key {}", ids.key), attempts: ATTEMPTS })
    }

    /// Removes an earlier instance of this writer (its lease expired and core
    /// granted a new one), best effort: it expires by itself anyway.
    async fn forget(&self, app_id: &str, held: Held) {
        let service_id = names::service_id(&self.scope, app_id, held.lease_id);
        if let Err(e) = self.client.agent.deregister_service(&service_id).await {
            tracing::debug!(service_id, error = %e, "could not deregister the previous instance; it expires by itself");
        }
        if let Some(session) = held.session
            && let Err(e) = self.client.agent.destroy_session(&session).await
        {
            tracing::debug!(service_id, error = %e, "could not destroy the previous session");
        }
    }
}

#[async_trait]
impl StoreWriter for ConsulWriter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn grant(&self, _ttl: Duration) -> Result<i64> {
        Ok(registry_core::store::next_instance_id())
    }

    async fn put(&self, node: &ServiceNode, ttl: Duration) -> Result<()> {
        let json = node.to_json()?;
        if json.len() > KV_VALUE_LIMIT {
            return Err(Error::TooLarge { what: "node JSON".into(), size: json.len(), limit: KV_VALUE_LIMIT });
        }
        let ids = self.ids(node);
        let previous = {
            let mut held = lock(&self.held);
            match held.as_ref() {
                Some(h) if h.lease_id != node.lease_id => held.take(),
                _ => None,
            }
        };
        if let Some(previous) = previous {
            self.forget(&node.meta.app_id, previous).await;
        }
        let session = self.held_session(node.lease_id).flatten();
        // Held before the first call: should a later step fail, `renew`
        // finds the instance and completes it.
        self.hold(node.lease_id, session.clone());
        let go_json = node.to_go_json()?;
        self.client.agent.register_service(&self.registration(node, &go_json, ttl, &ids)).await?;
        let session = self.write_record(&ids, &json, session).await?;
        self.hold(node.lease_id, Some(session));
        Ok(())
    }

    async fn renew(&self, node: &ServiceNode, ttl: Duration) -> Result<()> {
        let Some(session) = self.held_session(node.lease_id) else {
            return Err(Error::LeaseExpired { backend: KIND });
        };
        let ids = self.ids(node);
        // The heartbeat proper: the local agent runs the TTL check.
        self.client.agent.pass_check(&ids.check_id).await?;
        let alive = match &session {
            // Whether the KV record's session survived needs the servers.
            // During an election they answer late or not at all; the check
            // has been passed, so that is not a failed heartbeat: waiting
            // out the renewal's budget (TTL/2) and then the retry backoff
            // (up to TTL/4) put the next pass up to 0.75 TTL away, and on a
            // loaded box the TTL check expired (issue 13: one instance of
            // ten left discovery for 0.9 s while the leader server was
            // killed). Asked for at most TTL/10; the next heartbeat asks again.
            Some(session) => match tokio::time::timeout(ttl / 10, self.client.agent.session_exists(session)).await {
                Ok(Ok(alive)) => alive,
                Ok(Err(e)) if e.is_transient() => {
                    tracing::debug!(service_id = %ids.service_id, error = %e, "session not checked; the check was passed");
                    true
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    tracing::debug!(service_id = %ids.service_id, "session check timed out; the check was passed");
                    true
                }
            },
            None => false,
        };
        if !alive {
            // The check was critical for a moment (a pause longer than the
            // TTL) and Consul released the KV record with the session; the
            // service itself is still registered and passing again.
            tracing::info!(service_id = %ids.service_id, "KV record was released; writing it again");
            let json = node.to_json()?;
            let session = self.write_record(&ids, &json, None).await?;
            self.hold(node.lease_id, Some(session));
        }
        Ok(())
    }

    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        let ids = self.ids(node);
        let session = {
            let mut held = lock(&self.held);
            match held.as_ref() {
                Some(h) if h.lease_id == node.lease_id => held.take().and_then(|h| h.session),
                _ => None,
            }
        };
        self.client.agent.deregister_service(&ids.service_id).await?;
        self.client.kv_delete(&ids.key).await?;
        if let Some(session) = session {
            self.client.agent.destroy_session(&session).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_and_port_are_split() {
        assert_eq!(address_and_port("10.0.0.1:9000"), (Some("10.0.0.1".into()), Some(9000)));
        assert_eq!(address_and_port("[::1]:9000"), (Some("::1".into()), Some(9000)));
        assert_eq!(address_and_port(":9000"), (None, Some(9000)));
        assert_eq!(address_and_port("nonsense"), (None, None));
    }
}
