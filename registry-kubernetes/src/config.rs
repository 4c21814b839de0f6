//! [`KubernetesConfig`]: which storage mode, which cluster, which names.

use std::path::PathBuf;

use registry_core::options::UrlOptions;
use registry_core::{Error, Result};

/// Label and annotation prefix used when none is configured.
///
/// Every label and annotation this backend writes is `<prefix>/<name>`; a
/// fleet that must share Pods with go-micro's Pod registry sets the
/// prefix that framework used (`micro.mu`).
pub const DEFAULT_PREFIX: &str = "registry.fireflycore.io";

/// Where the records live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// One `coordination.k8s.io/v1` Lease per instance (the default): no
    /// write contention between instances, `renewTime` as the heartbeat,
    /// garbage-collected with the registrar's Pod through an ownerReference.
    #[default]
    Lease,
    /// One ConfigMap `ff-registry-<env>` per env with one data entry per
    /// instance (the Go framework's layout, with a valid key encoding).
    ConfigMap,
    /// Labels and an annotation on the registrar's own Pod; a node is live
    /// while its Pod is `Running`.
    Pod,
    /// No per-instance record: instances are the ready endpoints of the
    /// EndpointSlices of the env's Services, methods are declared once per
    /// app in an annotation on its Service (`endpointslice.rs`).
    EndpointSlice,
}

