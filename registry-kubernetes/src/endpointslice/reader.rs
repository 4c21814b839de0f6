//! [`SliceReader`]: watches the env's Services and every EndpointSlice and
//! joins them into records through the [`View`](super::view::View).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use registry_core::store::{RawRecord, StoreEvent, StoreReader};

use super::parse::{Parsed, parse_service};
use super::*;
use crate::error::map_watcher;
use crate::watch::{MAX_SILENCE, Source, probed, watch_objects};

/// Discovery in `endpointslice` mode (see the module docs).
pub(crate) struct SliceReader {
    view: View,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
}

impl SliceReader {
    pub(crate) fn new(view: View, services: Api<Service>, slices: Api<EndpointSlice>) -> Self {
        Self { view, services, slices }
    }
}

impl StoreReader for SliceReader {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let join = Join::new(self.view.clone(), self.services.clone(), self.slices.clone());
        probed(join, self.services.clone().into_client())
    }

    fn max_silence(&self) -> Option<Duration> {
        Some(MAX_SILENCE)
    }
}

/// One input of the join.
pub(crate) enum Input {
    Service(Box<std::result::Result<Event<Service>, watcher::Error>>),
    Slice(Box<std::result::Result<Event<EndpointSlice>, watcher::Error>>),
}

/// Half of the join: one watched resource's objects.
pub(super) struct Half<T> {
    objects: HashMap<String, T>,
    /// Objects gathered during a listing.
    pending: Option<HashMap<String, T>>,
    watching: bool,
}

impl<T> Default for Half<T> {
    fn default() -> Self {
        Self { objects: HashMap::new(), pending: None, watching: false }
    }
}

/// What changed in a [`Half`]: nothing, one object's name, or everything (a listing).
pub(super) enum Touched {
    None,
    One(String),
    All,
}

impl<T> Half<T> {
    /// Applies an event, with `value` turning an object into what is kept.
    fn apply<K: kube::Resource>(&mut self, event: Event<K>, value: impl Fn(&K) -> T) -> Touched {
        match event {
            Event::Init => {
                self.pending = Some(HashMap::new());
                self.watching = false;
                Touched::None
            }
            Event::InitApply(object) => {
                self.pending.get_or_insert_with(HashMap::new).insert(object.name_any(), value(&object));
                Touched::None
            }
            Event::InitDone => {
                self.objects = self.pending.take().unwrap_or_default();
                self.watching = true;
                Touched::All
            }
            Event::Apply(object) => {
                let name = object.name_any();
                self.objects.insert(name.clone(), value(&object));
                Touched::One(name)
            }
            Event::Delete(object) => {
                let name = object.name_any();
                self.objects.remove(&name);
                Touched::One(name)
            }
        }
    }
}

/// The join of Services and EndpointSlices, diffed into store events.
pub(crate) struct Join {
    view: View,
    services_api: Api<Service>,
    slices_api: Api<EndpointSlice>,
    services: Half<Parsed>,
    /// Slice name → (its Service's name, the slice).
    slices: Half<(String, EndpointSlice)>,
    /// The first listing of both was reported (`Reset` … `Synced`).
    started: bool,
    /// What core was told: Service name → its records by key.
    shown: HashMap<String, BTreeMap<String, RawRecord>>,
    /// Service name → the reason it was last reported malformed.
    malformed: HashMap<String, String>,
}

impl Join {
    pub(crate) fn new(view: View, services_api: Api<Service>, slices_api: Api<EndpointSlice>) -> Self {
        Self {
            view,
            services_api,
            slices_api,
            services: Half::default(),
            slices: Half::default(),
            started: false,
            shown: HashMap::new(),
            malformed: HashMap::new(),
        }
    }

    /// Applies one input.
    pub(crate) fn input(&mut self, input: Input) -> Vec<StoreEvent> {
        match input {
            Input::Service(event) => match *event {
                Err(error) => vec![StoreEvent::Error(map_watcher(error, SERVICES))],
                Ok(event) => {
                    let names = self.view.names.clone();
                    match self.services.apply(event, |s| parse_service(&names, s)) {
                        Touched::None => Vec::new(),
                        Touched::One(name) => self.refresh(&[name]),
                        Touched::All => self.refresh_all(),
                    }
                }
            },
            Input::Slice(event) => match *event {
                Err(error) => vec![StoreEvent::Error(map_watcher(error, SLICES))],
                Ok(event) => {
                    let before = match &event {
                        Event::Apply(s) | Event::Delete(s) => {
                            self.slices.objects.get(&s.name_any()).map(|(service, _)| service.clone())
                        }
                        _ => None,
                    };
                    let service_of =
                        |s: &EndpointSlice| s.labels().get(SERVICE_NAME_LABEL).cloned().unwrap_or_default();
                    match self.slices.apply(event, |s| (service_of(s), s.clone())) {
                        Touched::None => Vec::new(),
                        Touched::All => self.refresh_all(),
                        Touched::One(slice) => {
                            let mut services: Vec<String> = before.into_iter().collect();
                            if let Some((service, _)) = self.slices.objects.get(&slice) {
                                services.push(service.clone());
                            }
                            services.dedup();
                            self.refresh(&services)
                        }
                    }
                }
            },
        }
    }

