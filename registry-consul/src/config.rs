//! Connection options: agent address, ACL token, datacenter, timeouts, and
//! the `consul://` URL form.

use std::fmt;
use std::time::Duration;

use registry_core::options::{UrlOptions, parse_bool};
use registry_core::{Error, Result};

/// The agent a client talks to when nothing else is said (Consul's own default).
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";
/// Port of a `consul://` URL without one.
pub const DEFAULT_PORT: u16 = 8500;
/// Deadline of one ordinary request (register, pass, KV write, list).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one blocking query waits for a change before Consul answers
/// anyway (Consul adds up to 1/16 of jitter; its own maximum is 10 minutes).
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(60);
/// Longest blocking wait Consul honours.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(600);

/// How instances map to Consul services ([`ConsulConfig::layout`], URL
/// option `layout=single|per-app`).
///
/// Both layouts keep the node JSON in KV at
/// `<namespace>/<env>/<app_id>/<lease_id>` under a session bound to the
/// instance's TTL check, and the same service IDs; they differ in the
/// service **name** and in how discovery watches. Every process of one env
/// must use the same layout: a reader lists only the instances written in
/// its own layout (the others have a KV record but no passing service under
/// the name it reads, which it treats as expiring).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// The Go framework's layout (the default): every instance of an env is
    /// one service `<namespace>-<env>`. Go readers and writers share it, but
    /// every change wakes each discoverer's blocking queries, which answer
    /// with the **whole env** (about 3.7 KB per instance per change).
    #[default]
    Single,
    /// One service per app, `<namespace>-<env>-<app_id>`; discovery holds one
    /// blocking query on the env's app folders in KV and one per app on that
    /// app's KV prefix, and reads an app's health only when its KV changed,
    /// so a change costs its own app's instances (plus the env's list of app
    /// names). Go readers do not see these instances (they read
    /// `<namespace>-<env>`). Names must be what Consul's DNS interface
    /// serves: letters, digits and `-`, the service name at most 63 bytes
    /// ([`ConsulStore::validate`](crate::ConsulStore)). A discoverer holds
    /// `1 + apps` blocking connections to its agent, which counts them
    /// against `limits.http_max_conns_per_client` (200 per client address
    /// by default): raise it for envs of more than about 100 apps.
    PerApp,
}

impl Layout {
    /// The URL option's spelling: `single` or `per-app`.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Single => "single",
            Layout::PerApp => "per-app",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Layout {
    type Err = Error;

    /// `single` (also `single-service`) or `per-app`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "single" | "single-service" => Ok(Layout::Single),
            "per-app" => Ok(Layout::PerApp),
            other => Err(Error::invalid("consul.layout", format!("`{other}` is not `single` or `per-app`"))),
        }
    }
}

/// How to reach a Consul agent.
///
/// `Debug` never shows the ACL token:
///
/// ```
/// use registry_consul::ConsulConfig;
/// let config = ConsulConfig::new("http://127.0.0.1:8500").with_token("s3cret");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// Base URL of the agent's HTTP API, `http://host:port` or `https://host:port`.
    pub address: String,
    /// ACL token, sent as `X-Consul-Token`; never logged, never in error text.
    pub token: Option<String>,
    /// Datacenter for catalog, health, KV and session calls (`None`: the agent's own).
    pub datacenter: Option<String>,
    /// Deadline of one ordinary request.
    pub request_timeout: Duration,
    /// Wait of one blocking query (discovery).
    pub watch_wait: Duration,
    /// How instances map to Consul services (default: the Go framework's
    /// single service per env).
    pub layout: Layout,
}

impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("request_timeout", &self.request_timeout)
            .field("watch_wait", &self.watch_wait)
            .field("layout", &self.layout)
            .finish()
    }
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self::new(DEFAULT_ADDRESS)
    }
}

