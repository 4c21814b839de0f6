//! Local test servers for `bench` when no `--url` is given, from the test-server cache.

/// A backend's URL, and whatever keeps its local server alive.
pub struct Target {
    /// URL to connect to.
    pub url: String,
    /// Keeps a spawned server running until dropped.
    pub _server: Option<Box<dyn std::any::Any + Send>>,
}

/// Resolves `--backend` (and an optional `--url`) to a target, starting a
/// local server from the test-server cache when needed.
pub fn resolve(backend: &str, url: Option<String>) -> anyhow::Result<Target> {
    if let Some(url) = url {
        return Ok(Target { url, _server: None });
    }
    match backend {
        "memory" => Ok(Target { url: "memory://bench".into(), _server: None }),
        other => anyhow::bail!("backend `{other}`: no local server support yet; pass --url"),
    }
}
