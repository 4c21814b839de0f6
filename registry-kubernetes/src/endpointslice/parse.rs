//! Reading a Service's declaration (app, version, weight, methods, port)
//! and an endpoint's state and port.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::ResourceExt;
use registry_core::{DEFAULT_WEIGHT, Error, Methods, Result};

use super::*;
use crate::encode::Names;

/// What a Service says about its app.
#[derive(Clone, Debug)]
pub(super) struct AppInfo {
    pub(super) app_id: String,
    pub(super) version: String,
    pub(super) weight: i64,
    pub(super) methods: Methods,
    /// `<prefix>/port`: a port name or number.
    pub(super) port: Option<String>,
    pub(super) uid: String,
    /// The Service's ports: (name, port).
    pub(super) ports: Vec<(Option<String>, i32)>,
}

/// A Service of the env, read.
#[derive(Clone, Debug)]
pub(super) enum Parsed {
    App(Box<AppInfo>),
    Malformed(String),
}

/// The annotation and label names of this mode.
impl Names {
    /// `<prefix>/methods`: the JSON list of an app's methods on its Service.
    pub fn methods_annotation(&self) -> String {
        format!("{}/methods", self.prefix())
    }

    /// `<prefix>/version`: the app's version on its Service.
    pub fn version_annotation(&self) -> String {
        format!("{}/version", self.prefix())
    }

    /// `<prefix>/weight`: the app's weight on its Service.
    pub fn weight_annotation(&self) -> String {
        format!("{}/weight", self.prefix())
    }

    /// `<prefix>/port`: which of the Service's ports serves gRPC (name or number).
    pub fn port_annotation(&self) -> String {
        format!("{}/port", self.prefix())
    }

    /// `<prefix>/registered`: the Pod condition (and readiness gate) an
    /// instance sets `True` on install and `False` on uninstall or drain.
    pub fn registered_condition(&self) -> String {
        format!("{}/registered", self.prefix())
    }
}

/// Reads the app a Service declares.
pub(super) fn parse_service(names: &Names, service: &Service) -> Parsed {
    let annotations = service.annotations();
    let methods = match annotations.get(&names.methods_annotation()) {
        None => Methods::default(),
        Some(value) => match parse_methods(value) {
            Ok(methods) => methods,
            Err(reason) => {
                return Parsed::Malformed(format!("annotation `{}`: {reason}", names.methods_annotation()));
            }
        },
    };
    let weight = match annotations.get(&names.weight_annotation()) {
        None => DEFAULT_WEIGHT,
        Some(value) => match value.trim().parse::<i64>() {
            Ok(weight) => weight,
            Err(_) => {
                return Parsed::Malformed(format!(
                    "annotation `{}`: `{value}` is not an integer",
                    names.weight_annotation()
                ));
            }
        },
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().map(|p| (p.name.clone(), p.port)).collect())
        .unwrap_or_default();
    Parsed::App(Box::new(AppInfo {
        app_id: service.labels().get(&names.app_label()).cloned().unwrap_or_else(|| service.name_any()),
        version: annotations.get(&names.version_annotation()).cloned().unwrap_or_default(),
        weight,
        methods,
        port: annotations.get(&names.port_annotation()).map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()),
        uid: service.metadata.uid.clone().unwrap_or_default(),
        ports,
    }))
}

/// A `<prefix>/methods` value: a JSON list of method paths.
pub(crate) fn parse_methods(value: &str) -> std::result::Result<Methods, String> {
    let list: Vec<String> =
        serde_json::from_str(value).map_err(|e| format!("not a JSON list of method names ({e})"))?;
    if let Some(bad) = list.iter().find(|m| !m.starts_with('/')) {
        return Err(format!("`{bad}` is not a gRPC method path (`/pkg.Service/Method`)"));
    }
    Ok(list.into_iter().map(|m| (m, true)).collect())
}

/// The `<prefix>/methods` value of a method set: sorted, deduplicated.
pub(crate) fn methods_value<'a>(methods: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let set: BTreeSet<&str> = methods.into_iter().collect();
    serde_json::to_string(&set).map_err(|e| Error::Encode { reason: e.to_string() })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EndpointState {
    Ready,
    Draining,
}

/// Ready (a node), serving and terminating (a draining node), or neither.
pub(super) fn state_of(endpoint: &Endpoint) -> Option<EndpointState> {
    let conditions = endpoint.conditions.as_ref();
    // The API's rules: `ready` and `serving` nil mean true, `terminating` nil false.
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Some(EndpointState::Ready)
    } else if serving && terminating {
        Some(EndpointState::Draining)
    } else {
        None
    }
}

/// The endpoint port of a slice that serves gRPC (see the module docs);
/// `None` for a slice with no ports yet.
pub(super) fn pick_port(app: &AppInfo, slice: &EndpointSlice) -> std::result::Result<Option<i32>, String> {
    let ports: Vec<(Option<&str>, i32)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.as_deref().filter(|n| !n.is_empty()), p.port?)))
        .collect();
    if ports.is_empty() {
        return Ok(None);
    }
    let wanted = app.port.as_deref();
    if let Some(wanted) = wanted {
        if let Some((_, port)) = ports.iter().find(|(name, port)| *name == Some(wanted) || port.to_string() == wanted) {
            return Ok(Some(*port));
        }
        // The annotation may name the Service's port number; the slice has the target port.
        if let Some((name, _)) = app.ports.iter().find(|(_, port)| port.to_string() == wanted)
            && let Some((_, port)) = ports.iter().find(|(n, _)| n == &name.as_deref())
        {
            return Ok(Some(*port));
        }
        return Err(format!("no port `{wanted}` (annotation) among the endpoints' ports"));
    }
    if let Some((_, port)) = ports.iter().find(|(name, _)| *name == Some(DEFAULT_PORT_NAME)) {
        return Ok(Some(*port));
    }
    match ports.as_slice() {
        [(_, port)] => Ok(Some(*port)),
        _ => Err(format!(
            "several ports and none named `{DEFAULT_PORT_NAME}`: name the gRPC port in the port annotation"
        )),
    }
}

/// The Service's own port for [`AddressMode::Service`].
pub(super) fn service_port(app: &AppInfo) -> std::result::Result<i32, String> {
    let by_name = |name: &str| app.ports.iter().find(|(n, _)| n.as_deref() == Some(name)).map(|(_, p)| *p);
    if let Some(wanted) = app.port.as_deref() {
        return by_name(wanted)
            .or_else(|| app.ports.iter().find(|(_, p)| p.to_string() == wanted).map(|(_, p)| *p))
            .ok_or_else(|| format!("the Service has no port `{wanted}` (annotation)"));
    }
    if let Some(port) = by_name(DEFAULT_PORT_NAME) {
        return Ok(port);
    }
    match app.ports.as_slice() {
        [(_, port)] => Ok(*port),
        [] => Err("the Service has no ports".to_owned()),
        _ => Err(format!(
            "several ports and none named `{DEFAULT_PORT_NAME}`: name the gRPC port in the port annotation"
        )),
    }
}
