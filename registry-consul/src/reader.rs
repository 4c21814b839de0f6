//! Reading a scope in the single-service layout: blocking queries on the
//! health of the service and on the KV prefix, joined into records; the
//! resume point is the pair of indexes. The join, the probe and the pacing
//! are shared with the per-app layout ([`crate::per_app`]).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::Result;
use registry_core::store::{ListWatch, Listing, Malformed, RawRecord, Scope, WatchUpdate};

use crate::agent::{Block, HealthEntry, HealthService, KvEntry};
use crate::client::Client;
use crate::error::KIND;
use crate::names;

/// Shortest pause between two blocking rounds that brought nothing new, so a
/// misbehaving index can never turn the watch into a busy loop.
const IDLE_ROUND: Duration = Duration::from_millis(50);

/// How long the blocking queries may go without an answer before the reader
/// probes the agent (`GET /v1/status/leader`, which the agent answers through
/// its servers). A blocking query waits for a change for up to its `wait`
/// (60 s by default), so its silence alone says nothing: an agent that went
/// silent (packets dropped, no reset) would leave discovery waiting
/// wait + wait/16 + request timeout (68.75 s) before noticing. The probe
/// answers in milliseconds when the agent and its servers are reachable (a
/// confirmation that the view is current); when it fails, or does not
/// answer within the request timeout, the watch ends with that error, core
/// reports the source unhealthy and resumes (a fresh read) with its backoff.
/// So a silent agent is detected within this plus the request timeout (7 s
/// with the defaults).
pub const PROBE_AFTER: Duration = Duration::from_secs(2);

/// A watch of either layout: blocking rounds that yield the next update.
#[async_trait]
pub(crate) trait Cursor: Send + 'static {
    /// The resume point of the updates.
    type Resume: Send + 'static;

    /// The next update; an error ends the watch.
    async fn next(&mut self) -> Result<WatchUpdate<Self::Resume>>;
}

/// The updates of `cursor` as a watch stream. An error is yielded and ends
/// it: core backs off and calls `watch` again, which starts a fresh cursor.
pub(crate) fn updates<C: Cursor>(cursor: C) -> BoxStream<'static, Result<WatchUpdate<C::Resume>>> {
    futures::stream::unfold(Some(cursor), |state| async move {
        let mut cursor = state?;
        match cursor.next().await {
            Ok(update) => Some((Ok(update), Some(cursor))),
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// The indexes of both halves of a view: the reader's resume point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Indexes {
    health: u64,
    kv: u64,
}

/// Both halves as last read.
struct View {
    health: Vec<HealthEntry>,
    kv: Vec<KvEntry>,
    at: Indexes,
}

pub(crate) struct ReaderShared {
    client: Arc<Client>,
    scope: Scope,
    service: String,
    prefix: String,
}

pub(crate) struct ConsulReader {
    shared: Arc<ReaderShared>,
}

impl ReaderShared {
    pub(crate) fn new(client: Arc<Client>, scope: &Scope, service: String) -> Self {
        Self { client, scope: scope.clone(), service, prefix: scope.key_prefix() }
    }

    /// Reads both halves now (no blocking).
    async fn fetch(&self) -> Result<View> {
        let ((health, health_index), (kv, kv_index)) = read_pair(&self.client, &self.service, &self.prefix).await?;
        Ok(View { health, kv, at: Indexes { health: health_index, kv: kv_index } })
    }

    async fn probe(&self) -> Result<()> {
        probe(&self.client).await
    }

    /// A listing of `view`, resumable from its indexes.
    fn listing(&self, view: &View) -> Listing<Indexes> {
        let (records, malformed) = join(&self.scope, &self.prefix, &view.health, &view.kv);
        Listing { records, malformed, resume: view.at }
    }
}

#[async_trait]
impl ListWatch for ConsulReader {
    fn kind(&self) -> &'static str {
        KIND
    }

    type Resume = Indexes;

    async fn list(&self) -> Result<Listing<Indexes>> {
        let view = self.shared.fetch().await?;
        Ok(self.shared.listing(&view))
    }

    /// Blocking queries from `from`. The watch starts with a fresh read of
    /// both halves, answered at once when its indexes differ from `from` (or
    /// went backwards: the agent restarted with fresh state).
    async fn watch(&self, from: Indexes) -> Result<BoxStream<'static, Result<WatchUpdate<Indexes>>>> {
        Ok(updates(Watch::new(Arc::clone(&self.shared), from)))
    }

    /// A healthy watch confirms within [`PROBE_AFTER`] (an answer or a
    /// probe); a probe that does not answer ends it within the request
    /// timeout after that.
    fn max_silence(&self) -> Option<Duration> {
        Some(PROBE_AFTER + self.shared.client.config.request_timeout)
    }
}

