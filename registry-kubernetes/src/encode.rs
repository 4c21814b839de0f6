//! Names, keys, labels and annotations, encoded to Kubernetes' rules.
//!
//! | what | form | rule it must meet |
//! |---|---|---|
//! | ConfigMap | `ff-registry-<env slug>` | DNS subdomain |
//! | ConfigMap data key | `<app_id>.<lease_id>` | `[-._a-zA-Z0-9]+`, ≤ 253 |
//! | Lease name | `<env slug>.<app slug>.<lease id>` | DNS subdomain, ≤ 253 |
//! | labels | `<prefix>/type=service`, `<prefix>/env=<env>`, `<prefix>/app=<app_id>`, `<prefix>/selector-<app_id>=service` | qualified name; value ≤ 63 |
//! | annotations | `<prefix>/node` (Lease), `<prefix>/service-<app_id>` (Pod) | qualified name |
//!
//! The ConfigMap key splits at its **last** dot: app ids may contain dots,
//! lease ids (decimal integers) never do, so `a.b.c.42` is app `a.b.c`, lease 42.
//! Names are checked by [`validate_names`] (the store's
//! `Store::validate`): the Kubernetes namespace must be a DNS label, env and
//! app id valid label values (`[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?`, ≤ 63),
//! so they go into labels and keys unchanged. Object names need lowercase DNS
//! names: a *slug* lowercases and turns `_` and `.` into `-`, and when that
//! changed anything appends a short hash of the exact name, so env `Prod` gets
//! its own ConfigMap `ff-registry-prod-<hash>` apart from `prod`'s. Only the
//! length limit of a label *name* (63) can make `selector-<app_id>`
//! unencodable, which [`Names::selector_label`] reports as `InvalidConfig`.

use registry_core::{Error, Result};

/// Longest label name part (after the prefix `/`).
pub(crate) const MAX_LABEL_NAME: usize = 63;
/// Longest DNS subdomain (object names, label prefixes).
pub(crate) const MAX_SUBDOMAIN: usize = 253;
/// Longest ConfigMap data key.
pub(crate) const MAX_CONFIGMAP_KEY: usize = 253;

/// Value of the `type` label on every object this backend writes (and the seed's Pods).
pub(crate) const TYPE_SERVICE: &str = "service";

/// Longest label value, and longest DNS label.
pub(crate) const MAX_LABEL_VALUE: usize = 63;

/// Checks the names a registrar or discoverer uses against the API server's
/// rules: `namespace` (the Kubernetes namespace) a DNS label, `env` and
/// `app_id` label values. `namespace_field` names where the namespace came
/// from (`conf.namespace`, or `kubernetes.namespace` when the URL set it).
pub(crate) fn validate_names(
    namespace_field: &'static str,
    namespace: &str,
    env: &str,
    app_id: Option<&str>,
) -> Result<()> {
    validate_dns_label(namespace_field, namespace)?;
    validate_label_value("meta.env", env)?;
    if let Some(app_id) = app_id {
        validate_label_value("meta.app_id", app_id)?;
    }
    Ok(())
}

/// Checks a DNS label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, ≤ 63): a namespace name.
pub(crate) fn validate_dns_label(field: &'static str, value: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if value.is_empty()
        || value.len() > MAX_LABEL_VALUE
        || !value.chars().all(ok_char)
        || value.starts_with('-')
        || value.ends_with('-')
    {
        return Err(Error::invalid(
            field,
            format!(
                "`{value}` is not a Kubernetes namespace name: a DNS label of lowercase letters, digits and `-`, \
                 starting and ending with a letter or digit, at most {MAX_LABEL_VALUE} characters"
            ),
        ));
    }
    Ok(())
}

/// Checks a label value (`[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?`, ≤ 63):
/// env and app id are written into labels as they are.
pub(crate) fn validate_label_value(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_LABEL_VALUE || !is_label_name(value) {
        return Err(Error::invalid(
            field,
            format!(
                "`{value}` cannot be a Kubernetes label value: letters, digits, `-`, `_` and `.`, starting and \
                 ending with a letter or digit, at most {MAX_LABEL_VALUE} characters"
            ),
        ));
    }
    Ok(())
}

/// Checks a label/annotation prefix: a lowercase DNS subdomain.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > MAX_SUBDOMAIN || !is_dns_subdomain(prefix) {
        return Err(Error::invalid(
            "kubernetes.prefix",
            format!("`{prefix}` is not a DNS subdomain (lowercase letters, digits, `-`, `.`; at most {MAX_SUBDOMAIN})"),
        ));
    }
    Ok(())
}

/// True for a DNS-1123 subdomain: dot-separated labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
pub(crate) fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= MAX_SUBDOMAIN
        && value.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// True for the name part of a qualified name (label or annotation key).
