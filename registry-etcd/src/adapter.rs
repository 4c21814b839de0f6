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

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, KvClient, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchClient, WatchOptions, WatchResponse, WatchStream,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::list_watch::ListWatchReader;
use registry_core::store::{
    Change, ListWatch, Listing, RawRecord, Scope, Store, StoreReader, StoreWriter, WatchUpdate,
};
use registry_core::{Error, Result, ServiceNode};
use tokio::sync::Mutex;

use crate::config::EtcdConfig;
use crate::error::{Call, KIND, watch_canceled};

/// Keys fetched per page of a listing (pages share one revision).
const LIST_PAGE: i64 = 500;
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
        Arc::new(EtcdReader {
            kv: self.client.kv_client().max_decoding_message_size(MAX_DECODING_BYTES),
            watch: self.client.watch_client().max_decoding_message_size(MAX_DECODING_BYTES),
            prefix: scope.key_prefix(),
            timeout: self.request_timeout,
        })
    }

    /// The key of one instance: `<namespace>/<env>/<app_id>/<lease_id>`.
    pub fn key(scope: &Scope, node: &ServiceNode) -> String {
        scope.record_key(&node.meta.app_id, node.lease_id)
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
        Ok(Arc::new(EtcdWriter {
            client: self.client.clone(),
            scope: scope.clone(),
            timeout: self.request_timeout,
            keepalive: Mutex::new(None),
        }))
    }

    fn reader(&self, scope: &Scope) -> Result<Arc<dyn StoreReader>> {
        Ok(Arc::new(ListWatchReader::new(self.list_watch(scope))))
    }
}

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
struct EtcdWriter {
    client: Client,
    scope: Scope,
    timeout: Duration,
    /// The lease's keepalive stream, opened by the first renew and reopened
    /// after it breaks. Taken out while in use, so a renew cut short by a
    /// deadline leaves no half-read stream behind.
    keepalive: Mutex<Option<LeaseKeepalive>>,
}

impl EtcdWriter {
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
        let value = node.to_json()?;
        let size = value.len();
        let key = EtcdStore::key(&self.scope, node);
        let mut client = self.client.clone();
        let options = PutOptions::new().with_lease(node.lease_id);
        match self.call("put").run(client.put(key, value, Some(options))).await {
            Ok(_) => Ok(()),
            Err(Error::TooLarge { limit, .. }) => Err(Error::TooLarge { what: "node JSON".into(), size, limit }),
            Err(e) => Err(e),
        }
    }

    async fn renew(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let call = self.call("keepalive");
        tokio::time::timeout(call.limit, self.renew_lease(node.lease_id))
            .await
            .unwrap_or_else(|_| Err(call.timed_out()))
    }

    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        self.keepalive.lock().await.take();
        let mut client = self.client.clone();
        self.call("delete").run(client.delete(EtcdStore::key(&self.scope, node), None)).await?;
        if node.lease_id > 0 {
            match self.call("lease revoke").run(client.lease_revoke(node.lease_id)).await {
                Ok(_) | Err(Error::LeaseExpired { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Lists and watches one scope's prefix.
struct EtcdReader {
    kv: KvClient,
    watch: WatchClient,
    prefix: String,
    timeout: Duration,
}

fn record(kv: &KeyValue) -> RawRecord {
    // Non-UTF-8 bytes cannot be a node: the lossy text fails to parse and
    // core skips and counts the record.
    RawRecord::new(String::from_utf8_lossy(kv.key()), String::from_utf8_lossy(kv.value()))
        .with_stamp(kv.mod_revision().to_string())
}

fn to_revision(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: everything from the prefix on.
    vec![0]
}

#[async_trait]
impl ListWatch for EtcdReader {
    fn kind(&self) -> &'static str {
        KIND
    }

    type Resume = u64;

    async fn list(&self) -> Result<Listing<u64>> {
        let call = Call::new("list", self.timeout);
        let end = prefix_end(self.prefix.as_bytes());
        let mut kv = self.kv.clone();
        let mut records = Vec::new();
        let mut from = self.prefix.as_bytes().to_vec();
        // Every page is read at the first page's revision, so the listing is
        // one consistent snapshot and watching from its revision misses nothing.
        let mut revision: Option<i64> = None;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
            if let Some(r) = revision {
                options = options.with_revision(r);
            }
            let page = call.run(kv.get(from.clone(), Some(options))).await?;
            let at = *revision.get_or_insert_with(|| page.header().map_or(0, |h| h.revision()));
            records.extend(page.kvs().iter().map(record));
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(Listing::new(records, to_revision(at))),
            }
        }
    }

    async fn watch(&self, revision: u64) -> Result<BoxStream<'static, Result<WatchUpdate<u64>>>> {
        let call = Call::new("watch", self.timeout);
        let start = i64::try_from(revision.saturating_add(1)).unwrap_or(i64::MAX);
        let options = WatchOptions::new().with_prefix().with_start_revision(start).with_prev_key();
        let mut client = self.watch.clone();
        let mut stream = call.run(client.watch(self.prefix.clone(), Some(options))).await?;
        // The first answer says whether the watch exists (or why not: a
        // compacted start revision, refused credentials, no leader).
        let first = call.run(stream.message()).await?;
        let mut follow = Follow { stream, revision, timeout: self.timeout, done: false };
        let first = match first {
            Some(response) => follow.translate(&response),
            None => return Err(Error::unavailable(KIND, "watch stream closed before it was created")),
        };
        let head = match first {
            Step::Skip => None,
            Step::Yield(Ok(update)) => Some(Ok(update)),
            Step::Yield(Err(e)) => return Err(e),
        };
        let rest = futures::stream::unfold(follow, |mut follow| async move {
            let item = follow.next().await?;
            Some((item, follow))
        });
        Ok(futures::stream::iter(head).chain(rest).boxed())
    }
}

