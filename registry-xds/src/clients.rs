//! What the server knows of each connected client, as
//! [`XdsServer::clients`](crate::XdsServer::clients) reports it: the node,
//! and per resource type the versions sent and ACKed and the last NACK.

use std::time::SystemTime;

use crate::snapshot::ResourceType;

/// A client's last NACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The version it rejected.
    pub version: String,
    /// The client's `error_detail` message.
    pub message: String,
    /// When it arrived.
    pub at: SystemTime,
}

/// One resource type as seen by one client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeState {
    /// The version last sent.
    pub sent_version: String,
    /// The version the client last ACKed.
    pub acked_version: String,
    /// Responses sent.
    pub responses: u64,
    /// NACKs received.
    pub nacks: u64,
    /// The last NACK.
    pub last_nack: Option<Nack>,
    /// Subscribed names (empty with `wildcard`: everything).
    pub subscribed: Vec<String>,
    /// Subscribed to every resource of the type.
    pub wildcard: bool,
}

/// What the server knows of one connected client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientState {
    /// The stream's number on this server.
    pub stream: u64,
    /// The node id the client sent.
    pub node_id: String,
    /// `envoy` or `grpc`.
    pub kind: &'static str,
    /// Its user agent (`user_agent_name`).
    pub user_agent: String,
    /// Per resource type, in [`ResourceType::ALL`] order.
    pub types: [(ResourceType, TypeState); 4],
}

impl ClientState {
    /// The state of one type.
    pub fn get(&self, kind: ResourceType) -> &TypeState {
        &self.types[kind.index()].1
    }
}