impl Mode {
    /// The mode's name in URLs and logs: `lease`, `configmap`, `pod`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Lease => "lease",
            Mode::ConfigMap => "configmap",
            Mode::Pod => "pod",
            Mode::EndpointSlice => "endpointslice",
        }
    }

    /// Parses `lease`, `configmap`, `pod` or `endpointslice` (case-insensitive).
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "lease" | "leases" => Ok(Mode::Lease),
            "configmap" | "configmaps" | "config-map" => Ok(Mode::ConfigMap),
            "pod" | "pods" => Ok(Mode::Pod),
            "endpointslice" | "endpointslices" | "endpoint-slice" => Ok(Mode::EndpointSlice),
            other => Err(Error::invalid(
                "kubernetes.mode",
                format!("`{other}` is not one of lease, configmap, pod, endpointslice"),
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `network.internal` a discovered node carries in [`Mode::EndpointSlice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressMode {
    /// One node per ready endpoint, addressed `ip:port` (the default): the
    /// client balances.
    #[default]
    Endpoint,
    /// One node per Service while it has a ready endpoint, addressed by the
    /// Service's cluster DNS name and port
    /// (`<svc>.<ns>.svc.<cluster domain>:<port>`): discovery answers which
    /// Service serves a method and a mesh (Istio) or kube-proxy balances.
    Service,
}

impl AddressMode {
    /// Parses `endpoint` or `service`.
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "endpoint" | "endpoints" | "pod" => Ok(AddressMode::Endpoint),
            "service" => Ok(AddressMode::Service),
            other => Err(Error::invalid("kubernetes.address", format!("`{other}` is not one of endpoint, service"))),
        }
    }
}

/// The cluster DNS domain used when none is configured.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// How the client finds the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterSource {
    /// `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account
    /// (kube-rs' `Config::infer`).
    #[default]
    Infer,
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
    /// The in-cluster service account only.
    InCluster,
}

/// Settings of the Kubernetes backend.
///
/// The registry namespace (`ServiceConf::namespace`, the `Scope`'s
/// namespace) is the Kubernetes namespace, unless [`namespace`](Self::namespace)
/// overrides it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubernetesConfig {
    /// Storage mode (default [`Mode::Lease`]).
    pub mode: Mode,
    /// How to reach the cluster.
    pub cluster: ClusterSource,
    /// Kubeconfig context (default: the current context).
    pub context: Option<String>,
    /// Label/annotation prefix (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// The registrar's own Pod: required in [`Mode::Pod`]; in [`Mode::Lease`]
    /// it becomes the Lease's owner and holder when the Pod exists. Default:
    /// `POD_NAME`, else `HOSTNAME`.
    pub pod_name: Option<String>,
    /// Kubernetes namespace to use instead of the registry namespace.
    pub namespace: Option<String>,
    /// Let discoverers delete long-dead records (ConfigMap entries, Leases;
    /// default on): core's expiry clock hands a record whose heartbeat
    /// stopped for [`reap_after`](Self::reap_after) windows to this
    /// backend's reaper, which deletes it with a precondition that cannot
    /// delete a live one. Off (`reap=false` in the URL), dead records are
    /// only hidden.
    pub reap: bool,
    /// How many heartbeat windows without a change make a record long dead
    /// (default 3, `registry_core::store::DEFAULT_REAP_AFTER`).
    pub reap_after: u32,
    /// Field manager name on every write (default `registry`).
    pub field_manager: String,
    /// Conflict retries before a write gives up with `Error::Conflict` (default 10).
    pub max_conflict_retries: u32,
    /// Honour the `Ready` condition of the registrars' Pods in discovery
    /// (`readiness=true|false` in the URL; `None`: the mode's default, see
    /// [`honours_readiness`](Self::honours_readiness)). A Pod whose readiness
    /// probe fails, whose container died and is restarting, or that is
    /// terminating then leaves discovery as it leaves a Service's endpoints.
    ///
    /// - [`Mode::Pod`] (default on): only `Running`, not terminating and
    ///   `Ready` Pods count; a Pod reporting no `Ready` condition at all
    ///   (status written without a kubelet) counts by its phase.
    /// - [`Mode::Lease`] and [`Mode::ConfigMap`] (default off): the
    ///   discoverer also watches the namespace's Pods and hides a record whose
    ///   `network.internal` host is the IP of a Pod that is not `Ready` or is
    ///   terminating; needs `list` + `watch` on `pods` (without them it logs
    ///   the permission error and hides nothing). Off, these modes follow the
    ///   registrar's heartbeat and drain mark only.
    pub readiness: Option<bool>,
    /// [`Mode::EndpointSlice`]: the Service a registrar declares its methods
    /// on (`service=` in the URL; default: the app id, which must then be a
    /// valid Service name).
    pub service: Option<String>,
    /// [`Mode::EndpointSlice`]: how discovered nodes are addressed
    /// (`address=endpoint|service`; default [`AddressMode::Endpoint`]).
    pub address: AddressMode,
    /// [`Mode::EndpointSlice`] with [`AddressMode::Service`]: the cluster DNS
    /// domain (`cluster_domain=`; default [`DEFAULT_CLUSTER_DOMAIN`]).
    pub cluster_domain: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            cluster: ClusterSource::default(),
            context: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            pod_name: default_pod_name(),
            namespace: None,
            reap: true,
            reap_after: registry_core::store::DEFAULT_REAP_AFTER,
            field_manager: "registry".to_owned(),
            max_conflict_retries: 10,
            readiness: None,
            service: None,
            address: AddressMode::default(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
        }
    }
}

impl std::fmt::Debug for KubernetesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Holds no secrets (credentials stay in the kubeconfig file); listed explicitly anyway
        // so that a future credential field is not printed by accident.
        f.debug_struct("KubernetesConfig")
            .field("mode", &self.mode)
            .field("cluster", &self.cluster)
            .field("context", &self.context)
            .field("prefix", &self.prefix)
            .field("pod_name", &self.pod_name)
            .field("namespace", &self.namespace)
            .field("reap", &self.reap)
            .field("readiness", &self.readiness)
            .field("service", &self.service)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// `POD_NAME` (downward API), else `HOSTNAME` (a Pod's hostname is its name).
