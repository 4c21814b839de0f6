//! Reading a scope in the per-app layout ([`Layout::PerApp`](crate::Layout::PerApp)):
//! one service `<namespace>-<env>-<app_id>` per app, watched through KV.
//!
//! The single-service layout blocks on the health of the env's one service
//! and on the env's whole KV prefix, so every change answers with the whole
//! env (hashicorp/consul#4984). Here discovery holds:
//!
//! - one blocking query on the env's **app folders**
//!   (`GET /v1/kv/<namespace>/<env>/?keys&separator=/`): it wakes on any KV
//!   change in the env and answers with the app names only, so apps that
//!   appear or vanish are noticed;
//! - one blocking query per app on its **KV prefix**
//!   (`<namespace>/<env>/<app_id>/`, recursive): an instance's KV record is
//!   acquired by a session bound to its TTL check with `Behavior=delete`, so
//!   every change of an instance's liveness changes that prefix in the same
//!   Raft write (register: record written; uninstall, expiry or a critical
//!   check: record deleted; a renewal after a lapse: record written again;
//!   an update of the node: record rewritten; an operator's mark: a key
//!   beside it). When an app's prefix changed, its service's passing
//!   instances are read (`GET /v1/health/service/<name>?passing`, not
//!   blocking) and joined with the KV entries exactly as in the
//!   single-service layout ([`crate::reader::join`]).
//!
//! A service instance that is not ours under an app's service name (no
//! registry meta, no KV record) is reported malformed at that app's next
//! KV change, not when it registers: only KV wakes a query here.
//!
//! A change therefore costs its own app's records plus the list of app
//! names, and reaches core as incremental [`WatchUpdate::Changes`] (the
//! difference to the app's previous records), not a whole-env listing. A
//! discoverer holds `1 + apps` blocking connections to its agent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, StreamExt, TryStreamExt};
use registry_core::Result;
use registry_core::store::{Change, ListWatch, Listing, Malformed, RawRecord, Scope, WatchUpdate};

use crate::agent::{Block, HealthEntry, KvEntry};
use crate::client::Client;
use crate::error::KIND;
use crate::names;
use crate::reader::{Cursor, PROBE_AFTER, join, pace, probe, read_pair, updates};

/// Shortest time between the starts of two rounds of the app-folder query.
/// That query wakes on every change in the env; the apps it already lists
/// have queries of their own, so this delays only the first instance of a
/// new app (by at most this), while a burst of installs costs one folder
/// listing per round instead of one per install.
pub(crate) const FOLDERS_ROUND: Duration = Duration::from_millis(250);

/// Apps read at once by a full read (the agent client caps its own
/// non-blocking requests at 64 in flight).
const FETCH_CONCURRENCY: usize = 32;

/// The resume point: the index of the app folders and of each app's KV prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AppIndexes {
    folders: u64,
    apps: Arc<BTreeMap<String, u64>>,
}

/// One app as last read: its KV index and what the join made of it.
#[derive(Default)]
struct AppView {
    kv_index: u64,
    records: BTreeMap<String, RawRecord>,
    malformed: BTreeMap<String, Malformed>,
}

/// The env as last read.
struct EnvView {
    folders_index: u64,
    /// Entries directly below the env's prefix that are not app folders.
    folder_malformed: BTreeMap<String, Malformed>,
    apps: BTreeMap<String, AppView>,
}

impl EnvView {
    fn resume(&self) -> AppIndexes {
        AppIndexes {
            folders: self.folders_index,
            apps: Arc::new(self.apps.iter().map(|(app, view)| (app.clone(), view.kv_index)).collect()),
        }
    }
}

/// The app folders below the env's prefix, and the other entries there.
struct Folders {
    apps: BTreeSet<String>,
    malformed: BTreeMap<String, Malformed>,
}

/// Sorts the keys directly below the env's prefix into app folders and
/// malformed entries (a key that is not a folder, or a folder whose name
/// cannot name a per-app service).
fn folders(scope: &Scope, prefix: &str, keys: &[String]) -> Folders {
    let mut folders = Folders { apps: BTreeSet::new(), malformed: BTreeMap::new() };
    for key in keys {
        let relative = key.strip_prefix(prefix).unwrap_or(key);
        if relative.is_empty() {
            // The env's own folder entry (the UI creates them).
            continue;
        }
        let reason = match relative.strip_suffix('/') {
            Some(app) if names::validate_per_app(scope, Some(app)).is_ok() => {
                folders.apps.insert(app.to_owned());
                continue;
            }
            Some(_) => format!("KV folder `{key}` is not an app id the per-app layout can name a service after"),
            None => format!("KV entry `{key}` is not `<app_id>/<lease_id>` held by a registry session"),
        };
        let key = format!("kv:{key}");
        folders.malformed.insert(key.clone(), Malformed::new(key, reason));
    }
    folders
}