/// Which half answered a blocking round.
enum HalfAnswer {
    Health(Vec<HealthEntry>, u64),
    Kv(Vec<KvEntry>, u64),
}

/// A blocking query in flight.
type Pending<T> = Pin<Box<dyn Future<Output = Result<(Vec<T>, u64)>> + Send>>;

/// One watch stream's state.
///
/// Both blocking queries stay in flight across rounds: when one half
/// answers, only that half is asked again, so the other's request is never
/// abandoned (an abandoned blocking query would stay parked in the agent
/// until its wait ran out, and cost a new connection).
struct Watch {
    shared: Arc<ReaderShared>,
    /// Indexes of the listing core already has, until the first read.
    known: Option<Indexes>,
    view: Option<View>,
    health: Option<Pending<HealthEntry>>,
    kv: Option<Pending<KvEntry>>,
}

impl Watch {
    fn new(shared: Arc<ReaderShared>, known: Indexes) -> Self {
        Self { shared, known: Some(known), view: None, health: None, kv: None }
    }

    fn block_health(&self, index: u64) -> Pending<HealthEntry> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let block = Block { index, wait: shared.client.config.watch_wait };
            shared.client.agent.health_passing(&shared.service, Some(block)).await
        })
    }

    fn block_kv(&self, index: u64) -> Pending<KvEntry> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let block = Block { index, wait: shared.client.config.watch_wait };
            shared.client.agent.kv_list(&shared.prefix, Some(block)).await
        })
    }
}

#[async_trait]
impl Cursor for Watch {
    type Resume = Indexes;

    /// The next changed listing ([`WatchUpdate::Replace`]), or a
    /// confirmation that nothing changed ([`WatchUpdate::Progress`]: a
    /// blocking round that answered unchanged, or a probe the agent
    /// answered; see [`PROBE_AFTER`]).
    async fn next(&mut self) -> Result<WatchUpdate<Indexes>> {
        let shared = Arc::clone(&self.shared);
        loop {
            let Some(at) = self.view.as_ref().map(|v| v.at) else {
                self.health = None;
                self.kv = None;
                let view = shared.fetch().await?;
                let unchanged = self.known.take() == Some(view.at);
                let listing = (!unchanged).then(|| shared.listing(&view));
                self.view = Some(view);
                return Ok(match listing {
                    Some(listing) => WatchUpdate::Replace(listing),
                    None => WatchUpdate::Progress,
                });
            };
            if self.health.is_none() {
                self.health = Some(self.block_health(at.health));
            }
            if self.kv.is_none() {
                self.kv = Some(self.block_kv(at.kv));
            }
            let started = Instant::now();
            let probe = async {
                tokio::time::sleep(PROBE_AFTER).await;
                shared.probe().await
            };
            let answer = match (self.health.as_mut(), self.kv.as_mut()) {
                (Some(health), Some(kv)) => tokio::select! {
                    answer = health => answer.map(|(entries, index)| HalfAnswer::Health(entries, index)),
                    answer = kv => answer.map(|(entries, index)| HalfAnswer::Kv(entries, index)),
                    // The blocking queries stay in flight across the probe.
                    probed = probe => return probed.map(|()| WatchUpdate::Progress),
                },
                // Both were set just above.
                _ => continue,
            };
            // A finished future is never polled again.
            match &answer {
                Ok(HalfAnswer::Health(..)) => self.health = None,
                Ok(HalfAnswer::Kv(..)) => self.kv = None,
                Err(_) => {}
            }
            let answer = answer?;
            let (index, previous) = match &answer {
                HalfAnswer::Health(_, index) => (*index, at.health),
                HalfAnswer::Kv(_, index) => (*index, at.kv),
            };
            if index == 0 || index < previous {
                // The index went backwards (the agent restarted with fresh
                // state) or is missing: read both halves again.
                tracing::debug!(service = %shared.service, index, previous, "Consul index reset; reading again");
                self.view = None;
                pace(started).await;
                continue;
            }
            let Some(view) = self.view.as_mut() else { continue };
            let changed = match answer {
                HalfAnswer::Health(entries, index) => {
                    let changed = entries != view.health;
                    view.at.health = index;
                    view.health = entries;
                    changed
                }
                HalfAnswer::Kv(entries, index) => {
                    let changed = entries != view.kv;
                    view.at.kv = index;
                    view.kv = entries;
                    changed
                }
            };
            if changed {
                return Ok(WatchUpdate::Replace(shared.listing(view)));
            }
            // The wait ran out, or something outside our entries moved the
            // index: the view is confirmed current.
            pace(started).await;
            return Ok(WatchUpdate::Progress);
        }
    }
}