fn default_pod_name() -> Option<String> {
    ["POD_NAME", "HOSTNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

impl KubernetesConfig {
    /// The default configuration in `mode`.
    pub fn new(mode: Mode) -> Self {
        Self { mode, ..Self::default() }
    }

    /// Sets the mode.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Uses the kubeconfig file at `path`.
    pub fn with_kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.cluster = ClusterSource::Kubeconfig(path.into());
        self
    }

    /// Uses the in-cluster service account.
    pub fn in_cluster(mut self) -> Self {
        self.cluster = ClusterSource::InCluster;
        self
    }

    /// Uses kubeconfig context `context`.
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    /// Sets the label/annotation prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets (or clears) the registrar's Pod name.
    pub fn with_pod_name(mut self, pod_name: Option<String>) -> Self {
        self.pod_name = pod_name;
        self
    }

    /// Overrides the Kubernetes namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Turns the deletion of long-dead records on or off (see [`reap`](Self::reap)).
    pub fn with_reap(mut self, on: bool) -> Self {
        self.reap = on;
        self
    }

    /// Honours (or ignores) the Pods' `Ready` condition (see [`readiness`](Self::readiness)).
    pub fn with_readiness(mut self, on: bool) -> Self {
        self.readiness = Some(on);
        self
    }

    /// Sets the Service a registrar declares its methods on ([`Mode::EndpointSlice`]).
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Sets how discovered nodes are addressed ([`Mode::EndpointSlice`]).
    pub fn with_address(mut self, address: AddressMode) -> Self {
        self.address = address;
        self
    }

    /// Whether discovery honours the Pods' `Ready` condition: the
    /// [`readiness`](Self::readiness) setting, else on in [`Mode::Pod`] and
    /// off in the other modes.
    pub fn honours_readiness(&self) -> bool {
        self.readiness.unwrap_or(self.mode == Mode::Pod)
    }

    /// Parses `kubernetes://[?mode=lease|configmap|pod|endpointslice&kubeconfig=PATH&context=NAME&prefix=P&pod=NAME&namespace=NS&reap=true|false&readiness=true|false&service=NAME&address=endpoint|service&cluster_domain=D]`.
    ///
    /// `kubernetes://in-cluster` (or `incluster=true`) forces the in-cluster
    /// service account; otherwise the kubeconfig is inferred
    /// (`KUBECONFIG`, `~/.kube/config`, then in-cluster).
    pub fn from_url(url: &url::Url) -> Result<Self> {
        if !matches!(url.scheme(), "kubernetes" | "k8s") {
            return Err(Error::invalid("url", format!("scheme `{}` is not kubernetes://", url.scheme())));
        }
        let mut config = Self::default();
        match url.host_str() {
            None | Some("") => {}
            Some("in-cluster") | Some("incluster") => config.cluster = ClusterSource::InCluster,
            Some(other) => {
                return Err(Error::invalid(
                    "url",
                    format!("kubernetes://{other}: the host must be empty or `in-cluster`; use ?kubeconfig=PATH"),
                ));
            }
        }
        let mut options = UrlOptions::from_query(url.query().unwrap_or(""));
        if let Some(mode) = options.string("mode") {
            config.mode = Mode::parse(&mode)?;
        }
        if let Some(path) = options.string("kubeconfig") {
            config.cluster = ClusterSource::Kubeconfig(PathBuf::from(path));
        }
        if options.bool("incluster")? == Some(true) {
            config.cluster = ClusterSource::InCluster;
        }
        config.context = options.string("context").or(config.context);
        if let Some(prefix) = options.string("prefix") {
            config.prefix = prefix;
        }
        if let Some(pod) = options.string("pod") {
            config.pod_name = Some(pod).filter(|v| !v.is_empty());
        }
        if let Some(namespace) = options.string("namespace") {
            config.namespace = Some(namespace).filter(|v| !v.is_empty());
        }
        if let Some(on) = options.bool("reap")? {
            config.reap = on;
        }
        if let Some(on) = options.bool("readiness")? {
            config.readiness = Some(on);
        }
        if let Some(service) = options.string("service") {
            config.service = Some(service).filter(|v| !v.is_empty());
        }
        if let Some(address) = options.string("address") {
            config.address = AddressMode::parse(&address)?;
        }
        if let Some(domain) = options.string("cluster_domain") {
            config.cluster_domain = domain;
        }
        options.finish()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the prefix and names, naming the first invalid field.
    pub fn validate(&self) -> Result<()> {
        crate::encode::validate_prefix(&self.prefix)?;
        if let Some(ns) = &self.namespace {
            crate::encode::validate_dns_label("kubernetes.namespace", ns)?;
        }
        if self.reap_after == 0 {
            return Err(Error::invalid("kubernetes.reap_after", "must be at least 1"));
        }
        if let Some(service) = &self.service {
            crate::encode::validate_dns_label("kubernetes.service", service)?;
        }
        if !crate::encode::is_dns_subdomain(&self.cluster_domain) {
            return Err(Error::invalid(
                "kubernetes.cluster_domain",
                format!("`{}` is not a DNS name", self.cluster_domain),
            ));
        }
        if self.field_manager.is_empty() {
            return Err(Error::invalid("kubernetes.field_manager", "must not be empty"));
        }
        Ok(())
    }

    /// The Kubernetes namespace for a registry namespace, and the field it comes from.
    pub(crate) fn namespace_source<'a>(&'a self, registry_namespace: &'a str) -> (&'static str, &'a str) {
        match &self.namespace {
            Some(ns) => ("kubernetes.namespace", ns),
            None => ("conf.namespace", registry_namespace),
        }
    }

    /// The Kubernetes namespace for a registry namespace.
    pub(crate) fn namespace_for<'a>(&'a self, registry_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(registry_namespace)
    }
}

