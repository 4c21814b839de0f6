//! [`ServiceConf`]: defaults applied in one place, and validation that names
//! the offending field.

use std::path::PathBuf;
use std::time::Duration;

use crate::{DEFAULT_WEIGHT, Error, Kernel, Network, Result};

/// Namespace used when none is configured: the Go framework's default, so a
/// Go service and a Rust gateway with default configuration see each other.
pub const DEFAULT_NAMESPACE: &str = "firefly";
/// TTL used when none is configured, and the default floor.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// The lowest floor a caller may set with [`ServiceConf::with_ttl_floor`] (tests use it).
pub const MIN_TTL_FLOOR: Duration = Duration::from_secs(2);
/// Consecutive keepalive failures after which the registration is reported
/// lost, by default.
///
/// Retries are spaced at most TTL/4 apart, so the loss is reported after an
/// outage of about 15 TTLs (2.5 minutes at TTL 10 s). The keepalive goes on
/// retrying unless [`AfterMaxRetry::GiveUp`] is configured.
pub const DEFAULT_MAX_RETRY: u32 = 60;
/// How long [`Register::install`](crate::Register::install) retries transient
/// failures (backend unavailable, timeouts, write conflicts) by default.
pub const DEFAULT_INSTALL_DEADLINE: Duration = Duration::from_secs(30);
/// Network `sn` used when none is configured: the Go framework's default
/// (`firefly-main-network`, as its records show).
pub const DEFAULT_NETWORK_SN: &str = "firefly-main-network";

/// How long an empty listing must stand, on a healthy stream, before it may
/// replace a non-empty view ([`EmptyProtection::ConfirmFor`], the default).
pub const DEFAULT_EMPTY_CONFIRM: Duration = Duration::from_secs(30);

/// Empty-set protection: what a discoverer does when a full listing comes
/// back empty, in a fault window, while its view holds nodes.
///
/// The fault window is the first listing after a break of the change stream
/// (a relist after an error), a listing that replaces a view loaded from the
/// snapshot, and every listing while an empty answer is already held. On a
/// healthy stream an empty listing is news and applies at once (a Consul
/// blocking answer after the last instance deregistered must not keep it
/// for 30 s).
///
/// A listing that *fails* never changes the view, whatever this says. Nodes
/// leaving one by one (deletes, expiry) are not listings and always apply;
/// so does a listing that is not empty. Only the jump from "some nodes" to
/// "no node at all" by one listing is guarded, because that is what a fault
/// produces (an agent restarted with empty state, a store restored from the
/// wrong backup, a relist against a member that lost its data), and an
/// empty view fails every call where a stale one fails none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmptyProtection {
    /// Apply empty listings at once (no protection).
    Off,
    /// Keep the last view (reported stale, see
    /// [`SourceHealth::empty_held`](crate::SourceHealth::empty_held)) until
    /// the store has answered "empty" for this long on a healthy stream;
    /// then apply it. Any change in the meantime (a node appears) ends the
    /// hold at once, with the store's view. A break of the stream restarts
    /// the clock. The default, with [`DEFAULT_EMPTY_CONFIRM`].
    ConfirmFor(Duration),
    /// Never let a listing empty a non-empty view (Nacos' push-empty
    /// protection): the last view stays, reported stale, until the store
    /// lists a node again. Nodes still leave one by one by delete or expiry.
    Always,
}

impl Default for EmptyProtection {
    fn default() -> Self {
        EmptyProtection::ConfirmFor(DEFAULT_EMPTY_CONFIRM)
    }
}

/// Discovery-only settings (a [`crate::Discoverer`] reads them from
/// [`ServiceConf::discovery`]; registrars ignore them).
///
/// - `empty_protection`: [`EmptyProtection::default`] (hold an empty
///   listing for [`DEFAULT_EMPTY_CONFIRM`]);
/// - `snapshot`: `None`. With a path, the discoverer loads its last-known-good
///   view from that file when it starts (served, marked stale, until the
///   backend answers) and saves its view there while the backend is healthy
///   (atomically: a temporary file in the same directory, then a rename; at
///   most once per [`crate::snapshot::SAVE_EVERY`]). A missing file is
///   normal; a corrupted or foreign one is reported
///   ([`SourceHealth::snapshot_error`](crate::SourceHealth::snapshot_error))
///   and ignored;
/// - `stale_after`: `None`: a source is stale after the silence its reader
///   states ([`crate::store::StoreReader::max_silence`]); set it to report
///   staleness later (or for readers that state none);
/// - `draining_nodes`: [`crate::DrainingNodes::Exclude`]: `get_service`
///   never answers a draining node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryOptions {
    /// Empty-set protection rule.
    pub empty_protection: EmptyProtection,
    /// Last-known-good snapshot file.
    pub snapshot: Option<PathBuf>,
    /// Silence after which a source counts as stale (overrides the reader's bound).
    pub stale_after: Option<Duration>,
    /// Whether `get_service` answers draining nodes (after the serving ones)
    /// or never (the default); see [`crate::DrainingNodes`].
    pub draining_nodes: crate::DrainingNodes,
}