struct Shared {
    client: Arc<Client>,
    scope: Scope,
    /// `<namespace>/<env>/`.
    prefix: String,
}

impl Shared {
    fn app_prefix(&self, app: &str) -> String {
        format!("{}{app}/", self.prefix)
    }

    fn block(&self, index: u64) -> Block {
        Block { index, wait: self.client.config.watch_wait }
    }

    fn app_view(&self, health: &[HealthEntry], kv: &[KvEntry], kv_index: u64) -> AppView {
        let (records, malformed) = join(&self.scope, &self.prefix, health, kv);
        AppView {
            kv_index,
            records: records.into_iter().map(|r| (r.key.clone(), r)).collect(),
            malformed: malformed.into_iter().map(|m| (m.key.clone(), m)).collect(),
        }
    }

    /// Reads one app now (no blocking).
    async fn fetch_app(&self, app: &str) -> Result<AppView> {
        let service = names::app_service_name(&self.scope, app);
        let ((health, _), (kv, kv_index)) = read_pair(&self.client, &service, &self.app_prefix(app)).await?;
        Ok(self.app_view(&health, &kv, kv_index))
    }

    /// Reads the apps of `names` now, [`FETCH_CONCURRENCY`] at a time.
    async fn fetch_apps(&self, names: impl IntoIterator<Item = String>) -> Result<Vec<(String, AppView)>> {
        futures::stream::iter(names)
            .map(|app| async move { self.fetch_app(&app).await.map(|view| (app, view)) })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Reads the whole env now: its app folders, then every app.
    async fn fetch_all(&self) -> Result<EnvView> {
        let (keys, folders_index) = self.client.agent.kv_folders(&self.prefix, None).await?;
        let folders = folders(&self.scope, &self.prefix, &keys);
        let apps = self.fetch_apps(folders.apps).await?.into_iter().collect();
        Ok(EnvView { folders_index, folder_malformed: folders.malformed, apps })
    }

    fn listing(&self, view: &EnvView) -> Listing<AppIndexes> {
        let records = view.apps.values().flat_map(|app| app.records.values().cloned()).collect();
        let malformed = view
            .folder_malformed
            .values()
            .chain(view.apps.values().flat_map(|app| app.malformed.values()))
            .cloned()
            .collect();
        Listing { records, malformed, resume: view.resume() }
    }
}

/// The [`ListWatch`] of the per-app layout.
pub(crate) struct PerAppReader {
    shared: Arc<Shared>,
}

impl PerAppReader {
    pub(crate) fn new(client: Arc<Client>, scope: &Scope) -> Self {
        Self { shared: Arc::new(Shared { client, scope: scope.clone(), prefix: scope.key_prefix() }) }
    }
}

#[async_trait]
impl ListWatch for PerAppReader {
    type Resume = AppIndexes;

    fn kind(&self) -> &'static str {
        KIND
    }

    async fn list(&self) -> Result<Listing<AppIndexes>> {
        let view = self.shared.fetch_all().await?;
        Ok(self.shared.listing(&view))
    }

    /// Blocking queries from `from`. The watch starts with a fresh read of
    /// the env, answered at once when its indexes differ from `from`.
    async fn watch(&self, from: AppIndexes) -> Result<BoxStream<'static, Result<WatchUpdate<AppIndexes>>>> {
        Ok(updates(Watch::new(Arc::clone(&self.shared), from)))
    }

    /// As in the single-service layout: a probe of the agent after
    /// [`PROBE_AFTER`] without an answer, bounded by the request timeout.
    fn max_silence(&self) -> Option<Duration> {
        Some(PROBE_AFTER + self.shared.client.config.request_timeout)
    }
}

/// What one app's blocking query brought.
enum AppAnswer {
    /// The wait ran out, or the index moved without a change of ours.
    Unchanged,
    /// The prefix changed: its entries, their index, and the app's passing
    /// instances read after them. An index lower than the one asked for
    /// (Consul reaped the tombstone that held the prefix's highest index, or
    /// the agent restarted with fresh state) is a change too: the answer is
    /// a whole listing of the prefix, and the next query blocks from it.
    Changed { kv: Vec<KvEntry>, kv_index: u64, health: Vec<HealthEntry> },
    /// No index in the answer: read the app again.
    Reset,
}

/// A blocking query's answer.
enum Answer {
    Folders(Result<(Vec<String>, u64)>),
    App(String, Result<AppAnswer>),
}