/// Reads, without blocking, the passing instances of `service` and the KV
/// entries under `kv_prefix`, each with its index (both layouts).
pub(crate) async fn read_pair(
    client: &Client,
    service: &str,
    kv_prefix: &str,
) -> Result<((Vec<HealthEntry>, u64), (Vec<KvEntry>, u64))> {
    let agent = &client.agent;
    tokio::try_join!(agent.health_passing(service, None), agent.kv_list(kv_prefix, None))
}

/// Whether the agent answers, through its servers, within the request
/// timeout: `GET /v1/status/leader` (no ACL needed), an error when it
/// fails, times out or names no leader (no read can be current then).
pub(crate) async fn probe(client: &Client) -> Result<()> {
    let leader = client.agent.leader().await?;
    if leader.is_empty() {
        return Err(registry_core::Error::unavailable(KIND, "the agent knows no cluster leader"));
    }
    Ok(())
}

/// Keeps blocking rounds that brought nothing at least [`IDLE_ROUND`] apart.
pub(crate) async fn pace(started: Instant) {
    let elapsed = started.elapsed();
    if elapsed < IDLE_ROUND {
        tokio::time::sleep(IDLE_ROUND - elapsed).await;
    }
}

impl ConsulReader {
    pub(crate) fn new(shared: ReaderShared) -> Self {
        Self { shared: Arc::new(shared) }
    }
}

// ---------------------------------------------------------------- joining

/// `<app_id>/<lease_id>/drained` below the prefix: an operator's mark
/// ([`crate::operator`]).
fn mark_of(relative: &str) -> Option<(&str, i64)> {
    instance_of(relative.strip_suffix(crate::operator::MARK_SUFFIX)?)
}

/// `<app_id>/<lease_id>` below the prefix.
fn instance_of(relative: &str) -> Option<(&str, i64)> {
    let (app_id, lease) = relative.split_once('/')?;
    if app_id.is_empty() || lease.contains('/') {
        return None;
    }
    Some((app_id, lease.parse().ok()?))
}

fn meta_of<'a>(service: &'a HealthService) -> impl Fn(&str) -> Option<&'a str> + 'a {
    move |key| service.meta.as_ref().and_then(|m| m.get(key)).map(String::as_str)
}

/// True when a service instance's meta places it in `scope` (the namespace
/// meta is absent on nodes written by the Go framework).
fn in_scope(scope: &Scope, service: &HealthService) -> bool {
    let meta = meta_of(service);
    meta("env") == Some(scope.env.as_str()) && meta("namespace").is_none_or(|ns| ns == scope.namespace)
}

