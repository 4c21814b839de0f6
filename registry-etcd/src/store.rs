//! [`EtcdStore`]: the etcd implementation of [`registry_core::store`].
//!
//! Layout (the Go framework's): key `<namespace>/<env>/<app_id>/<lease_id>`,
//! value the node JSON, written with an etcd lease whose id is the node's
//! `lease_id`. Writers keep the lease alive through etcd's keepalive stream;
//! readers list the prefix `<namespace>/<env>/` (with the trailing slash, so
//! env `prod` never sees `production`) and watch it from the listing's
//! revision + 1. Core drives both ([`registry_core::Registrar`],
//! [`registry_core::list_watch::ListWatchReader`]).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use registry_core::list_watch::ListWatchReader;
use registry_core::store::{ListWatch, Scope, Store, StoreReader, StoreWriter};
use registry_core::{Error, Result};

use crate::config::EtcdConfig;
use crate::error::{Call, KIND};
use crate::reader::EtcdReader;
use crate::writer::EtcdWriter;

/// Largest gRPC message accepted from etcd. tonic's default (4 MiB) is too
/// small for a listing page or a catch-up watch batch of large nodes; the
/// server is trusted, so the limit only guards against nonsense.
const MAX_DECODING_BYTES: usize = 512 * 1024 * 1024;

/// An etcd cluster as a registry store. Cheap to clone; clones share the
/// client (one balanced gRPC channel over all endpoints).
///
/// ```no_run
/// # async fn demo() -> registry_core::Result<()> {
/// use registry_core::{Discoverer, Meta, Registrar, ServiceConf};
/// use registry_etcd::{EtcdConfig, EtcdStore};
///
/// let store = EtcdStore::connect(EtcdConfig::parse_url("etcd://127.0.0.1:2379")?).await?;
/// let registrar = Registrar::new(&store, Meta::new("prod", "greeter", "v1"), ServiceConf::default())?;
/// let discoverer = Discoverer::new(&store, "prod", ServiceConf::default())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    request_timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("request_timeout", &self.request_timeout).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the cluster in `config`.
    ///
    /// Connections are opened lazily: without auth this does no I/O, so a
    /// service can start while etcd is down (its registrar retries). With a
    /// user configured it authenticates, and refused credentials are
    /// [`Error::PermissionDenied`] carrying etcd's message. Errors:
    /// [`Error::InvalidConfig`] (bad options, unreadable TLS files),
    /// [`Error::BackendUnavailable`] / [`Error::Timeout`] (etcd unreachable
    /// while authenticating, within `connect_timeout + request_timeout`).
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        config.validate()?;
        let options = connect_options(&config)?;
        let endpoints = endpoints(&config);
        let call = Call::new("connect", config.connect_timeout + config.request_timeout);
        let client = call.run(Client::connect(endpoints, Some(options))).await?;
        Ok(Self { client, request_timeout: config.request_timeout })
    }

    /// A store over an existing client; every call is bounded by `request_timeout`.
    pub fn from_client(client: Client, request_timeout: Duration) -> Self {
        Self { client, request_timeout }
    }

    /// The underlying client (a clone sharing the connection).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The raw list/watch source of a scope, for a
    /// [`ListWatchReader`] with another retry policy (`reader` uses core's
    /// defaults). `watch(revision)` fails with [`Error::ResumeLost`] when
    /// etcd compacted `revision + 1` away.
    pub fn list_watch(&self, scope: &Scope) -> Arc<impl ListWatch<Resume = u64> + use<>> {
        Arc::new(EtcdReader::new(
            self.client.kv_client().max_decoding_message_size(MAX_DECODING_BYTES),
            self.client.watch_client().max_decoding_message_size(MAX_DECODING_BYTES),
            scope.key_prefix(),
            self.request_timeout,
        ))
    }
}

fn endpoints(config: &EtcdConfig) -> Vec<String> {
    config
        .endpoints
        .iter()
        .map(|e| if config.tls.is_some() && !e.contains("://") { format!("https://{e}") } else { e.clone() })
        .collect()
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_timeout(config.request_timeout)
        // Without a leader, fail (and cancel watches) instead of hanging.
        .with_require_leader(true)
        // Simple auth tokens die with a server restart and expire after a
        // while: re-authenticate instead of failing every later call.
        .with_auto_token_refresh(true);
    // Pings only while streams (watches, lease keepalives) are open: etcd
    // counts pings on an idle connection as abuse and closes it
    // (`too_many_pings`), and idle unary calls are bounded by our deadlines.
    options = options.with_keep_alive_while_idle(false);
    if let Some(k) = config.keepalive {
        options = options.with_keep_alive(k.interval, k.timeout);
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.with_user(user.clone(), password.clone());
    } else if let Some(user) = &config.user {
        options = options.with_user(user.clone(), String::new());
    }
    if let Some(tls) = &config.tls {
        let read = |field: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::invalid(field, format!("cannot read {}: {e}", path.display())))
        };
        let mut tls_options = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.ca {
            tls_options = tls_options.ca_certificate(etcd_client::Certificate::from_pem(read("etcd tls ca", ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            let identity = etcd_client::Identity::from_pem(read("etcd tls cert", cert)?, read("etcd tls key", key)?);
            tls_options = tls_options.identity(identity);
        }
        if let Some(domain) = &tls.domain {
            tls_options = tls_options.domain_name(domain.clone());
        }
        options = options.with_tls(tls_options);
    }
    Ok(options)
}

impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn writer(&self, scope: &Scope) -> Result<Arc<dyn StoreWriter>> {
        Ok(Arc::new(EtcdWriter::new(self.client.clone(), scope.clone(), self.request_timeout)))
    }

    fn reader(&self, scope: &Scope) -> Result<Arc<dyn StoreReader>> {
        Ok(Arc::new(ListWatchReader::new(self.list_watch(scope))))
    }

    fn operator(&self, scope: &Scope) -> Result<Arc<dyn registry_core::operator::Operator>> {
        Ok(Arc::new(crate::operator::EtcdOperator::new(self.client.clone(), scope.clone(), self.request_timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_core::ServiceNode;

    #[test]
    fn keys_follow_the_go_layout() {
        let scope = Scope::new("ns", "prod");
        let mut node = ServiceNode::default();
        node.meta.app_id = "user-service".into();
        node.lease_id = 7587869532745834261;
        assert_eq!(scope.key_prefix(), "ns/prod/");
        assert_eq!(scope.record_key(&node.meta.app_id, node.lease_id), "ns/prod/user-service/7587869532745834261");
    }
}
