//! The Consul HTTP calls that `rs-consul` 0.15 does not offer, as a small
//! typed module over the same HTTP stack (hyper 1 + hyper-util's pooled
//! client + hyper-rustls: the `rs_consul::HttpsClient` type, one client
//! shared with `rs-consul`).
//!
//! - agent service register / deregister and TTL check pass (no agent
//!   endpoints in rs-consul);
//! - session create with `NodeChecks`/`ServiceChecks`, info, destroy
//!   (rs-consul only creates sessions inside `get_lock`, without checks);
//! - health of a service with its `Meta` (rs-consul's `Service` type has no
//!   `Meta` field);
//! - KV prefix listing that keeps `X-Consul-Index` on 404 (rs-consul turns
//!   the 404 of an empty prefix into an error and loses the index, so a
//!   blocking query on an empty prefix is impossible with it).
//!
//! Every request carries the ACL token as a sensitive `X-Consul-Token`
//! header; no URL, log line or error contains it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request};
use registry_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::config::ConsulConfig;
use crate::error;

/// The HTTP client type `rs-consul` uses; both share one instance.
pub(crate) type HttpsClient = rs_consul::HttpsClient;

/// Builds the pooled HTTP(S) client: rustls with the `ring` provider named
/// explicitly (so a second provider elsewhere in the build cannot make rustls
/// panic on an ambiguous default) and Mozilla's roots.
pub(crate) fn https_client(config: &ConsulConfig) -> Result<HttpsClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(|e| Error::invalid("consul.tls", e.to_string()))?
        .https_or_http()
        .enable_http1()
        .wrap_connector({
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(config.request_timeout));
            http.set_nodelay(true);
            http
        });
    Ok(hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
        // Idle connections are closed before Consul's side could time them out.
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(16)
        .build::<_, BoxBody<Bytes, Infallible>>(https))
}