/// Joins the passing service instances and the KV entries of a scope into records.
///
/// - KV entry `<app_id>/<lease_id>` held by a session, whose service
///   instance is passing → the KV value, under the service ID;
/// - passing instance of the Go framework (no `namespace` meta) whose `env`
///   meta is the reader's env → its `node` meta (a Go reader's rule);
/// - passing instance of ours whose KV entry is not written yet → nothing yet
///   (its `node` meta is the Go-shaped copy, without our fields);
/// - KV entry whose instance is not passing → nothing (it is expiring);
/// - KV entry `<app_id>/<lease_id>/drained` held by a session → the
///   operator's mark on that record ([`RawRecord::drained_by_operator`]);
/// - anything else under the prefix or the service name → a [`Malformed`]
///   entry core skips and counts.
pub(crate) fn join(
    scope: &Scope,
    prefix: &str,
    health: &[HealthEntry],
    kv: &[KvEntry],
) -> (Vec<RawRecord>, Vec<Malformed>) {
    let passing: HashMap<&str, &HealthService> = health.iter().map(|e| (e.service.id.as_str(), &e.service)).collect();
    let mut used: HashSet<&str> = HashSet::new();
    let mut records = Vec::with_capacity(health.len());
    let mut malformed = Vec::new();
    // Operator marks, by instance, with the session holding them: a mark
    // counts only when the record's own session holds it.
    let marks: HashMap<(&str, i64), &str> = kv
        .iter()
        .filter_map(|e| {
            let mark = mark_of(e.key.strip_prefix(prefix).unwrap_or(&e.key))?;
            Some((mark, e.session.as_deref()?))
        })
        .collect();
    for entry in kv {
        let relative = entry.key.strip_prefix(prefix).unwrap_or(&entry.key);
        if relative.is_empty() || relative.ends_with('/') {
            // A folder entry (the UI creates them): not a record.
            continue;
        }
        if entry.session.is_some() && mark_of(relative).is_some() {
            continue;
        }
        let ours = instance_of(relative).filter(|_| entry.session.is_some());
        let Some((app_id, lease_id)) = ours else {
            let reason = format!("KV entry `{}` is not `<app_id>/<lease_id>` held by a registry session", entry.key);
            malformed.push(Malformed::new(format!("kv:{}", entry.key), reason));
            continue;
        };
        let service_id = names::service_id(scope, app_id, lease_id);
        let Some((id, service)) = passing.get_key_value(service_id.as_str()) else { continue };
        if !in_scope(scope, service) {
            continue;
        }
        used.insert(id);
        let value = match entry.value.as_deref().map(|v| base64::engine::general_purpose::STANDARD.decode(v)) {
            None => String::new(),
            Some(Ok(bytes)) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    malformed.push(Malformed::new(service_id, format!("KV entry `{}` is not UTF-8", entry.key)));
                    continue;
                }
            },
            Some(Err(e)) => {
                malformed.push(Malformed::new(service_id, format!("KV entry `{}` is not base64: {e}", entry.key)));
                continue;
            }
        };
        let marked = entry.session.as_deref().is_some_and(|s| marks.get(&(app_id, lease_id)) == Some(&s));
        records.push(RawRecord::new(service_id, value).with_drained_by_operator(marked));
    }
    for entry in health {
        let service = &entry.service;
        if used.contains(service.id.as_str()) {
            continue;
        }
        let meta = meta_of(service);
        let ours = meta("namespace").is_some();
        let go_node = meta("node").filter(|n| !n.is_empty() && !ours);
        if let Some(node) = go_node {
            if meta("env") == Some(scope.env.as_str()) {
                records.push(RawRecord::new(service.id.clone(), node));
            }
            // Another env under the same service name: not this reader's.
        } else if in_scope(scope, service) && meta("app_id").is_some_and(|a| !a.is_empty()) {
            // Registered, KV record not written yet (or being rewritten by `renew`).
        } else {
            let reason = format!(
                "service instance `{}` of `{}` on node `{}` has no registry meta and no KV record",
                service.id, service.service, entry.node.node
            );
            malformed.push(Malformed::new(service.id.clone(), reason));
        }
    }
    (records, malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::HealthNode;

    fn scope() -> Scope {
        Scope::new("ns", "dev")
    }

    fn service(id: &str, meta: &[(&str, &str)]) -> HealthEntry {
        HealthEntry {
            node: HealthNode { node: "n1".into() },
            service: HealthService {
                id: id.into(),
                service: "ns-dev".into(),
                meta: Some(meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            },
        }
    }

    fn kv(key: &str, value: &str, session: Option<&str>) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            session: session.map(str::to_owned),
            modify_index: 7,
        }
    }

    fn records(health: &[HealthEntry], kv: &[KvEntry]) -> Vec<(String, String)> {
        let mut out: Vec<_> = join(&scope(), "ns/dev/", health, kv).0.into_iter().map(|r| (r.key, r.value)).collect();
        out.sort();
        out
    }

    fn malformed(health: &[HealthEntry], kv: &[KvEntry]) -> Vec<Malformed> {
        join(&scope(), "ns/dev/", health, kv).1
    }

    const OURS: &[(&str, &str)] = &[("app_id", "app"), ("env", "dev"), ("namespace", "ns")];

    #[test]
    fn passing_instance_with_kv_record_is_listed_from_kv() {
        let got = records(&[service("ns-dev-app-1", OURS)], &[kv("ns/dev/app/1", "{\"a\":1}", Some("s"))]);
        assert_eq!(got, [("ns-dev-app-1".to_owned(), "{\"a\":1}".to_owned())]);
    }

    #[test]
    fn an_operator_mark_beside_the_record_is_reported_on_it() {
        let kv = [kv("ns/dev/app/1", "{}", Some("s")), kv("ns/dev/app/1/drained", "operator", Some("s"))];
        let (records, malformed) = join(&scope(), "ns/dev/", &[service("ns-dev-app-1", OURS)], &kv);
        assert!(malformed.is_empty(), "{malformed:?}");
        assert_eq!(records.len(), 1);
        assert!(records[0].drained_by_operator);
        let (records, _) = join(&scope(), "ns/dev/", &[service("ns-dev-app-1", OURS)], &kv[..1]);
        assert!(!records[0].drained_by_operator);
    }

    #[test]
    fn kv_record_without_passing_instance_is_hidden() {
        assert!(records(&[], &[kv("ns/dev/app/1", "{}", Some("s"))]).is_empty());
    }

    #[test]
    fn go_instance_uses_node_meta_and_ours_waits_for_kv() {
        let go = [("app_id", "app"), ("env", "dev"), ("node", "{\"n\":1}")];
        let mut ours_with_node = OURS.to_vec();
        ours_with_node.push(("node", "{\"go\":1}"));
        let got = records(
            &[
                service("ns-dev-app-1-8fa20388-6adf-4c21-8087-4f0e63c59c6e", &go),
                service("ns-dev-app-2", OURS),
                service("ns-dev-app-3", &ours_with_node),
            ],
            &[],
        );
        assert_eq!(got, [("ns-dev-app-1-8fa20388-6adf-4c21-8087-4f0e63c59c6e".to_owned(), "{\"n\":1}".to_owned())]);
    }

    #[test]
    fn go_instance_of_another_env_is_not_listed() {
        let go = [("app_id", "app"), ("env", "staging"), ("node", "{\"n\":1}")];
        assert!(records(&[service("ns-dev-app-1-x", &go)], &[]).is_empty());
    }

    #[test]
    fn foreign_entries_are_reported_malformed_not_records() {
        let health = [service("web-1", &[("owner", "someone")])];
        let kv = [kv("ns/dev/garbage", "{not json", None), kv("ns/dev/app/1", "{}", None), kv("ns/dev/", "", None)];
        assert!(records(&health, &kv).is_empty());
        let got = malformed(&health, &kv);
        let mut keys: Vec<&str> = got.iter().map(|m| m.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["kv:ns/dev/app/1", "kv:ns/dev/garbage", "web-1"], "{got:?}");
        assert!(got.iter().all(|m| !m.reason.is_empty()));
    }

    #[test]
    fn instances_of_another_namespace_with_the_same_service_name_are_not_joined() {
        let other = [("app_id", "app"), ("env", "dev"), ("namespace", "ns2")];
        let (health, kv) = ([service("ns-dev-app-1", &other)], [kv("ns/dev/app/1", "{}", Some("s"))]);
        assert!(records(&health, &kv).is_empty());
        assert_eq!(malformed(&health, &kv).len(), 1);
    }
}