    fn both_watching(&self) -> bool {
        self.services.watching && self.slices.watching
    }

    /// Every Service, after a listing.
    fn refresh_all(&mut self) -> Vec<StoreEvent> {
        let mut names: BTreeSet<String> = self.services.objects.keys().cloned().collect();
        names.extend(self.shown.keys().cloned());
        names.extend(self.malformed.keys().cloned());
        let names: Vec<String> = names.into_iter().collect();
        self.refresh(&names)
    }

    /// Recomputes the records of `services` and reports the difference
    /// (everything, framed by `Reset` and `Synced`, the first time both
    /// halves have listed).
    fn refresh(&mut self, services: &[String]) -> Vec<StoreEvent> {
        if !self.started {
            if !self.both_watching() {
                return Vec::new();
            }
            self.started = true;
            let mut out = vec![StoreEvent::Reset];
            let mut all: Vec<String> = self.services.objects.keys().cloned().collect();
            all.sort();
            for service in all {
                out.extend(self.diff(&service));
            }
            out.push(StoreEvent::Synced);
            return out;
        }
        let mut out = Vec::new();
        for service in services {
            out.extend(self.diff(service));
        }
        out
    }

    /// The events that bring core's view of `service` up to date.
    fn diff(&mut self, service: &str) -> Vec<StoreEvent> {
        let (records, malformed) = match self.services.objects.get(service) {
            None => (Vec::new(), None),
            Some(Parsed::Malformed(reason)) => (Vec::new(), Some(reason.clone())),
            Some(Parsed::App(app)) => {
                let slices: Vec<&EndpointSlice> =
                    self.slices.objects.values().filter(|(s, _)| s == service).map(|(_, slice)| slice).collect();
                match self.view.records(service, app, &slices) {
                    Ok(records) => (records, None),
                    Err(reason) => (Vec::new(), Some(reason)),
                }
            }
        };
        let mut out = Vec::new();
        match malformed {
            Some(reason) => {
                if self.malformed.get(service) != Some(&reason) {
                    let key = format!("services/{service}");
                    out.push(StoreEvent::Malformed { key, reason: reason.clone() });
                    self.malformed.insert(service.to_owned(), reason);
                }
            }
            None => {
                self.malformed.remove(service);
            }
        }
        let current: BTreeMap<String, RawRecord> = records.into_iter().map(|r| (r.key.clone(), r)).collect();
        let previous = self.shown.remove(service).unwrap_or_default();
        for key in previous.keys().filter(|k| !current.contains_key(*k)) {
            out.push(StoreEvent::Delete { key: key.clone() });
        }
        for (key, record) in &current {
            if previous.get(key) != Some(record) {
                out.push(StoreEvent::Upsert(record.clone()));
            }
        }
        if !current.is_empty() {
            self.shown.insert(service.to_owned(), current);
        }
        out
    }
}

impl Source for Join {
    type Item = Input;

    fn resource(&self) -> &'static str {
        "services+endpointslices"
    }

    fn start(&mut self) -> BoxStream<'static, Input> {
        self.services.watching = false;
        self.slices.watching = false;
        let selector = self.view.names.selector(&self.view.env);
        let services = watch_objects(
            &self.services_api,
            &watcher::Config::default().labels(&selector).timeout(crate::watch::WATCH_TIMEOUT_SECS),
        )
        .map(|e| Input::Service(Box::new(e)));
        let slices = watch_objects(
            &self.slices_api,
            &watcher::Config::default().labels(SERVICE_NAME_LABEL).timeout(crate::watch::WATCH_TIMEOUT_SECS),
        )
        .map(|e| Input::Slice(Box::new(e)));
        stream::select(services, slices).boxed()
    }

    fn apply(&mut self, item: Input) -> Vec<StoreEvent> {
        self.input(item)
    }

    fn watching(&self) -> bool {
        self.started && self.both_watching()
    }
}