impl DiscoveryOptions {
    /// Sets the empty-set protection rule.
    pub fn with_empty_protection(mut self, rule: EmptyProtection) -> Self {
        self.empty_protection = rule;
        self
    }

    /// Sets the last-known-good snapshot file.
    pub fn with_snapshot(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot = Some(path.into());
        self
    }

    /// Sets whether `get_service` answers draining nodes
    /// ([`crate::DrainingNodes::Exclude`] by default).
    pub fn with_draining_nodes(mut self, policy: crate::DrainingNodes) -> Self {
        self.draining_nodes = policy;
        self
    }

    /// Sets the silence after which a source counts as stale.
    pub fn with_stale_after(mut self, after: Duration) -> Self {
        self.stale_after = Some(after);
        self
    }
}

/// What the keepalive does once `max_retry` consecutive heartbeats failed.
///
/// Either way the loss is reported: the [`RetryHooks::on_lost`](crate::RetryHooks::on_lost)
/// hook, the `registry_registrations_lost_total` counter and the
/// `registry_registration_lost` gauge, and an error log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AfterMaxRetry {
    /// Report the registration lost and keep retrying with capped backoff
    /// (at most TTL/4 apart), so the instance comes back on its own once the
    /// backend does. The default: a healthy process never leaves discovery
    /// for good because its backend was down for a while.
    #[default]
    ReportAndRetry,
    /// Report the registration lost, then stop: `sustain_lease` returns
    /// [`Error::GaveUp`] and the caller decides (restart, reinstall, exit).
    GiveUp,
}

/// Registration and discovery settings shared by every backend.
///
/// Build with [`ServiceConf::default`] and the `with_*` methods; every default
/// is applied here and nowhere else:
/// - `namespace`: [`DEFAULT_NAMESPACE`];
/// - `ttl`: [`DEFAULT_TTL`], and it may not be below `ttl_floor` (default also
///   10 s; tests may lower the floor to [`MIN_TTL_FLOOR`]);
/// - `max_retry`: [`DEFAULT_MAX_RETRY`] consecutive keepalive failures before
///   the registration is reported lost (`0`: never reported);
/// - `after_max_retry`: [`AfterMaxRetry::ReportAndRetry`] (keep retrying);
/// - `install_deadline`: [`DEFAULT_INSTALL_DEADLINE`];
/// - `kernel`: language `rust`, version of this crate;
/// - `network.internal`: the host's first non-loopback IPv4 address when
///   empty; `network.sn`: [`DEFAULT_NETWORK_SN`];
/// - `weight`: [`DEFAULT_WEIGHT`];
/// - `discovery`: [`DiscoveryOptions::default`] (discoverers only).
///
/// Names (namespace, env, app id) are checked by the backend a registrar or
/// discoverer is built on ([`crate::store::Store::validate`]): etcd, Consul
/// and the embedded backend accept every name the Go framework accepts
/// ([`validate_name`]); Kubernetes enforces what its API server does.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceConf {
    /// Namespace that groups environments (etcd key prefix, Consul service
    /// name prefix, Kubernetes namespace).
    pub namespace: String,
    /// Addresses this instance advertises.
    pub network: Network,
    /// Runtime description.
    pub kernel: Kernel,
    /// Consecutive keepalive failures after which the registration is
    /// reported lost; `0` = never.
    pub max_retry: u32,
    /// What the keepalive does then: keep retrying (default) or give up.
    pub after_max_retry: AfterMaxRetry,
    /// How long `install` retries transient failures before returning the last one.
    pub install_deadline: Duration,
    /// Lease / heartbeat TTL. Heartbeats are sent every TTL/2.
    pub ttl: Duration,
    /// The lowest TTL accepted.
    pub ttl_floor: Duration,
    /// Relative share of calls weighted balancers send to this instance,
    /// written into the node's `weight`.
    pub weight: i64,
    /// Discovery-only settings: empty-set protection, snapshot, staleness.
    pub discovery: DiscoveryOptions,
}