type Pending = Abortable<BoxFuture<'static, Answer>>;

/// One watch stream's state. Every blocking query stays in flight until it
/// answers (an abandoned one would hold its connection in the agent until
/// its wait ran out). An app whose folder vanished (its last instance left)
/// keeps its query until a whole wait passes with no change: an app that
/// comes back — the restart of its only instance — reuses it.
struct Watch {
    shared: Arc<Shared>,
    /// Indexes of the listing core already has, until the first read.
    known: Option<AppIndexes>,
    view: Option<EnvView>,
    resume: AppIndexes,
    pending: FuturesUnordered<Pending>,
    handles: HashMap<String, AbortHandle>,
    /// Apps whose folder vanished, kept (with no records) until their query
    /// answers unchanged.
    vanished: HashSet<String>,
    /// When the last folder round was sent (see [`FOLDERS_ROUND`]).
    folders_issued: Option<Instant>,
}

impl Watch {
    fn new(shared: Arc<Shared>, known: AppIndexes) -> Self {
        Self {
            shared,
            resume: known.clone(),
            known: Some(known),
            view: None,
            pending: FuturesUnordered::new(),
            handles: HashMap::new(),
            vanished: HashSet::new(),
            folders_issued: None,
        }
    }

    fn push(&mut self, app: Option<&str>, future: BoxFuture<'static, Answer>) {
        let (handle, registration) = AbortHandle::new_pair();
        if let Some(app) = app
            && let Some(previous) = self.handles.insert(app.to_owned(), handle)
        {
            previous.abort();
        }
        self.pending.push(Abortable::new(future, registration));
    }

    fn block_folders(&mut self, index: u64) {
        let shared = Arc::clone(&self.shared);
        let now = Instant::now();
        let delay =
            self.folders_issued.map_or(Duration::ZERO, |at| (at + FOLDERS_ROUND).saturating_duration_since(now));
        self.folders_issued = Some(now + delay);
        let future = async move {
            // Apps already known are watched by their own queries: only a new
            // app waits for this round, and an install storm costs a folder
            // listing per round, not per install.
            tokio::time::sleep(delay).await;
            let started = Instant::now();
            let answer = shared.client.agent.kv_folders(&shared.prefix, Some(shared.block(index))).await;
            if answer.as_ref().is_ok_and(|(_, next)| *next == index) {
                pace(started).await;
            }
            Answer::Folders(answer)
        };
        self.push(None, future.boxed());
    }

    fn block_app(&mut self, app: &str, index: u64) {
        let shared = Arc::clone(&self.shared);
        let name = app.to_owned();
        let future = async move {
            let started = Instant::now();
            let answer = async {
                let (kv, kv_index) =
                    shared.client.agent.kv_list(&shared.app_prefix(&name), Some(shared.block(index))).await?;
                if kv_index == 0 {
                    pace(started).await;
                    return Ok(AppAnswer::Reset);
                }
                if kv_index == index {
                    pace(started).await;
                    return Ok(AppAnswer::Unchanged);
                }
                let service = names::app_service_name(&shared.scope, &name);
                let (health, _) = shared.client.agent.health_passing(&service, None).await?;
                Ok(AppAnswer::Changed { kv, kv_index, health })
            }
            .await;
            Answer::App(name, answer)
        };
        self.push(Some(app), future.boxed());
    }

    fn stop_all(&mut self) {
        for (_, handle) in self.handles.drain() {
            handle.abort();
        }
        self.pending = FuturesUnordered::new();
        self.vanished.clear();
    }

    fn set_index(&mut self, app: &str, index: Option<u64>) {
        let apps = Arc::make_mut(&mut self.resume.apps);
        match index {
            Some(index) => apps.insert(app.to_owned(), index),
            None => apps.remove(app),
        };
    }
}

#[async_trait]
impl Cursor for Watch {
    type Resume = AppIndexes;