/// One answer: status, `X-Consul-Index`, body.
struct Reply {
    status: u16,
    index: Option<u64>,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking-query position: answer when the index passes `index`, or after `wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    /// Last index seen.
    pub index: u64,
    /// Longest wait.
    pub wait: Duration,
}

/// Requests one store keeps in flight at once, blocking queries aside. The
/// agent closes connections past `limits.http_max_conns_per_client` (200 by
/// default) per client address, and the pooled client opens one per
/// concurrent request: without this cap a process carrying a thousand
/// registrars sends its heartbeats in bursts the agent answers with
/// connection resets (measured by `registry-bench --backend consul`).
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// The typed calls, over the shared client.
pub(crate) struct Agent {
    client: HttpsClient,
    /// Permits of the non-blocking requests ([`MAX_IN_FLIGHT`]); KV writes take one too.
    in_flight: tokio::sync::Semaphore,
    base: String,
    token: Option<String>,
    token_header: Option<HeaderValue>,
    datacenter: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("base", &self.base).finish_non_exhaustive()
    }
}

/// `PUT /v1/agent/service/register` body (the fields we use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceRegistration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub check: TtlCheck,
}

/// The TTL check of a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TtlCheck {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub notes: String,
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// Initial status; `passing`, so a session can bind to it at once.
    pub status: String,
    pub deregister_critical_service_after: String,
}

/// `PUT /v1/session/create` body.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionCreate<'a> {
    name: &'a str,
    behavior: &'a str,
    lock_delay: &'a str,
    node_checks: Vec<&'a str>,
    service_checks: Vec<ServiceCheckRef<'a>>,
}

#[derive(Clone, Debug, Serialize)]
struct ServiceCheckRef<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
}

#[derive(Deserialize)]
struct SessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// One entry of `GET /v1/health/service/<name>`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntry {
    pub node: HealthNode,
    pub service: HealthService,
}

/// The node of a health entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthNode {
    #[serde(default)]
    pub node: String,
}

/// The service of a health entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthService {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
}

/// One entry of `GET /v1/kv/<prefix>?recurse`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvEntry {
    pub key: String,
    /// Base64 as Consul sends it.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub modify_index: u64,
}

fn query(pairs: &[(&str, String)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        out.append_pair(key, value);
    }
    out.finish()
}

/// A duration in Go's syntax, as Consul parses it.
pub(crate) fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl Agent {
    /// The calls for `config`, over `client`.
    pub(crate) fn new(config: &ConsulConfig, client: HttpsClient) -> Result<Self> {
        let token_header = match &config.token {
            Some(token) => {
                let mut value = HeaderValue::from_str(token)
                    .map_err(|_| Error::invalid("consul.token", "contains characters not allowed in an HTTP header"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            client,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            base: config.base().to_owned(),
            token: config.token.clone(),
            token_header,
            datacenter: config.datacenter.clone(),
            timeout: config.request_timeout,
        })
    }

    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Waits for a turn among the [`MAX_IN_FLIGHT`] non-blocking requests.
    pub(crate) async fn permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed; `None` would only mean no cap.
        self.in_flight.acquire().await.ok()
    }

    /// Query pairs every catalog-side call carries.
    fn dc(&self) -> Vec<(&'static str, String)> {
        self.datacenter.iter().map(|dc| ("dc", dc.clone())).collect()
    }

    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        pairs: &[(&str, String)],
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Reply> {
        let mut uri = format!("{}{path}", self.base);
        if !pairs.is_empty() {
            uri.push('?');
            uri.push_str(&query(pairs));
        }
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = &self.token_header {
            request = request.header("X-Consul-Token", token.clone());
        }
        let body: BoxBody<Bytes, Infallible> = match body {
            Some(bytes) => {
                request = request.header(CONTENT_TYPE, "application/json");
                BoxBody::new(Full::new(Bytes::from(bytes)))
            }
            None => BoxBody::new(Empty::new()),
        };
        let request = request.body(body).map_err(|e| Error::Backend {
            backend: error::KIND,
            message: format!("{operation}: bad request: {e}"),
            source: None,
        })?;
        // A blocking query holds its connection for up to its wait: not counted.
        let blocking = pairs.iter().any(|(name, _)| *name == "index");
        let exchange = async {
            let _turn = if blocking { None } else { self.permit().await };
            let response =
                self.client.request(request).await.map_err(|e| error::transport(operation, &e, self.token()))?;
            let status = response.status().as_u16();
            let index = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| error::transport(operation, &e, self.token()))?
                .to_bytes();
            Ok(Reply { status, index, body })
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(reply) => reply,
            Err(_) => Err(error::timeout(operation, limit)),
        }
    }

    /// Sends, and turns any status but 200 into an error.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        pairs: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply> {
        let reply = self.send(operation, method, path, pairs, body, self.timeout).await?;
        if reply.status == 200 {
            Ok(reply)
        } else {
            Err(error::status(operation, reply.status, &reply.text(), self.token()))
        }
    }

    fn json<T: Serialize>(operation: &'static str, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| error::decode(operation, &e))
    }

    /// `GET /v1/status/leader`: the leader's address, empty while there is none.
    pub(crate) async fn leader(&self) -> Result<String> {
        const OP: &str = "read leader";
        let reply = self.call(OP, Method::GET, "/v1/status/leader", &self.dc(), None).await?;
        serde_json::from_slice(&reply.body).map_err(|e| error::decode(OP, &e))
    }

    /// `GET /v1/acl/token/self`: `Ok` when the token is valid or ACLs are
    /// disabled (the token is then ignored); `PermissionDenied` when Consul
    /// does not know the token.
    pub(crate) async fn check_token(&self) -> Result<()> {
        const OP: &str = "check ACL token";
        let reply = self.send(OP, Method::GET, "/v1/acl/token/self", &[], None, self.timeout).await?;
        match reply.status {
            200 => Ok(()),
            // "ACL support disabled": nothing to check.
            401 if reply.text().contains("ACL support disabled") => Ok(()),
            status => Err(error::status(OP, status, &reply.text(), self.token())),
        }
    }

    /// `PUT /v1/agent/service/register`: creates or replaces the service.
    pub(crate) async fn register_service(&self, registration: &ServiceRegistration) -> Result<()> {
        const OP: &str = "register service";
        let body = Self::json(OP, registration)?;
        self.call(OP, Method::PUT, "/v1/agent/service/register", &[], Some(body)).await.map(drop)
    }

    /// `PUT /v1/agent/service/deregister/<id>`; an unknown service is not an error.
    pub(crate) async fn deregister_service(&self, service_id: &str) -> Result<()> {
        const OP: &str = "deregister service";
        let path = format!("/v1/agent/service/deregister/{service_id}");
        let reply = self.send(OP, Method::PUT, &path, &[], None, self.timeout).await?;
        match reply.status {
            200 => Ok(()),
            status if status == 404 || reply.text().contains("Unknown service") => Ok(()),
            status => Err(error::status(OP, status, &reply.text(), self.token())),
        }
    }

    /// `PUT /v1/agent/check/pass/<id>`; an unknown check is `LeaseExpired`.
    pub(crate) async fn pass_check(&self, check_id: &str) -> Result<()> {
        const OP: &str = "pass TTL check";
        let path = format!("/v1/agent/check/pass/{check_id}");
        let reply = self.send(OP, Method::PUT, &path, &[], None, self.timeout).await?;
        let text = reply.text();
        match reply.status {
            200 => Ok(()),
            status if error::is_unknown_check(status, &text) => Err(Error::LeaseExpired { backend: error::KIND }),
            status => Err(error::status(OP, status, &text, self.token())),
        }
    }

    /// `PUT /v1/session/create` with `Behavior=delete`, no lock delay, bound
    /// to the node's `serfHealth` and the service check `check_id`.
    ///
    /// Consul refuses a session whose check it does not know yet or that is
    /// critical; the agent syncs a fresh registration to the catalog within
    /// milliseconds, so that answer is retried for a short while.
    pub(crate) async fn create_session(&self, name: &str, check_id: &str) -> Result<String> {
        const OP: &str = "create session";
        const ATTEMPTS: u32 = 20;
        let body = Self::json(
            OP,
            &SessionCreate {
                name,
                behavior: "delete",
                lock_delay: "0s",
                node_checks: vec!["serfHealth"],
                service_checks: vec![ServiceCheckRef { id: check_id }],
            },
        )?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reply =
                self.send(OP, Method::PUT, "/v1/session/create", &self.dc(), Some(body.clone()), self.timeout).await?;
            let text = reply.text();
            match reply.status {
                200 => {
                    let created: SessionCreated =
                        serde_json::from_slice(&reply.body).map_err(|e| error::decode(OP, &e))?;
                    return Ok(created.id);
                }
                status if attempt < ATTEMPTS && error::is_session_check_pending(status, &text) => {
                    tracing::debug!(check_id, attempt, "session check not in the catalog yet; retrying");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                status => return Err(error::status(OP, status, &text, self.token())),
            }
        }
    }

    /// `GET /v1/session/info/<id>`: whether the session still exists.
    pub(crate) async fn session_exists(&self, session: &str) -> Result<bool> {
        const OP: &str = "read session";
        let path = format!("/v1/session/info/{session}");
        let reply = self.call(OP, Method::GET, &path, &self.dc(), None).await?;
        let sessions: Option<Vec<serde_json::Value>> =
            serde_json::from_slice(&reply.body).map_err(|e| error::decode(OP, &e))?;
        Ok(sessions.is_some_and(|s| !s.is_empty()))
    }

    /// `PUT /v1/session/destroy/<id>`; a session already gone is not an error.
    pub(crate) async fn destroy_session(&self, session: &str) -> Result<()> {
        const OP: &str = "destroy session";
        let path = format!("/v1/session/destroy/{session}");
        self.call(OP, Method::PUT, &path, &self.dc(), None).await.map(drop)
    }

    fn blocking_pairs(
        &self,
        block: Option<Block>,
        mut pairs: Vec<(&'static str, String)>,
    ) -> (Vec<(&'static str, String)>, Duration) {
        pairs.extend(self.dc());
        match block {
            Some(block) => {
                pairs.push(("index", block.index.to_string()));
                pairs.push(("wait", go_duration(block.wait)));
                // Consul adds up to wait/16 of jitter before answering.
                (pairs, block.wait + block.wait / 16 + self.timeout)
            }
            None => (pairs, self.timeout),
        }
    }

    /// `GET /v1/health/service/<name>?passing=true`, optionally blocking.
    /// Returns the entries and the index to block on next.
    pub(crate) async fn health_passing(&self, service: &str, block: Option<Block>) -> Result<(Vec<HealthEntry>, u64)> {
        const OP: &str = "read service health";
        let path = format!("/v1/health/service/{service}");
        let (pairs, limit) = self.blocking_pairs(block, vec![("passing", "true".to_owned())]);
        let reply = self.send(OP, Method::GET, &path, &pairs, None, limit).await?;
        if reply.status != 200 {
            return Err(error::status(OP, reply.status, &reply.text(), self.token()));
        }
        let entries: Option<Vec<HealthEntry>> =
            serde_json::from_slice(&reply.body).map_err(|e| error::decode(OP, &e))?;
        Ok((entries.unwrap_or_default(), reply.index.unwrap_or(0)))
    }

    /// `GET /v1/kv/<prefix>?keys&separator=/`, optionally blocking: the keys
    /// directly below `prefix` and its sub-folders (ending in `/`). An empty
    /// prefix (404) is an empty list with its index.
    pub(crate) async fn kv_folders(&self, prefix: &str, block: Option<Block>) -> Result<(Vec<String>, u64)> {
        const OP: &str = "list KV folders";
        let path = format!("/v1/kv/{prefix}");
        let (pairs, limit) =
            self.blocking_pairs(block, vec![("keys", "true".to_owned()), ("separator", "/".to_owned())]);
        let reply = self.send(OP, Method::GET, &path, &pairs, None, limit).await?;
        match reply.status {
            200 => {
                let keys: Option<Vec<String>> =
                    serde_json::from_slice(&reply.body).map_err(|e| error::decode(OP, &e))?;
                Ok((keys.unwrap_or_default(), reply.index.unwrap_or(0)))
            }
            404 => Ok((Vec::new(), reply.index.unwrap_or(0))),
            status => Err(error::status(OP, status, &reply.text(), self.token())),
        }
    }

    /// `GET /v1/kv/<prefix>?recurse`, optionally blocking. An empty prefix
    /// (404) is an empty list with its index.
    pub(crate) async fn kv_list(&self, prefix: &str, block: Option<Block>) -> Result<(Vec<KvEntry>, u64)> {
        const OP: &str = "list KV prefix";
        let path = format!("/v1/kv/{prefix}");
        let (pairs, limit) = self.blocking_pairs(block, vec![("recurse", "true".to_owned())]);
        let reply = self.send(OP, Method::GET, &path, &pairs, None, limit).await?;
        match reply.status {
            200 => {
                let entries: Option<Vec<KvEntry>> =
                    serde_json::from_slice(&reply.body).map_err(|e| error::decode(OP, &e))?;
                Ok((entries.unwrap_or_default(), reply.index.unwrap_or(0)))
            }
            404 => Ok((Vec::new(), reply.index.unwrap_or(0))),
            status => Err(error::status(OP, status, &reply.text(), self.token())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_uses_consul_field_names() {
        let registration = ServiceRegistration {
            id: "ns-dev-app-1".into(),
            name: "ns-dev".into(),
            tags: vec!["app".into(), "v1".into()],
            meta: BTreeMap::from([("app_id".to_owned(), "app".to_owned())]),
            address: Some("10.0.0.1".into()),
            port: Some(9000),
            check: TtlCheck {
                check_id: "service:ns-dev-app-1".into(),
                name: "registry heartbeat".into(),
                notes: String::new(),
                ttl: go_duration(Duration::from_secs(2)),
                status: "passing".into(),
                deregister_critical_service_after: go_duration(Duration::from_secs(60)),
            },
        };
        let value = serde_json::to_value(&registration).expect("json");
        assert_eq!(value["ID"], "ns-dev-app-1");
        assert_eq!(value["Meta"]["app_id"], "app");
        assert_eq!(value["Check"]["CheckID"], "service:ns-dev-app-1");
        assert_eq!(value["Check"]["TTL"], "2000ms");
        assert_eq!(value["Check"]["DeregisterCriticalServiceAfter"], "60000ms");
    }

    #[test]
    fn health_entry_with_null_meta_decodes() {
        let raw = r#"[{"Node":{"Node":"n1","Address":"127.0.0.1"},"Service":{"ID":"x","Service":"s","Meta":null,"Tags":null},"Checks":[]}]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(raw).expect("decodes");
        assert_eq!(entries[0].service.meta, None);
    }
}
