//! The shared HTTP client: typed agent calls ([`crate::agent`]) plus
//! `rs-consul` for KV writes, over one pooled HTTP client, every call bounded
//! by the request deadline.

use std::sync::{Mutex, MutexGuard};

use registry_core::{Error, Result};

use crate::agent::Agent;
use crate::config::ConsulConfig;
use crate::error::{self, KIND};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned one still holds valid data.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shared client: typed agent calls plus `rs-consul` for KV writes, over one HTTP client.
pub(crate) struct Client {
    pub(crate) agent: Agent,
    pub(crate) kv: rs_consul::Consul,
    pub(crate) config: ConsulConfig,
}

impl Client {
    pub(crate) fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    fn datacenter(&self) -> &str {
        self.config.datacenter.as_deref().unwrap_or("")
    }

    /// Runs an `rs-consul` call with the request deadline (rs-consul's KV calls have none).
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, rs_consul::ConsulError>>,
    ) -> Result<T, KvFailure> {
        let turn = async {
            let _turn = self.agent.permit().await;
            call.await
        };
        match tokio::time::timeout(self.config.request_timeout, turn).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(rs_consul::ConsulError::UnexpectedResponseCode(code, body)))
                if error::is_invalid_session(code.as_u16(), body.as_deref().unwrap_or("")) =>
            {
                Err(KvFailure::InvalidSession)
            }
            Ok(Err(e)) => Err(KvFailure::Other(error::from_rs_consul(operation, e, self.token()))),
            Err(_) => Err(KvFailure::Other(error::timeout(operation, self.config.request_timeout))),
        }
    }

    /// `PUT /v1/kv/<key>?acquire=<session>` (rs-consul): `true` when acquired.
    pub(crate) async fn kv_acquire(&self, key: &str, value: &str, session: &str) -> Result<bool, KvFailure> {
        let request = rs_consul::CreateOrUpdateKeyRequest {
            key,
            acquire: session,
            datacenter: self.datacenter(),
            ..Default::default()
        };
        let (acquired, _) =
            self.bounded("write KV record", self.kv.create_or_update_key(request, value.as_bytes().to_vec())).await?;
        Ok(acquired)
    }

    /// `DELETE /v1/kv/<key>` (rs-consul).
    pub(crate) async fn kv_delete(&self, key: &str) -> Result<()> {
        let request = rs_consul::DeleteKeyRequest { key, datacenter: self.datacenter(), ..Default::default() };
        self.bounded("delete KV record", self.kv.delete_key(request)).await.map(drop).map_err(KvFailure::into_error)
    }
}

/// Why a KV write failed.
pub(crate) enum KvFailure {
    /// The session no longer exists.
    InvalidSession,
    /// Anything else.
    Other(Error),
}

impl KvFailure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            KvFailure::InvalidSession => Error::backend(KIND, "KV write refused: session is gone"),
            KvFailure::Other(e) => e,
        }
    }
}
