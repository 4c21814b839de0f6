//! Maps kube-rs errors to [`registry_core::Error`], precisely.
//!
//! | API answer | core error |
//! |---|---|
//! | 401, 403 | `PermissionDenied`, with the API server's message (it names the verb, resource and namespace) |
//! | 404 | `LeaseExpired` for a heartbeat (the record is gone), otherwise the caller decides |
//! | 409 | retried by the caller, then `Conflict` |
//! | 410 | never seen here: kube-runtime's watcher relists |
//! | 413, 422 "too long"/"must have at most" | `TooLarge` |
//! | 422 other, 400 | `InvalidConfig` with the server's message |
//! | 429, 5xx, timeouts, connection errors | `BackendUnavailable` |
//!
//! Only core decides what is retried (`Error::is_transient`).

use registry_core::Error;

/// Backend name in errors and logs.
pub const KIND: &str = "kubernetes";

/// What a failed call was doing, for messages.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The API verb (`get`, `create`, `patch`, `delete`, `list`, `watch`).
    pub verb: &'static str,
    /// The resource (`leases`, `configmaps`, `pods`).
    pub resource: &'static str,
    /// Object name, if any.
    pub name: &'a str,
}

impl<'a> Call<'a> {
    /// A call description.
    pub fn new(verb: &'static str, resource: &'static str, name: &'a str) -> Self {
        Self { verb, resource, name }
    }
}

/// HTTP status code of an API error answer, if `err` is one.
pub fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// True for 404 Not Found.
pub fn is_not_found(err: &kube::Error) -> bool {
    status_code(err) == Some(404)
}

/// True for 409 Conflict (a stale resourceVersion, or AlreadyExists).
pub fn is_conflict(err: &kube::Error) -> bool {
    status_code(err) == Some(409)
}

/// Maps a kube-rs error from `call` to a core error.
pub fn map(err: kube::Error, call: Call<'_>) -> Error {
    match err {
        kube::Error::Api(status) => {
            let message = if status.message.is_empty() {
                format!("{} {} `{}`: {} {}", call.verb, call.resource, call.name, status.code, status.reason)
            } else {
                status.message.clone()
            };
            match status.code {
                401 | 403 => Error::PermissionDenied { backend: KIND, message },
                409 => {
                    Error::Conflict { backend: KIND, what: format!("{} `{}`", call.resource, call.name), attempts: 1 }
                }
                413 => too_large(call, &message),
                422 if is_size_message(&message) => too_large(call, &message),
                400 | 422 => Error::InvalidConfig { field: "kubernetes", reason: message },
                429 | 500..=599 => Error::unavailable(KIND, message),
                _ => Error::Backend {
                    backend: KIND,
                    message: format!("{} {} `{}`: {message}", call.verb, call.resource, call.name),
                    source: Some(Box::new(kube::Error::Api(status))),
                },
            }
        }
        // Transport, TLS handshake, timeouts, a closed connection: the server cannot be reached.
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::RustlsTls(_)
        | kube::Error::HttpError(_) => Error::unavailable(KIND, err),
        kube::Error::Auth(_) => Error::PermissionDenied { backend: KIND, message: err.to_string() },
        kube::Error::InferConfig(_) | kube::Error::InferKubeconfig(_) => {
            Error::InvalidConfig { field: "kubernetes.kubeconfig", reason: err.to_string() }
        }
        other => Error::Backend {
            backend: KIND,
            message: format!("{} {} `{}` failed", call.verb, call.resource, call.name),
            source: Some(Box::new(other)),
        },
    }
}

/// Maps a kube-runtime watcher error (the watcher retries by itself).
pub fn map_watcher(err: kube::runtime::watcher::Error, resource: &'static str) -> Error {
    use kube::runtime::watcher::Error as W;
    match err {
        W::InitialListFailed(e) => map(e, Call::new("list", resource, "")),
        W::WatchStartFailed(e) | W::WatchFailed(e) => map(e, Call::new("watch", resource, "")),
        W::WatchError(status) => map(kube::Error::Api(status), Call::new("watch", resource, "")),
        other => Error::Backend { backend: KIND, message: format!("watch {resource}"), source: Some(Box::new(other)) },
    }
}

fn is_size_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("too long") || m.contains("must have at most") || m.contains("too large") || m.contains("exceeds")
}

fn too_large(call: Call<'_>, message: &str) -> Error {
    Error::TooLarge {
        what: format!("{} `{}` (API server: {message})", call.resource, call.name),
        size: 0,
        limit: crate::configmap::MAX_CONFIGMAP_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status { code, message: message.into(), ..Status::default() }))
    }

    #[test]
    fn forbidden_keeps_the_servers_message() {
        let msg = r#"leases.coordination.k8s.io is forbidden: User "system:serviceaccount:ns:sa" cannot create resource "leases" in API group "coordination.k8s.io" in the namespace "ns""#;
        match map(api(403, msg), Call::new("create", "leases", "x")) {
            Error::PermissionDenied { message, .. } => assert!(message.contains("cannot create resource \"leases\"")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes_map_to_variants() {
        let call = Call::new("patch", "configmaps", "ff-registry-dev");
        assert!(matches!(map(api(409, "conflict"), call), Error::Conflict { .. }));
        assert!(matches!(map(api(503, "down"), call), Error::BackendUnavailable { .. }));
        assert!(matches!(
            map(api(422, "ConfigMap \"x\" is invalid: []: Too long: must have at most 1048576 bytes"), call),
            Error::TooLarge { .. }
        ));
        assert!(matches!(map(api(422, "metadata.name: Invalid value"), call), Error::InvalidConfig { .. }));
    }
}
