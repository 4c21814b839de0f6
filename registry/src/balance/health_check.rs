//! Active health checking of a channel's nodes through `grpc.health.v1`
//! (client-side health checking, gRFC A17), for nodes whose registration
//! outlives their ability to serve.
//!
//! Every `interval` the channel asks each node `Check(service)` over the
//! node's own connection, with `timeout`. `SERVING` keeps (or brings back)
//! the node in rotation; `NOT_SERVING`, `SERVICE_UNKNOWN`, an error or no
//! answer within the timeout takes it out until a later check says
//! `SERVING`. As gRFC A17 says, a server that does not implement the health
//! service (`UNIMPLEMENTED`) counts as healthy (with a warning): turning
//! health checking on must not empty a fleet of older servers.
//!
//! Where we differ from A17: it keeps a `Watch` stream open per connection;
//! we poll `Check` (one unary call per node and interval), which every
//! health server answers and which needs no stream per node. A node is
//! healthy until its first check answers otherwise. If every node is
//! unhealthy, calls still go to them (as with ejection, failing fast against
//! a node is no worse than having none).

use std::time::Duration;

/// Active health checking settings (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    /// The service name asked about (`""`: the whole server, the default).
    pub service: String,
    /// Time between checks of a node (default 5 s).
    pub interval: Duration,
    /// How long a check may take (default 1 s).
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self { service: String::new(), interval: Duration::from_secs(5), timeout: Duration::from_secs(1) }
    }
}

impl HealthCheck {
    /// Asks about `service` (as registered in the server's health reporter).
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Sets the time between checks.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Sets how long a check may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the node behind `channel` is healthy now.
    pub(crate) async fn probe(&self, channel: tonic::transport::Channel) -> bool {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let mut client = HealthClient::new(channel);
        let request = HealthCheckRequest { service: self.service.clone() };
        match tokio::time::timeout(self.timeout, client.check(request)).await {
            Ok(Ok(response)) => response.into_inner().status() == ServingStatus::Serving,
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                tracing::warn!("a node does not implement grpc.health.v1; counting it healthy");
                true
            }
            Ok(Err(_)) | Err(_) => false,
        }
    }
}