pub(crate) fn is_label_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LABEL_NAME
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// True for a ConfigMap data key.
pub(crate) fn is_configmap_key(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_CONFIGMAP_KEY
        && value != "."
        && value != ".."
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The label and annotation keys this backend writes, for one prefix
/// ([`crate::DEFAULT_PREFIX`] unless [`crate::KubernetesConfig::prefix`]
/// says otherwise): what a tool that creates or inspects registrations next
/// to this library needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (validated by [`crate::KubernetesConfig::validate`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/type`: `service` on every Lease and registered Pod.
    pub fn type_label(&self) -> String {
        format!("{}/type", self.prefix)
    }

    /// `<prefix>/env`: the env of a Lease or registered Pod.
    pub fn env_label(&self) -> String {
        format!("{}/env", self.prefix)
    }

    /// `<prefix>/app`: the app id of a Lease.
    pub fn app_label(&self) -> String {
        format!("{}/app", self.prefix)
    }

    /// `<prefix>/node`: the node JSON on a Lease.
    pub fn node_annotation(&self) -> String {
        format!("{}/node", self.prefix)
    }

    /// The label selector of discovery in `env`: `<prefix>/type=service,<prefix>/env=<env>`.
    pub fn selector(&self, env: &str) -> String {
        format!("{}={TYPE_SERVICE},{}={env}", self.type_label(), self.env_label())
    }

    /// `<prefix>/drained-by-operator`: an operator's drain mark on a Lease
    /// (`true`), or on the ConfigMap (a JSON list of the marked entry keys).
    pub fn drained_annotation(&self) -> String {
        format!("{}/drained-by-operator", self.prefix)
    }

    /// `<prefix>/drained-<app_id>`: an operator's drain mark on a Pod, whose
    /// value is the marked registration's lease id.
    pub fn pod_drained_annotation(&self, app_id: &str) -> Result<String> {
        self.pod_key("drained-", app_id)
    }

    /// `<prefix>/selector-<app_id>` (the Pod-label layout of go-micro's Kubernetes registry), or `InvalidConfig` when the
    /// app id makes the label name longer than 63 characters.
    pub fn selector_label(&self, app_id: &str) -> Result<String> {
        self.pod_key("selector-", app_id)
    }

    /// `<prefix>/service-<app_id>` (the Pod-label layout of go-micro's Kubernetes registry): the node JSON on a Pod.
    pub fn service_annotation(&self, app_id: &str) -> Result<String> {
        self.pod_key("service-", app_id)
    }

    /// The app id of a `<prefix>/service-<app_id>` annotation key, if it is one.
    pub fn app_of_service_annotation<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix("/service-").filter(|app| !app.is_empty())
    }

    fn pod_key(&self, kind: &str, app_id: &str) -> Result<String> {
        let name = format!("{kind}{app_id}");
        if !is_label_name(&name) {
            return Err(Error::invalid(
                "meta.app_id",
                format!(
                    "`{app_id}` cannot be encoded in pod mode: `{}/{name}` must be a Kubernetes label key \
                     (name part at most {MAX_LABEL_NAME} characters, so app ids of at most {} characters)",
                    self.prefix,
                    MAX_LABEL_NAME - kind.len()
                ),
            ));
        }
        Ok(format!("{}/{name}", self.prefix))
    }
}

/// `ff-registry-<env slug>`: the ConfigMap of an env in `configmap` mode (the
/// Go framework's ConfigMap layout). A lowercase env is used as it is, so Go
/// and Rust share the ConfigMap; any other env is lowercased, `_` and `.`
/// turned into `-`, and a short hash of the exact env appended, so that env
/// `Prod` gets a ConfigMap of its own apart from `prod`'s.
pub fn configmap_name(env: &str) -> String {
    format!("ff-registry-{}", slug(env))
}

/// A label value as part of an object name: lowercased, `_` and `.` turned
/// into `-`; when that changed anything, a short hash of the exact value is
/// appended so that `Orders` and `orders` stay apart.
pub(crate) fn slug(value: &str) -> String {
    let slug: String =
        value.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    if slug == value { slug } else { format!("{slug}-{:08x}", fnv32(value)) }
}

/// The ConfigMap data key of an instance: `<app_id>.<lease_id>`.
pub fn configmap_key(app_id: &str, lease_id: i64) -> Result<String> {
    let key = format!("{app_id}.{lease_id}");
    if !is_configmap_key(&key) {
        return Err(Error::invalid("meta.app_id", format!("`{app_id}` cannot be encoded as a ConfigMap key")));
    }
    Ok(key)
}

