//! Names in Consul: the service name of a scope or app, the service ID of
//! an instance, and the rules a per-app service name must follow. The bottom
//! module of the crate: the store, the writer and the readers all name
//! things through it, and it depends on none of them.

use registry_core::store::Scope;
use registry_core::{Error, Result};

use crate::config::Layout;

/// Longest service name Consul's DNS interface serves (one DNS label).
pub(crate) const MAX_SERVICE_NAME: usize = 63;

/// Consul service name of a scope: `<namespace>-<env>` (the Go framework's).
pub(crate) fn service_name(scope: &Scope) -> String {
    format!("{}-{}", scope.namespace, scope.env)
}

/// Consul service name of an app in the [`Layout::PerApp`] layout:
/// `<namespace>-<env>-<app_id>`. Names may contain `-`, so two scopes can
/// share a name (`a`/`b-c`/`d` and `a`/`b`/`c-d`): readers tell them apart
/// by the instances' `namespace` and `env` meta (a shared name only costs
/// wake-ups, never a wrong listing).
pub(crate) fn app_service_name(scope: &Scope, app_id: &str) -> String {
    format!("{}-{}-{app_id}", scope.namespace, scope.env)
}

/// The service name of an instance of `app_id` in `layout`.
pub(crate) fn layout_service_name(layout: Layout, scope: &Scope, app_id: &str) -> String {
    match layout {
        Layout::Single => service_name(scope),
        Layout::PerApp => app_service_name(scope, app_id),
    }
}

/// Service ID of one instance: `<namespace>-<env>-<app_id>-<lease_id>`.
pub(crate) fn service_id(scope: &Scope, app_id: &str, lease_id: i64) -> String {
    format!("{}-{}-{app_id}-{lease_id}", scope.namespace, scope.env)
}

/// Consul's rules for the service name `<namespace>-<env>-<app_id>`:
/// characters its DNS interface serves (ASCII letters, digits, `-`), at most
/// [`MAX_SERVICE_NAME`] bytes. Without an app id (a discoverer) the name
/// must leave room for a one-character app id.
pub(crate) fn validate_per_app(scope: &Scope, app_id: Option<&str>) -> Result<()> {
    let fields = [("conf.namespace", scope.namespace.as_str()), ("meta.env", scope.env.as_str())]
        .into_iter()
        .chain(app_id.map(|app| ("meta.app_id", app)));
    for (field, value) in fields {
        if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(Error::invalid(
                field,
                format!(
                    "`{value}` contains {bad:?}: the per-app Consul layout names a service \
                     `<namespace>-<env>-<app_id>`, and Consul's DNS interface serves only letters, digits and `-`"
                ),
            ));
        }
    }
    let (field, name) = match app_id {
        Some(app) => ("meta.app_id", app_service_name(scope, app)),
        None => ("meta.env", app_service_name(scope, "a")),
    };
    if name.len() > MAX_SERVICE_NAME {
        return Err(Error::invalid(
            field,
            format!(
                "the per-app Consul service name `{name}` is {} bytes; Consul's DNS interface serves at most {MAX_SERVICE_NAME}",
                name.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<()>) -> &'static str {
        match result {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn names_follow_consul_dns_rules() {
        let scope = Scope::new("shop", "prod");
        assert!(validate_per_app(&scope, Some("orders-v2")).is_ok());
        assert!(validate_per_app(&scope, None).is_ok());
        assert_eq!(field(validate_per_app(&scope, Some("orders_v2"))), "meta.app_id");
        assert_eq!(field(validate_per_app(&Scope::new("shop", "pr.od"), None)), "meta.env");
        assert_eq!(field(validate_per_app(&Scope::new("sh op", "prod"), None)), "conf.namespace");
        // `shop-prod-` is 10 bytes: 53 more fit, 54 do not.
        assert!(validate_per_app(&scope, Some(&"a".repeat(53))).is_ok());
        assert_eq!(field(validate_per_app(&scope, Some(&"a".repeat(54)))), "meta.app_id");
        assert_eq!(field(validate_per_app(&Scope::new("shop", "p".repeat(57)), None)), "meta.env");
        let reason = validate_per_app(&scope, Some(&"a".repeat(54))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(reason.contains("64 bytes") && reason.contains("63"), "{reason}");
    }
}