enum Step {
    /// Nothing new (a response with no events and no newer revision).
    Skip,
    /// An update or the error that ends the stream.
    Yield(Result<WatchUpdate<u64>>),
}

/// An open watch and the revision it has delivered up to.
struct Follow {
    stream: WatchStream,
    revision: u64,
    timeout: Duration,
    done: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<Result<WatchUpdate<u64>>> {
        if self.done {
            return None;
        }
        loop {
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return None,
                Err(e) => {
                    self.done = true;
                    return Some(Err(Call::new("watch", self.timeout).map(e)));
                }
            };
            match self.translate(&response) {
                Step::Skip => continue,
                Step::Yield(item) => return Some(item),
            }
        }
    }

    fn translate(&mut self, response: &WatchResponse) -> Step {
        if response.canceled() || response.compact_revision() > 0 {
            self.done = true;
            return Step::Yield(Err(watch_canceled(
                response.cancel_reason(),
                response.compact_revision(),
                self.revision,
            )));
        }
        let changes: Vec<Change> = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                Some(match event.event_type() {
                    EventType::Put => Change::Upsert(record(kv)),
                    EventType::Delete => Change::Delete { key: String::from_utf8_lossy(kv.key()).into_owned() },
                })
            })
            .collect();
        // Resume after the last event delivered. Responses without events
        // (the `created` answer) carry the store's current revision in their
        // header, which may be ahead of events still to come: never resume
        // from it.
        let Some(revision) =
            response.events().iter().filter_map(|e| e.kv()).map(|kv| to_revision(kv.mod_revision())).max()
        else {
            return Step::Skip;
        };
        self.revision = self.revision.max(revision);
        Step::Yield(Ok(WatchUpdate::Changes { changes, resume: self.revision }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ns/dev/"), b"ns/dev0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn keys_follow_the_go_layout() {
        let scope = Scope::new("ns", "prod");
        let mut node = ServiceNode::default();
        node.meta.app_id = "user-service".into();
        node.lease_id = 7587869532745834261;
        assert_eq!(scope.key_prefix(), "ns/prod/");
        assert_eq!(EtcdStore::key(&scope, &node), "ns/prod/user-service/7587869532745834261");
    }
}