    /// The next change ([`WatchUpdate::Changes`], or
    /// [`WatchUpdate::Replace`] after a fresh read), or a confirmation that
    /// nothing changed ([`WatchUpdate::Progress`]).
    async fn next(&mut self) -> Result<WatchUpdate<AppIndexes>> {
        loop {
            if self.view.is_none() {
                self.stop_all();
                let view = self.shared.fetch_all().await?;
                let listing = self.shared.listing(&view);
                let unchanged = self.known.take().as_ref() == Some(&listing.resume);
                self.resume = listing.resume.clone();
                self.block_folders(view.folders_index);
                for (app, app_view) in &view.apps {
                    self.block_app(app, app_view.kv_index);
                }
                self.view = Some(view);
                return Ok(if unchanged { WatchUpdate::Progress } else { WatchUpdate::Replace(listing) });
            }
            let client = Arc::clone(&self.shared.client);
            let probe = async move {
                tokio::time::sleep(PROBE_AFTER).await;
                probe(&client).await
            };
            let answer = tokio::select! {
                Some(answer) = self.pending.next() => answer,
                probed = probe => return probed.map(|()| WatchUpdate::Progress),
            };
            // An aborted query was replaced.
            let Ok(answer) = answer else { continue };
            let update = match answer {
                Answer::Folders(answer) => self.on_folders(answer?).await?,
                Answer::App(app, answer) => self.on_app(app, answer?).await?,
            };
            if let Some(update) = update {
                return Ok(update);
            }
        }
    }
}

impl Watch {
    /// The app folders answered. `None`: the view must be read again.
    async fn on_folders(&mut self, (keys, index): (Vec<String>, u64)) -> Result<Option<WatchUpdate<AppIndexes>>> {
        let Some(previous) = self.view.as_ref().map(|v| v.folders_index) else { return Ok(None) };
        if index == 0 {
            tracing::debug!(prefix = %self.shared.prefix, previous, "no Consul index; reading the env again");
            self.view = None;
            return Ok(None);
        }
        self.block_folders(index);
        if index == previous {
            return Ok(Some(WatchUpdate::Progress));
        }
        let folders = folders(&self.shared.scope, &self.shared.prefix, &keys);
        let Some(view) = self.view.as_ref() else { return Ok(None) };
        let gone: Vec<String> = view
            .apps
            .keys()
            .filter(|app| !folders.apps.contains(*app) && !self.vanished.contains(*app))
            .cloned()
            .collect();
        let added: Vec<String> = folders.apps.iter().filter(|app| !view.apps.contains_key(*app)).cloned().collect();
        self.vanished.retain(|app| !folders.apps.contains(app));
        let fetched = self.shared.fetch_apps(added).await?;
        let mut changes = Vec::new();
        let Some(view) = self.view.as_mut() else { return Ok(None) };
        diff_malformed(&view.folder_malformed, &folders.malformed, &BTreeMap::new(), &mut changes);
        view.folders_index = index;
        view.folder_malformed = folders.malformed;
        for app in gone {
            // Its query stays: the records go, the app is kept until the
            // query answers unchanged.
            if let Some(kept) = view.apps.get_mut(&app) {
                let old = std::mem::replace(kept, AppView { kv_index: kept.kv_index, ..AppView::default() });
                diff(&old, kept, &mut changes);
            }
            self.vanished.insert(app);
        }
        let mut started = Vec::with_capacity(fetched.len());
        for (app, new) in fetched {
            diff(&AppView::default(), &new, &mut changes);
            started.push((app.clone(), new.kv_index));
            view.apps.insert(app, new);
        }
        for (app, index) in started {
            self.block_app(&app, index);
            self.set_index(&app, Some(index));
        }
        self.resume.folders = index;
        Ok(Some(self.update(changes)))
    }

    /// An app's prefix answered.
    async fn on_app(&mut self, app: String, answer: AppAnswer) -> Result<Option<WatchUpdate<AppIndexes>>> {
        let Some(old_index) = self.view.as_ref().and_then(|v| v.apps.get(&app)).map(|a| a.kv_index) else {
            // The app vanished meanwhile.
            return Ok(None);
        };
        let new = match answer {
            AppAnswer::Unchanged => {
                let empty = self
                    .view
                    .as_ref()
                    .and_then(|v| v.apps.get(&app))
                    .is_some_and(|a| a.records.is_empty() && a.malformed.is_empty());
                if empty && self.vanished.remove(&app) {
                    // A whole wait without its folder: forget the app.
                    if let Some(view) = self.view.as_mut() {
                        view.apps.remove(&app);
                    }
                    self.handles.remove(&app);
                    self.set_index(&app, None);
                } else {
                    self.block_app(&app, old_index);
                }
                return Ok(Some(WatchUpdate::Progress));
            }
            AppAnswer::Reset => {
                tracing::debug!(app, "Consul index reset; reading the app again");
                self.shared.fetch_app(&app).await?
            }
            AppAnswer::Changed { kv, kv_index, health } => self.shared.app_view(&health, &kv, kv_index),
        };
        let mut changes = Vec::new();
        let Some(view) = self.view.as_mut() else { return Ok(None) };
        let index = new.kv_index;
        if let Some(old) = view.apps.insert(app.clone(), new)
            && let Some(new) = view.apps.get(&app)
        {
            diff(&old, new, &mut changes);
        }
        self.block_app(&app, index);
        self.set_index(&app, Some(index));
        Ok(Some(self.update(changes)))
    }