impl Default for ServiceConf {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            network: Network::default(),
            kernel: Kernel::default(),
            max_retry: DEFAULT_MAX_RETRY,
            after_max_retry: AfterMaxRetry::default(),
            install_deadline: DEFAULT_INSTALL_DEADLINE,
            ttl: DEFAULT_TTL,
            ttl_floor: DEFAULT_TTL,
            weight: DEFAULT_WEIGHT,
            discovery: DiscoveryOptions::default(),
        }
    }
}

impl ServiceConf {
    /// Sets the namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Lowers (or raises) the TTL floor; it may not go below [`MIN_TTL_FLOOR`].
    pub fn with_ttl_floor(mut self, floor: Duration) -> Self {
        self.ttl_floor = floor;
        self
    }

    /// Sets `max_retry`, the consecutive keepalive failures after which the
    /// registration is reported lost (`0` = never).
    pub fn with_max_retry(mut self, max_retry: u32) -> Self {
        self.max_retry = max_retry;
        self
    }

    /// Sets what the keepalive does after `max_retry` failures
    /// ([`AfterMaxRetry::GiveUp`] to stop the keepalive).
    pub fn with_after_max_retry(mut self, after: AfterMaxRetry) -> Self {
        self.after_max_retry = after;
        self
    }

    /// Sets how long `install` retries transient failures.
    pub fn with_install_deadline(mut self, deadline: Duration) -> Self {
        self.install_deadline = deadline;
        self
    }

    /// Sets the advertised network.
    pub fn with_network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Sets the weight written into the node (default [`DEFAULT_WEIGHT`]).
    pub fn with_weight(mut self, weight: i64) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the discovery-only settings.
    pub fn with_discovery(mut self, discovery: DiscoveryOptions) -> Self {
        self.discovery = discovery;
        self
    }

    /// Sets the kernel description.
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Returns the configuration with every default filled in, or the first
    /// invalid field.
    pub fn bootstrap(mut self) -> Result<Self> {
        if self.namespace.is_empty() {
            self.namespace = DEFAULT_NAMESPACE.to_owned();
        }
        if self.ttl_floor < MIN_TTL_FLOOR {
            return Err(Error::invalid(
                "conf.ttl_floor",
                format!("{:?} is below the minimum {:?}", self.ttl_floor, MIN_TTL_FLOOR),
            ));
        }
        if self.ttl < self.ttl_floor {
            return Err(Error::invalid("conf.ttl", format!("{:?} is below the floor {:?}", self.ttl, self.ttl_floor)));
        }
        if self.ttl.subsec_nanos() != 0 {
            // Every backend stores TTLs in whole seconds.
            return Err(Error::invalid("conf.ttl", format!("{:?} is not a whole number of seconds", self.ttl)));
        }
        if self.install_deadline.is_zero() {
            return Err(Error::invalid("conf.install_deadline", "must be positive"));
        }
        if self.weight < 0 {
            return Err(Error::invalid("conf.weight", format!("{} is negative", self.weight)));
        }
        if self.discovery.stale_after.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid("conf.discovery.stale_after", "must be positive"));
        }
        if self.discovery.snapshot.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(Error::invalid("conf.discovery.snapshot", "empty path"));
        }
        if self.kernel.language.is_empty() {
            self.kernel.language = "rust".to_owned();
        }
        if self.kernel.version.is_empty() {
            self.kernel.version = env!("CARGO_PKG_VERSION").to_owned();
        }
        if self.network.sn.is_empty() {
            self.network.sn = DEFAULT_NETWORK_SN.to_owned();
        }
        if self.network.internal.is_empty() {
            self.network.internal = host_internal_ip();
        }
        Ok(self)
    }
}

