//! [`Selector`]: which discovered nodes a balanced channel sends calls to.

use registry_core::ServiceNode;

/// Which discovered nodes to balance across.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selector {
    /// Nodes that serve this gRPC method (`/pkg.Service/Method`).
    Method(String),
    /// Nodes of this app.
    App(String),
}

impl Selector {
    /// Nodes that serve `method` (`/pkg.Service/Method`).
    pub fn method(method: impl Into<String>) -> Self {
        Selector::Method(method.into())
    }

    /// Nodes of the app `app_id`.
    pub fn app(app_id: impl Into<String>) -> Self {
        Selector::App(app_id.into())
    }

    /// True when `node` is one of the selected nodes (draining or not).
    pub fn matches(&self, node: &ServiceNode) -> bool {
        match self {
            Selector::Method(m) => node.serves(m),
            Selector::App(a) => &node.meta.app_id == a,
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Method(m) => write!(f, "method `{m}`"),
            Selector::App(a) => write!(f, "app `{a}`"),
        }
    }
}
