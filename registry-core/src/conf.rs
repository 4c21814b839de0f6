//! [`ServiceConf`]: defaults applied in one place, and validation that names
//! the offending field.

use std::time::Duration;

use crate::{Error, Kernel, Meta, Network, Result};

/// Namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "default";
/// TTL used when none is configured, and the default floor.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// The lowest floor a caller may set with [`ServiceConf::with_ttl_floor`] (tests use it).
pub const MIN_TTL_FLOOR: Duration = Duration::from_secs(2);
/// Consecutive keepalive failures tolerated before giving up, by default.
///
/// Retries are spaced at most TTL/4 apart, so the default rides out an outage
/// of about 15 TTLs (2.5 minutes at TTL 10 s).
pub const DEFAULT_MAX_RETRY: u32 = 60;
/// Longest name accepted for namespace, env and app id (Kubernetes label value limit).
pub const MAX_NAME_LEN: usize = 63;
/// Network `sn` used when none is configured (the Go framework's default).
pub const DEFAULT_NETWORK_SN: &str = "default";

/// Registration and discovery settings shared by every backend.
///
/// Build with [`ServiceConf::default`] and the `with_*` methods; every default
/// is applied here and nowhere else:
/// - `namespace`: [`DEFAULT_NAMESPACE`];
/// - `ttl`: [`DEFAULT_TTL`], and it may not be below `ttl_floor` (default also
///   10 s; tests may lower the floor to [`MIN_TTL_FLOOR`]);
/// - `max_retry`: [`DEFAULT_MAX_RETRY`] (`0` means never give up);
/// - `kernel`: language `rust`, version of this crate;
/// - `network.internal`: the host's first non-loopback IPv4 address when
///   empty; `network.sn`: [`DEFAULT_NETWORK_SN`].
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
    /// Consecutive keepalive failures tolerated before giving up; `0` = never.
    pub max_retry: u32,
    /// Lease / heartbeat TTL. Heartbeats are sent every TTL/2.
    pub ttl: Duration,
    /// The lowest TTL accepted.
    pub ttl_floor: Duration,
}

impl Default for ServiceConf {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            network: Network::default(),
            kernel: Kernel::default(),
            max_retry: DEFAULT_MAX_RETRY,
            ttl: DEFAULT_TTL,
            ttl_floor: DEFAULT_TTL,
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

    /// Sets `max_retry` (`0` = never give up).
    pub fn with_max_retry(mut self, max_retry: u32) -> Self {
        self.max_retry = max_retry;
        self
    }

    /// Sets the advertised network.
    pub fn with_network(mut self, network: Network) -> Self {
        self.network = network;
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
        validate_dns_label("conf.namespace", &self.namespace)?;
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

/// Checks an env or namespace: a DNS label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`,
/// at most 63 characters), because Kubernetes object names and Consul service
/// names are built from it.
pub fn validate_dns_label(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(Error::invalid(field, format!("`{value}` is longer than {MAX_NAME_LEN} characters")));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if let Some(bad) = value.chars().find(|c| !ok_char(*c)) {
        return Err(Error::invalid(
            field,
            format!("`{value}` contains `{bad}`; only lowercase letters, digits and `-` are allowed"),
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(Error::invalid(field, format!("`{value}` must start and end with a letter or digit")));
    }
    Ok(())
}

/// Checks an app id: `[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?`, at most 63
/// characters — the Kubernetes label-value rule, which etcd keys, Consul tags
/// and Kubernetes labels can all hold.
pub fn validate_app_id(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(Error::invalid(field, format!("`{value}` is longer than {MAX_NAME_LEN} characters")));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if let Some(bad) = value.chars().find(|c| !ok_char(*c)) {
        return Err(Error::invalid(
            field,
            format!("`{value}` contains `{bad}`; only letters, digits, `-`, `_` and `.` are allowed"),
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        return Err(Error::invalid(field, format!("`{value}` must start and end with a letter or digit")));
    }
    Ok(())
}

/// Validates the identity a registrar writes.
pub fn validate_meta(meta: &Meta) -> Result<()> {
    validate_dns_label("meta.env", &meta.env)?;
    validate_app_id("meta.app_id", &meta.app_id)?;
    if meta.version.len() > MAX_NAME_LEN {
        return Err(Error::invalid("meta.version", format!("longer than {MAX_NAME_LEN} characters")));
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
    fn bad_namespace_is_rejected() {
        let err = ServiceConf::default().with_namespace("My_NS").bootstrap().expect_err("invalid");
        assert_eq!(field_of(err), "conf.namespace");
    }

    #[test]
    fn meta_validation_names_the_field() {
        assert_eq!(field_of(validate_meta(&Meta::new("", "a", "v1")).expect_err("empty env")), "meta.env");
        assert_eq!(field_of(validate_meta(&Meta::new("prod", "", "v1")).expect_err("empty app")), "meta.app_id");
        assert_eq!(field_of(validate_meta(&Meta::new("prod", "a/b", "v1")).expect_err("slash")), "meta.app_id");
        assert_eq!(field_of(validate_meta(&Meta::new("Prod", "a", "v1")).expect_err("upper env")), "meta.env");
        assert_eq!(field_of(validate_meta(&Meta::new("prod", "-a", "v1")).expect_err("edge")), "meta.app_id");
        let long = "a".repeat(64);
        assert_eq!(field_of(validate_meta(&Meta::new("prod", &long, "v1")).expect_err("long")), "meta.app_id");
        assert!(validate_meta(&Meta::new("prod", "User.Service_v2", "v1")).is_ok());
    }
}