/// App id and lease id of a ConfigMap data key, or why it is not one of ours.
pub(crate) fn parse_configmap_key(key: &str) -> std::result::Result<(&str, i64), String> {
    let (app, lease) = key.rsplit_once('.').ok_or_else(|| format!("`{key}` is not `<app_id>.<lease_id>`"))?;
    let lease: i64 = lease.parse().map_err(|_| format!("`{key}`: `{lease}` is not a lease id"))?;
    if app.is_empty() {
        return Err(format!("`{key}` has an empty app id"));
    }
    Ok((app, lease))
}

/// The Lease name of an instance: `<env slug>.<app slug>.<lease id>`, where a
/// slug is the name lowercased with `_` and `.` turned into `-`, and a short
/// hash of the exact name appended when that changed anything. Negative lease
/// ids are written `n<digits>`. Neither env nor app id is recovered from the name (they are in the labels and the node), the
/// name only has to be unique and valid.
pub fn lease_name(env: &str, app_id: &str, lease_id: i64) -> String {
    let lease = if lease_id < 0 { format!("n{}", lease_id.unsigned_abs()) } else { lease_id.to_string() };
    format!("{}.{}.{lease}", slug(env), slug(app_id))
}

/// FNV-1a, 32 bits: a stable short hash (not for security).
fn fnv32(value: &str) -> u32 {
    value.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Escapes a JSON-pointer path segment (RFC 6901).
pub(crate) fn pointer_segment(value: &str) -> String {
    value.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_keys_round_trip_with_dotted_app_ids() {
        for (app, lease) in [("user-service", 7_587_869_532_745_834_261_i64), ("a.b.c", 42), ("A_b", -3)] {
            let key = configmap_key(app, lease).unwrap_or_else(|e| panic!("{e}"));
            assert!(is_configmap_key(&key), "{key}");
            assert_eq!(parse_configmap_key(&key), Ok((app, lease)));
        }
        assert!(parse_configmap_key("garbage").is_err());
        assert!(parse_configmap_key("app.notanumber").is_err());
        assert!(parse_configmap_key(".5").is_err());
    }

    #[test]
    fn lease_names_are_valid_and_distinct() {
        let names = [
            lease_name("prod", "orders", 1),
            lease_name("prod", "Orders", 1),
            lease_name("prod", "or_ders", 1),
            lease_name("prod", "or-ders", 1),
            lease_name("prod", "a.-b", 1),
            lease_name("prod", &"x".repeat(63), i64::MAX),
            lease_name("prod", "orders", -9),
        ];
        for n in &names {
            assert!(is_dns_subdomain(n), "{n}");
        }
        let mut unique = names.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn go_names_map_to_valid_distinct_objects() {
        assert_eq!(configmap_name("prod"), "ff-registry-prod", "the Go framework's ConfigMap name is kept");
        let upper = configmap_name("Prod");
        assert!(is_dns_subdomain(&upper) && upper != "ff-registry-prod", "{upper}");
        let lease = lease_name("Prod", "Orders_X", 7);
        assert!(is_dns_subdomain(&lease), "{lease}");
        assert_ne!(lease, lease_name("prod", "Orders_X", 7));
        assert!(validate_names("conf.namespace", "shop", "Prod", Some("Orders_X")).is_ok());
    }

    #[test]
    fn names_kubernetes_cannot_hold_are_typed_errors_naming_the_field() {
        let field = |r: Result<()>| match r {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(field(validate_names("conf.namespace", "shop_v2", "prod", None)), "conf.namespace");
        assert_eq!(field(validate_names("kubernetes.namespace", "Shop", "prod", None)), "kubernetes.namespace");
        assert_eq!(field(validate_names("conf.namespace", "shop", "pr od", None)), "meta.env");
        assert_eq!(field(validate_names("conf.namespace", "shop", "prod", Some("-a"))), "meta.app_id");
        assert_eq!(field(validate_names("conf.namespace", "shop", "prod", Some(&"a".repeat(64)))), "meta.app_id");
    }

    #[test]
    fn pod_keys_follow_label_rules() {
        let names = Names::new("micro.mu");
        assert_eq!(names.selector_label("greeter").ok().as_deref(), Some("micro.mu/selector-greeter"));
        assert_eq!(names.service_annotation("g.v1").ok().as_deref(), Some("micro.mu/service-g.v1"));
        assert_eq!(names.app_of_service_annotation("micro.mu/service-g.v1"), Some("g.v1"));
        assert_eq!(names.app_of_service_annotation("other.io/service-g"), None);
        let long = "a".repeat(60);
        assert!(matches!(names.selector_label(&long), Err(Error::InvalidConfig { field: "meta.app_id", .. })));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix(crate::config::DEFAULT_PREFIX).is_ok());
        assert!(validate_prefix("micro.mu").is_ok());
        for bad in ["", "Micro.mu", "a..b", "-a", "a/b"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }
}