    fn update(&self, changes: Vec<Change>) -> WatchUpdate<AppIndexes> {
        if changes.is_empty() {
            WatchUpdate::Progress
        } else {
            WatchUpdate::Changes { changes, resume: self.resume.clone() }
        }
    }
}

/// The changes that turn `old` into `new`: deletes of records gone, upserts
/// of records new or changed, malformed entries new or changed.
fn diff(old: &AppView, new: &AppView, out: &mut Vec<Change>) {
    for key in old.records.keys() {
        // A record that turned malformed is deleted too: the malformed
        // entry alone only counts it.
        if !new.records.contains_key(key) {
            out.push(Change::Delete { key: key.clone() });
        }
    }
    for (key, record) in &new.records {
        if old.records.get(key) != Some(record) {
            out.push(Change::Upsert(record.clone()));
        }
    }
    diff_malformed(&old.malformed, &new.malformed, &new.records, out);
}

/// Malformed entries new or changed in `new`; entries gone from `old` (and
/// not records now) are deleted, which forgets them.
fn diff_malformed(
    old: &BTreeMap<String, Malformed>,
    new: &BTreeMap<String, Malformed>,
    records: &BTreeMap<String, RawRecord>,
    out: &mut Vec<Change>,
) {
    for key in old.keys() {
        if !new.contains_key(key) && !records.contains_key(key) {
            out.push(Change::Delete { key: key.clone() });
        }
    }
    for (key, entry) in new {
        if old.get(key) != Some(entry) {
            out.push(Change::Malformed(entry.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_apps_and_the_rest_is_malformed() {
        let scope = Scope::new("ns", "dev");
        let keys: Vec<String> = ["ns/dev/", "ns/dev/orders/", "ns/dev/garbage", "ns/dev/bad_app/", "ns/dev/web-1/"]
            .map(String::from)
            .into();
        let got = folders(&scope, "ns/dev/", &keys);
        assert_eq!(got.apps.into_iter().collect::<Vec<_>>(), ["orders", "web-1"]);
        assert_eq!(got.malformed.keys().collect::<Vec<_>>(), ["kv:ns/dev/bad_app/", "kv:ns/dev/garbage"]);
    }

    fn record(key: &str, value: &str) -> (String, RawRecord) {
        (key.to_owned(), RawRecord::new(key, value))
    }

    fn kinds(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upsert(r) => format!("upsert {}", r.key),
                Change::Delete { key } => format!("delete {key}"),
                Change::Malformed(m) => format!("malformed {}", m.key),
            })
            .collect()
    }

    #[test]
    fn diff_reports_only_what_changed() {
        let old = AppView {
            kv_index: 1,
            records: [record("a-1", "{1}"), record("a-2", "{2}"), record("a-3", "{3}")].into(),
            malformed: [("kv:x".to_owned(), Malformed::new("kv:x", "bad"))].into(),
        };
        let new = AppView {
            kv_index: 2,
            records: [record("a-1", "{1}"), record("a-2", "{2'}"), record("a-4", "{4}")].into(),
            malformed: [
                ("kv:x".to_owned(), Malformed::new("kv:x", "bad")),
                ("kv:y".to_owned(), Malformed::new("kv:y", "bad")),
            ]
            .into(),
        };
        let mut changes = Vec::new();
        diff(&old, &new, &mut changes);
        assert_eq!(kinds(&changes), ["delete a-3", "upsert a-2", "upsert a-4", "malformed kv:y"]);
        let mut none = Vec::new();
        diff(&new, &new, &mut none);
        assert!(none.is_empty(), "{:?}", kinds(&none));
        let mut gone = Vec::new();
        diff(&new, &AppView::default(), &mut gone);
        assert_eq!(kinds(&gone), ["delete a-1", "delete a-2", "delete a-4", "delete kv:x", "delete kv:y"]);
    }

    #[test]
    fn a_record_turned_malformed_is_one_malformed_change() {
        let old = AppView { kv_index: 1, records: [record("a-1", "{1}")].into(), malformed: BTreeMap::new() };
        let new = AppView {
            kv_index: 2,
            records: BTreeMap::new(),
            malformed: [("a-1".to_owned(), Malformed::new("a-1", "not UTF-8"))].into(),
        };
        let mut changes = Vec::new();
        diff(&old, &new, &mut changes);
        assert_eq!(kinds(&changes), ["delete a-1", "malformed a-1"]);
    }
}
