//! Operator actions on instances' records: what `registryctl drain` and
//! `undrain` do.
//!
//! An operator drains an instance it does not run (a misbehaving pod, a host
//! about to be maintained): the instance stays registered, discovery marks
//! it draining ([`ServiceNode::draining`](crate::ServiceNode::draining)
//! and [`drained_by_operator`](crate::ServiceNode::drained_by_operator)),
//! `get_service` stops answering it, and `registry::balance` sends it no new
//! calls. The mark belongs to the registration (app id and lease id) and
//! goes with it.
//!
//! The instance keeps writing its record (installs, heartbeats, its own drain
//! and undrain), so the mark must survive those writes, and the operator's
//! write must not undo a write of the instance that raced it. Each store
//! does that its own way, behind [`Operator`]:
//!
//! | store | where the mark lives | operator's precondition | owner's writes keep it because |
//! |---|---|---|---|
//! | memory, etcd | field `drained_by_operator` in the record's JSON | the record's revision (etcd `mod_revision` compare in a transaction) | the owner's put carries the field over (read, then a put conditional on that revision) |
//! | Consul | KV key `<record key>/drained` held by the instance's session | the record exists, held by that session (`acquire`) | the owner never writes that key; it goes with the session |
//! | Kubernetes `lease` | annotation `<prefix>/drained-by-operator` on the Lease | `resourceVersion` | the owner's apply and heartbeat patches do not touch it |
//! | Kubernetes `configmap` | annotation `<prefix>/drained-by-operator` (JSON list of entry keys) on the ConfigMap | `resourceVersion` | the owner patches only its data entry |
//! | Kubernetes `pod` | annotation `<prefix>/drained-<app_id>` on the Pod | `resourceVersion` | the owner patches only its own annotation and labels |
//!
//! The conformance scenario `operator_drain_survives_the_owner` proves it on
//! every backend.

use async_trait::async_trait;

use crate::Result;

/// The JSON field of the mark, for stores that keep it inside the record.
pub const MARK_FIELD: &str = "drained_by_operator";

/// Operator actions on the records of one namespace and env, from
/// [`Store::operator`](crate::store::Store::operator).
#[async_trait]
pub trait Operator: Send + Sync + 'static {
    /// Backend name.
    fn kind(&self) -> &'static str;

    /// Marks the record of instance `app_id`/`lease_id` drained by an
    /// operator (`drained = true`) or clears the mark (`false`). Idempotent.
    ///
    /// Written with the store's precondition, retried a few times when the
    /// instance wrote in between, then [`Error::Conflict`](crate::Error::Conflict).
    /// [`Error::InstanceNotFound`](crate::Error::InstanceNotFound) when no
    /// such record exists (never creates one).
    async fn set_drained(&self, app_id: &str, lease_id: i64, drained: bool) -> Result<()>;
}

/// True when the record JSON `value` carries the operator's mark.
pub fn is_marked(value: &str) -> bool {
    // Cheap test first: most records carry no mark.
    value.contains(MARK_FIELD)
        && serde_json::from_str::<serde_json::Value>(value)
            .is_ok_and(|v| v.get(MARK_FIELD).and_then(serde_json::Value::as_bool) == Some(true))
}

/// The record JSON `value` with the mark set (`drained`) or removed, every
/// other field (unknown ones included) kept.
pub fn set_mark(value: &str, drained: bool) -> Result<String> {
    let encode = |e: serde_json::Error| crate::Error::Encode { reason: e.to_string() };
    let mut v: serde_json::Value = serde_json::from_str(value).map_err(encode)?;
    let Some(fields) = v.as_object_mut() else {
        return Err(crate::Error::Encode { reason: "the record is not a JSON object".into() });
    };
    if drained {
        fields.insert(MARK_FIELD.to_owned(), serde_json::Value::Bool(true));
    } else {
        fields.remove(MARK_FIELD);
    }
    serde_json::to_string(&v).map_err(encode)
}

/// Attempts an operator write makes before giving up with `Conflict`.
pub const MAX_ATTEMPTS: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_set_and_cleared_keeping_other_fields() {
        let raw = r#"{"lease_id":7,"zone":"eu-1","meta":{"app_id":"a"}}"#;
        assert!(!is_marked(raw));
        let marked = set_mark(raw, true).expect("sets");
        assert!(is_marked(&marked));
        let v: serde_json::Value = serde_json::from_str(&marked).expect("json");
        assert_eq!(v["zone"], "eu-1", "unknown fields are kept");
        assert_eq!(v["lease_id"], 7);
        let cleared = set_mark(&marked, false).expect("clears");
        assert!(!is_marked(&cleared));
        assert!(!is_marked(r#"{"drained_by_operator":false}"#));
        assert!(set_mark("[1]", true).is_err());
    }
}