/// `host:port` becomes `http://host:port` (the form `CONSUL_HTTP_ADDR` often has).
fn with_scheme(address: &str, tls: bool) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.contains("://") {
        address.to_owned()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

impl ConsulConfig {
    /// An agent at `address` (`http://host:port`, `https://host:port`, or
    /// `host:port` meaning plain HTTP), no token, default timeouts.
    pub fn new(address: impl AsRef<str>) -> Self {
        Self {
            address: with_scheme(address.as_ref(), false),
            token: None,
            datacenter: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            watch_wait: DEFAULT_WATCH_WAIT,
            layout: Layout::Single,
        }
    }

    /// Consul's own environment variables: `CONSUL_HTTP_ADDR` (default
    /// [`DEFAULT_ADDRESS`]), `CONSUL_HTTP_SSL`, `CONSUL_HTTP_TOKEN`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let tls = var("CONSUL_HTTP_SSL").and_then(|v| parse_bool("CONSUL_HTTP_SSL", &v).ok()).unwrap_or(false);
        let address = var("CONSUL_HTTP_ADDR").map_or_else(|| DEFAULT_ADDRESS.to_owned(), |a| with_scheme(&a, tls));
        let mut config = Self::new(address);
        config.token = var("CONSUL_HTTP_TOKEN");
        config
    }

    /// Sets the ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// Sets the datacenter.
    pub fn with_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        let datacenter = datacenter.into();
        self.datacenter = (!datacenter.is_empty()).then_some(datacenter);
        self
    }

    /// Sets the deadline of one ordinary request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the wait of one blocking query.
    pub fn with_watch_wait(mut self, wait: Duration) -> Self {
        self.watch_wait = wait;
        self
    }

    /// Sets the layout ([`Layout`]).
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Parses `consul://[token@]host[:port][?dc=…&timeout=…&wait=…&tls=…&layout=…]`
    /// (`consuls://` is the same with TLS on). Options follow core's
    /// [`UrlOptions`] convention: `timeout=5s` (each request), `wait=5m`
    /// (blocking-query wait), `tls=true|false`, `dc=NAME`,
    /// `layout=single|per-app` ([`Layout`]).
    ///
    /// The token is the URL's user name (percent-encoded), or its password
    /// when the user name is empty (`consul://:token@host`). `tls=true`, or
    /// the scheme `consuls://`, talks HTTPS. Unknown parameters are refused, so a typo is not
    /// silently ignored. Errors name the field and never repeat the token.
    ///
    /// ```
    /// use registry_consul::ConsulConfig;
    /// let url = url::Url::parse("consul://s3cret@10.0.0.5:8501?dc=eu1&tls=true&timeout=2s").unwrap();
    /// let config = ConsulConfig::from_url(&url).unwrap();
    /// assert_eq!(config.address, "https://10.0.0.5:8501");
    /// assert_eq!(config.token.as_deref(), Some("s3cret"));
    /// assert_eq!(config.datacenter.as_deref(), Some("eu1"));
    /// ```
    pub fn from_url(url: &url::Url) -> Result<Self> {
        let mut tls = match url.scheme() {
            "consul" => false,
            "consuls" => true,
            other => return Err(Error::invalid("url", format!("scheme `{other}` is not `consul` or `consuls`"))),
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| Error::invalid("url", "no host"))?;
        if !matches!(url.path(), "" | "/") {
            return Err(Error::invalid("url", format!("unexpected path `{}`", url.path())));
        }
        let port = url.port().unwrap_or(DEFAULT_PORT);
        // `Url::username`/`password` keep the percent-encoding.
        let decode_userinfo = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let token = match (url.username(), url.password()) {
            ("", Some(password)) if !password.is_empty() => Some(decode_userinfo(password)),
            ("", _) => None,
            (user, _) => Some(decode_userinfo(user)),
        };
        let mut config = Self::new("");
        config.token = token.filter(|t| !t.is_empty());
        let mut options = UrlOptions::from_query(url.query().unwrap_or(""));
        config.datacenter = options.string("dc").filter(|dc| !dc.is_empty());
        if let Some(timeout) = options.duration("timeout")? {
            config.request_timeout = timeout;
        }
        if let Some(wait) = options.duration("wait")? {
            config.watch_wait = wait;
        }
        if let Some(on) = options.bool("tls")? {
            tls = on;
        }
        if let Some(layout) = options.string("layout") {
            config.layout = layout.parse()?;
        }
        options.finish()?;
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
        config.address = format!("{}://{host}:{port}", if tls { "https" } else { "http" });
        config.validate()?;
        Ok(config)
    }

    /// Checks the values; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let uri: hyper::Uri = self
            .address
            .parse()
            .map_err(|_| Error::invalid("consul.address", format!("`{}` is not a URL", self.address)))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(Error::invalid(
                "consul.address",
                format!("`{}` is not an http(s)://host:port URL", self.address),
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(Error::invalid("consul.address", format!("`{}` must not have a path or query", self.address)));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(Error::invalid("consul.address", "must not carry credentials; set the token instead"));
        }
        if let Some(token) = &self.token
            && hyper::header::HeaderValue::from_str(token).is_err()
        {
            return Err(Error::invalid("consul.token", "contains characters not allowed in an HTTP header"));
        }
        if let Some(dc) = &self.datacenter
            && !dc.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::invalid("consul.datacenter", format!("`{dc}` is not a datacenter name")));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::invalid("consul.request_timeout", "must be positive"));
        }
        if self.watch_wait.is_zero() || self.watch_wait > MAX_WATCH_WAIT {
            return Err(Error::invalid("consul.watch_wait", format!("must be between 1 ms and {MAX_WATCH_WAIT:?}")));
        }
        Ok(())
    }

    /// The address without a trailing slash, for building request URLs.
    pub(crate) fn base(&self) -> &str {
        self.address.trim_end_matches('/')
    }
}