impl std::str::FromStr for KubernetesConfig {
    type Err = Error;

    /// Same as [`KubernetesConfig::from_url`], from a string.
    fn from_str(url: &str) -> Result<Self> {
        let parsed =
            url::Url::parse(url).map_err(|e| Error::invalid("url", format!("not a kubernetes:// URL: {e}")))?;
        Self::from_url(&parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<KubernetesConfig> {
        KubernetesConfig::from_url(&url::Url::parse(s).map_err(|e| Error::invalid("url", e.to_string()))?)
    }

    #[test]
    fn default_mode_is_lease() {
        assert_eq!(parse("kubernetes://").map(|c| c.mode).ok(), Some(Mode::Lease));
    }

    #[test]
    fn url_parameters_are_read() {
        let c = parse(
            "kubernetes://?mode=configmap&kubeconfig=/tmp/kc&context=kind&prefix=micro.mu&reap=false&readiness=false",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.honours_readiness());
        assert!(parse("kubernetes://?mode=pod").is_ok_and(|c| c.honours_readiness()));
        assert!(parse("kubernetes://?mode=lease").is_ok_and(|c| !c.honours_readiness()));
        assert!(parse("kubernetes://?mode=lease&readiness=true").is_ok_and(|c| c.honours_readiness()));
        let slices =
            parse("kubernetes://?mode=endpointslice&service=greeter&address=service&cluster_domain=corp.internal")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(slices.mode, Mode::EndpointSlice);
        assert_eq!(slices.service.as_deref(), Some("greeter"));
        assert_eq!(slices.address, AddressMode::Service);
        assert_eq!(slices.cluster_domain, "corp.internal");
        assert_eq!(c.mode, Mode::ConfigMap);
        assert_eq!(c.cluster, ClusterSource::Kubeconfig("/tmp/kc".into()));
        assert_eq!(c.context.as_deref(), Some("kind"));
        assert_eq!(c.prefix, "micro.mu");
        assert!(!c.reap);
        assert_eq!(
            parse("kubernetes://in-cluster?mode=pod&pod=p-1").map(|c| (c.cluster, c.pod_name)).ok(),
            Some((ClusterSource::InCluster, Some("p-1".to_owned())))
        );
    }

    #[test]
    fn bad_urls_name_the_problem() {
        for bad in [
            "kubernetes://?mode=disk",
            "kubernetes://?colour=blue",
            "kubernetes://somehost",
            "etcd://x",
            "kubernetes://?mode=endpointslice&address=cluster",
            "kubernetes://?mode=endpointslice&service=Bad_Name",
        ] {
            assert!(matches!(parse(bad), Err(Error::InvalidConfig { .. })), "{bad}");
        }
        assert!(matches!(parse("kubernetes://?prefix=Bad_Prefix"), Err(Error::InvalidConfig { .. })));
    }
}
