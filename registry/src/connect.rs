//! [`connect`]: a URL (or a backend's own config) → a [`Registry`] handle that
//! builds registrars and discoverers.

use std::sync::Arc;

use registry_core::options::redact;
use registry_core::store::{BackendSpec, Store};
use registry_core::{Discoverer, Discovery, Error, Meta, Register, Registrar, Result, ServiceConf};

/// What to connect to: a backend URL. A store built in code (a backend
/// crate's own configuration type, or an embedded store shared with other
/// code) is wrapped with [`Registry::from_store`] instead.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// `memory://[name]`, `etcd://…`, `consul://…`, `kubernetes://…`.
    Url(String),
}

impl From<&str> for Target {
    fn from(url: &str) -> Self {
        Target::Url(url.to_owned())
    }
}

impl From<String> for Target {
    fn from(url: String) -> Self {
        Target::Url(url)
    }
}

impl From<&String> for Target {
    fn from(url: &String) -> Self {
        Target::Url(url.clone())
    }
}

/// A connected backend. Cheap to clone; builds any number of registrars and
/// discoverers that share its connection.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("backend", &self.store.kind()).finish()
    }
}

impl Registry {
    /// Wraps a store.
    pub fn from_store(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Backend name.
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A registrar for the instance `meta` (validated; defaults of `conf` applied).
    pub fn registrar(&self, meta: Meta, conf: ServiceConf) -> Result<Arc<dyn Register>> {
        Ok(Arc::new(Registrar::new(&*self.store, meta, conf)?))
    }

    /// Operator actions (drain, undrain another process's instance; see
    /// [`registry_core::operator`]) on the records of `env` in `namespace`.
    pub fn operator(&self, namespace: &str, env: &str) -> Result<Arc<dyn registry_core::operator::Operator>> {
        let scope = registry_core::store::Scope::new(namespace, env);
        self.store.validate(&scope, None)?;
        self.store.operator(&scope)
    }

    /// A discoverer of `env` in `conf.namespace`. Call
    /// [`Discovery::watcher`] to start it.
    pub fn discoverer(&self, env: &str, conf: ServiceConf) -> Result<Arc<dyn Discovery>> {
        Ok(Arc::new(Discoverer::new(&*self.store, env, conf)?))
    }
}

/// The one list of backends: for each, its cargo feature, its entry
/// (`BACKEND` of its crate) and its URL schemes. It makes [`backends`] (the
/// compiled-in ones, which the facade's [`connect`], `registryctl` and the
/// conformance runner iterate) and `KNOWN` (every one, compiled in or not,
/// so a URL for one left out gets an error naming the feature). Adding a
/// backend is one line here and its feature in `Cargo.toml`.
macro_rules! backend_list {
    ($($feature:literal => $entry:path, [$($scheme:literal),+];)+) => {
        /// The backends compiled into this build, by cargo feature.
        pub fn backends() -> &'static [BackendSpec] {
            &[$(#[cfg(feature = $feature)] $entry,)+]
        }

        /// Every backend this crate knows: `(feature, schemes)`.
        const KNOWN: &[(&str, &[&str])] = &[$(($feature, &[$($scheme),+]),)+];
    };
}

backend_list! {
    "memory" => registry_core::memory::BACKEND, ["memory"];
    "etcd" => registry_etcd::BACKEND, ["etcd", "etcds"];
    "consul" => registry_consul::BACKEND, ["consul", "consuls"];
    "kubernetes" => registry_kubernetes::BACKEND, ["kubernetes", "k8s"];
}

/// Connects to a backend by URL.
///
/// | URL | backend | feature |
/// |---|---|---|
/// | `memory://` | the process-wide embedded store (`memory://name` for a separate one) | `memory` (default) |
/// | `etcd://[user:pass@]h1:2379,h2:2379[?tls=…]` | etcd | `etcd` |
/// | `consul://[token@]host:8500` | Consul agent | `consul` |
/// | `kubernetes://[?mode=lease\|configmap\|pod]` (also `k8s://`) | Kubernetes API | `kubernetes` |
///
/// A URL for a backend that is not compiled in is
/// [`Error::InvalidConfig`] on `url`, naming the cargo feature to enable.
pub async fn connect(target: impl Into<Target>) -> Result<Registry> {
    match target.into() {
        Target::Url(url) => connect_url(&url).await,
    }
}

async fn connect_url(raw: &str) -> Result<Registry> {
    let shown = redact(raw);
    let scheme = raw
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .ok_or_else(|| Error::invalid("url", format!("`{shown}` is not a registry URL: no scheme")))?;
    if let Some(backend) = backends().iter().find(|b| b.schemes.contains(&scheme.as_str())) {
        return Ok(Registry::from_store((backend.connect)(raw.to_owned()).await?));
    }
    let reason = match KNOWN.iter().find(|(_, schemes)| schemes.contains(&scheme.as_str())) {
        Some((feature, _)) => format!(
            "backend `{scheme}://` is not compiled in; enable the cargo feature `{feature}` of the `registry` crate"
        ),
        None => {
            let known: Vec<String> = backends().iter().flat_map(|b| b.schemes).map(|s| format!("{s}://")).collect();
            format!("unknown backend `{scheme}://` in `{shown}`; this build knows {}", known.join(", "))
        }
    };
    Err(Error::invalid("url", reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_scheme_is_a_typed_error() {
        let err = connect("zookeeper://localhost").await.expect_err("unknown");
        assert!(matches!(err, Error::InvalidConfig { field: "url", .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_borrowed_string_url_connects() {
        let url = String::from("memory://borrowed-string");
        let registry = connect(&url).await.expect("memory");
        assert_eq!(registry.kind(), "memory");
    }

    #[tokio::test]
    async fn garbage_url_is_a_typed_error() {
        let err = connect("not a url").await.expect_err("garbage");
        assert!(matches!(err, Error::InvalidConfig { field: "url", .. }), "{err:?}");
    }

    #[cfg(not(feature = "etcd"))]
    #[tokio::test]
    async fn missing_feature_is_named() {
        let err = connect("etcd://127.0.0.1:2379").await.expect_err("not compiled");
        assert!(matches!(err, Error::InvalidConfig { field: "url", .. }), "{err:?}");
        assert!(err.to_string().contains("enable the cargo feature `etcd`"), "{err}");
    }

    #[test]
    fn every_compiled_backend_is_known_by_its_feature() {
        for backend in backends() {
            assert!(KNOWN.iter().any(|(f, s)| *f == backend.name && *s == backend.schemes), "{backend:?}");
        }
    }

    #[cfg(feature = "etcd")]
    #[tokio::test]
    async fn multi_host_etcd_url_reaches_the_etcd_parser() {
        let url = "etcd://127.0.0.1:1,127.0.0.1:2?connect_timeout=300ms&timeout=300ms";
        // Connecting is lazy; the URL parses, and the first call fails on the network.
        let registry = connect(url).await.expect("a valid multi-host URL");
        // `install` retries an unreachable backend until its deadline (30 s by default).
        let conf = ServiceConf::default().with_install_deadline(std::time::Duration::from_millis(600));
        let registrar = registry.registrar(Meta::new("dev", "svc", "v1"), conf).expect("valid");
        let err = registrar.install(registry_core::ServiceNode::default()).await.expect_err("nothing listens there");
        assert!(
            matches!(err, Error::BackendUnavailable { .. } | Error::Timeout { .. }),
            "expected the connection, not the URL, to fail: {err:?}"
        );
    }

    #[tokio::test]
    async fn named_memory_stores_are_separate_and_shared_by_name() {
        let a1 = connect("memory://alpha").await.expect("a");
        let a2 = connect("memory://alpha").await.expect("a again");
        let b = connect("memory://beta").await.expect("b");
        let conf = || ServiceConf::default();
        let r = a1.registrar(Meta::new("dev", "svc", "v1"), conf()).expect("registrar");
        r.install(registry_core::GrpcServices::new().service("t.S", ["M"]).expect("valid").into_node())
            .await
            .expect("installed");
        let same = a2.discoverer("dev", conf()).expect("discoverer");
        let other = b.discoverer("dev", conf()).expect("discoverer");
        same.watcher().await.expect("ready");
        other.watcher().await.expect("ready");
        assert!(same.get_service("/t.S/M").is_ok());
        assert!(matches!(other.get_service("/t.S/M"), Err(Error::MethodNotFound { .. })));
        r.uninstall().await.expect("uninstalled");
    }
}