impl std::str::FromStr for ConsulConfig {
    type Err = Error;

    /// Same as [`ConsulConfig::from_url`], from a string.
    fn from_str(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| Error::invalid("url", format!("not a consul:// URL: {e}")))?;
        Self::from_url(&parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<ConsulConfig> {
        ConsulConfig::from_url(&url::Url::parse(url).expect("url"))
    }

    #[test]
    fn url_with_everything() {
        let c = parse("consul://to%2Fken@consul.local:8600?dc=dc2&timeout=1500ms&wait=30s&tls=1").expect("ok");
        assert_eq!(c.address, "https://consul.local:8600");
        assert_eq!(c.token.as_deref(), Some("to/ken"));
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.watch_wait, Duration::from_secs(30));
        assert_eq!(c.layout, Layout::Single);
    }

    #[test]
    fn layout_option() {
        assert_eq!(parse("consul://h:1?layout=per-app").expect("ok").layout, Layout::PerApp);
        assert_eq!(parse("consul://h:1?layout=single").expect("ok").layout, Layout::Single);
        match parse("consul://h:1?layout=sideways") {
            Err(Error::InvalidConfig { field, reason }) => {
                assert_eq!(field, "consul.layout");
                assert!(reason.contains("sideways"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Layout::PerApp.to_string(), "per-app");
    }

    #[test]
    fn consuls_scheme_is_https() {
        assert_eq!(parse("consuls://h:8501").expect("ok").address, "https://h:8501");
        assert_eq!(parse("consuls://h:8501?tls=false").expect("ok").address, "http://h:8501");
    }

    #[test]
    fn url_defaults() {
        let c = parse("consul://127.0.0.1").expect("ok");
        assert_eq!(c.address, "http://127.0.0.1:8500");
        assert_eq!(c.token, None);
        assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn token_as_password() {
        let c = parse("consul://:abc+def@h:1").expect("ok");
        assert_eq!(c.token.as_deref(), Some("abc+def"));
    }

    #[test]
    fn ipv6_host() {
        assert_eq!(parse("consul://[::1]:8500").expect("ok").address, "http://[::1]:8500");
    }

    #[test]
    fn bad_urls_name_the_field_and_hide_the_token() {
        let field = |r: Result<ConsulConfig>| match r {
            Err(Error::InvalidConfig { field, reason }) => {
                assert!(!reason.contains("s3cret"), "{reason}");
                field
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(field(parse("etcd://s3cret@h:1")), "url");
        assert_eq!(field(parse("consul://s3cret@h:1?colour=red")), "url");
        assert_eq!(field(parse("consul://s3cret@h:1?timeout=soon")), "url");
        assert_eq!(field(parse("consul://s3cret@h:1?tls=maybe")), "url");
        let reason = |r: Result<ConsulConfig>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(reason(parse("consul://h:1?timeout=5")).contains("`timeout`"), "the option is named");
        assert_eq!(field(parse("consul://s3cret@h:1/kv")), "url");
    }

    #[test]
    fn debug_hides_the_token() {
        let c = ConsulConfig::new("127.0.0.1:8500").with_token("s3cret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert_eq!(c.address, "http://127.0.0.1:8500");
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(ConsulConfig::new("ftp://x").validate().is_err());
        assert!(ConsulConfig::new("http://x:1/v1").validate().is_err());
        assert!(ConsulConfig::new("http://x:1").with_watch_wait(Duration::from_secs(3600)).validate().is_err());
        assert!(ConsulConfig::new("http://x:1").validate().is_ok());
    }
}