/// Checks a namespace, env or app id against what the Go framework and the
/// key-value stores accept: not empty, no `/` (it separates the parts of the
/// key `<namespace>/<env>/<app_id>/<lease_id>`), no control characters.
/// `shop_v2`, `Prod` and `Orders_X` are valid.
pub fn validate_name(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.contains('/') {
        return Err(Error::invalid(
            field,
            format!("`{value}` contains `/`, which separates the parts of a record key"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(field, format!("{value:?} contains the control character {bad:?}")));
    }
    Ok(())
}

/// Checks the names of a registrar (`app_id` given) or discoverer with
/// [`validate_name`]: the default rule of [`crate::store::Store::validate`].
pub fn validate_names(namespace: &str, env: &str, app_id: Option<&str>) -> Result<()> {
    validate_name("conf.namespace", namespace)?;
    validate_name("meta.env", env)?;
    if let Some(app_id) = app_id {
        validate_name("meta.app_id", app_id)?;
    }
    Ok(())
}

/// The host's first non-loopback IPv4 address, or `127.0.0.1` when it has none.
fn host_internal_ip() -> String {
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|ifs| ifs.into_iter().find(|i| !i.is_loopback() && i.ip().is_ipv4()).map(|i| i.ip().to_string()))
        .unwrap_or_else(|| "127.0.0.1".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: Error) -> &'static str {
        match err {
            Error::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_applied_in_bootstrap() {
        let conf = ServiceConf::default().with_namespace("").bootstrap().expect("valid");
        assert_eq!(conf.namespace, DEFAULT_NAMESPACE);
        assert_eq!(conf.ttl, DEFAULT_TTL);
        assert_eq!(conf.max_retry, DEFAULT_MAX_RETRY);
        assert_eq!(conf.after_max_retry, AfterMaxRetry::ReportAndRetry, "giving up is opt-in");
        assert_eq!(conf.install_deadline, DEFAULT_INSTALL_DEADLINE);
        assert_eq!(conf.kernel.language, "rust");
        assert_eq!(conf.kernel.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(conf.network.sn, DEFAULT_NETWORK_SN);
        assert!(!conf.network.internal.is_empty());
    }

    #[test]
    fn explicit_values_are_kept() {
        let conf = ServiceConf::default()
            .with_kernel(Kernel { language: "go".into(), version: "v9".into() })
            .with_network(Network { sn: "z1".into(), internal: "10.1.1.1:80".into(), external: String::new() })
            .bootstrap()
            .expect("valid");
        assert_eq!(conf.kernel.language, "go");
        assert_eq!(conf.network.internal, "10.1.1.1:80");
        assert_eq!(conf.network.sn, "z1");
    }

    #[test]
    fn ttl_below_floor_names_the_field() {
        let err = ServiceConf::default().with_ttl(Duration::from_secs(5)).bootstrap().expect_err("too low");
        assert_eq!(field_of(err), "conf.ttl");
    }

    #[test]
    fn tests_may_lower_the_floor_to_two_seconds_but_not_below() {
        let ok = ServiceConf::default().with_ttl_floor(MIN_TTL_FLOOR).with_ttl(Duration::from_secs(2)).bootstrap();
        assert!(ok.is_ok());
        let err = ServiceConf::default().with_ttl_floor(Duration::from_secs(1)).bootstrap().expect_err("below min");
        assert_eq!(field_of(err), "conf.ttl_floor");
    }

    #[test]
    fn fractional_ttl_is_rejected() {
        let err = ServiceConf::default().with_ttl(Duration::from_millis(10_500)).bootstrap().expect_err("fraction");
        assert_eq!(field_of(err), "conf.ttl");
    }

    #[test]
    fn go_defaults_are_ours() {
        let conf = ServiceConf::default().bootstrap().expect("valid");
        assert_eq!(conf.namespace, "firefly");
        assert_eq!(conf.network.sn, "firefly-main-network");
        assert_eq!(conf.weight, 100);
    }

    #[test]
    fn zero_install_deadline_is_rejected() {
        let err = ServiceConf::default().with_install_deadline(Duration::ZERO).bootstrap().expect_err("zero");
        assert_eq!(field_of(err), "conf.install_deadline");
    }

    #[test]
    fn negative_weight_is_rejected() {
        let err = ServiceConf::default().with_weight(-1).bootstrap().expect_err("negative");
        assert_eq!(field_of(err), "conf.weight");
    }

    #[test]
    fn names_the_go_framework_accepts_are_valid() {
        assert!(validate_names("shop_v2", "Prod", Some("Orders_X")).is_ok());
        assert!(validate_names("a.b", "Staging-1", Some("User.Service_v2")).is_ok());
        assert!(validate_names("shop", "prod", None).is_ok());
    }

    #[test]
    fn name_validation_names_the_field() {
        assert_eq!(field_of(validate_names("", "prod", None).expect_err("empty ns")), "conf.namespace");
        assert_eq!(field_of(validate_names("shop", "", None).expect_err("empty env")), "meta.env");
        assert_eq!(field_of(validate_names("shop", "prod", Some("")).expect_err("empty app")), "meta.app_id");
        assert_eq!(field_of(validate_names("shop", "prod", Some("a/b")).expect_err("slash")), "meta.app_id");
        assert_eq!(field_of(validate_names("sh/op", "prod", None).expect_err("slash")), "conf.namespace");
        assert_eq!(field_of(validate_names("shop", "pr\nod", None).expect_err("control")), "meta.env");
    }
}
