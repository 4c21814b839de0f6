//! Connection options of the etcd backend, and the `etcd://` URL form.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use registry_core::options::{UrlOptions, redact};
use registry_core::{Error, Result};

/// Port used for a URL host without one.
pub const DEFAULT_PORT: u16 = 2379;
/// Default [`EtcdConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`EtcdConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default HTTP/2 keepalive: a ping every 10 s (etcd refuses pings more
/// often than every 5 s by default), answered within 5 s.
pub const DEFAULT_KEEPALIVE: Keepalive =
    Keepalive { interval: Duration::from_secs(10), timeout: Duration::from_secs(5) };

/// How to reach an etcd cluster.
///
/// ```
/// use std::time::Duration;
/// use registry_etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .with_user("registry", "s3cret")
///     .with_request_timeout(Duration::from_secs(2));
/// // The password never appears in `Debug` output.
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let same = EtcdConfig::parse_url("etcd://registry:s3cret@10.0.0.1:2379,10.0.0.2:2379?timeout=2s")?;
/// assert_eq!(same.endpoints, config.endpoints);
/// # Ok::<(), registry_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Cluster members, `host:port` (or `http://host:port`, `https://host:port`).
    /// Requests are balanced over all of them.
    pub endpoints: Vec<String>,
    /// User name, when the cluster has auth enabled.
    pub user: Option<String>,
    /// Password of [`user`](Self::user). Hidden from `Debug`.
    pub password: Option<String>,
    /// TLS, when the cluster serves HTTPS.
    pub tls: Option<EtcdTls>,
    /// Longest time to open a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Longest time any one call may take (a put, a get, a keepalive round
    /// trip, opening a watch). Unreachable endpoints fail within it.
    pub request_timeout: Duration,
    /// HTTP/2 keepalive, so a server that vanished without closing the
    /// connection is noticed and open watches end with an error; `None`
    /// disables it.
    pub keepalive: Option<Keepalive>,
}

/// TLS options: the CA that signed the servers' certificates and, for
/// client-certificate auth, the client's certificate and key (PEM files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdTls {
    /// PEM file of the CA that signed the servers' certificates. Needed in
    /// practice: no system trust roots are loaded.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate.
    pub cert: Option<PathBuf>,
    /// PEM file of the client key (paired with [`cert`](Self::cert)).
    pub key: Option<PathBuf>,
    /// Server name to verify, when it differs from the endpoint's host.
    pub domain: Option<String>,
}

impl EtcdTls {
    /// TLS trusting the CA in `ca` (a PEM file).
    pub fn with_ca(ca: impl Into<PathBuf>) -> Self {
        Self { ca: Some(ca.into()), ..Self::default() }
    }

    /// Adds a client certificate and key (PEM files).
    pub fn with_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Sets the server name to verify.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }
}

/// HTTP/2 keepalive pings on the client's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Time between pings.
    pub interval: Duration,
    /// How long to wait for a ping's answer before the connection is dropped.
    pub timeout: Duration,
}

impl Keepalive {
    /// Pings every `interval`, each answered within `timeout`.
    pub const fn new(interval: Duration, timeout: Duration) -> Self {
        Self { interval, timeout }
    }
}

impl Default for EtcdConfig {
    /// A local etcd: `127.0.0.1:2379`, default timeouts, no auth, no TLS.
    fn default() -> Self {
        Self::new([format!("127.0.0.1:{DEFAULT_PORT}")])
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

impl EtcdConfig {
    /// A cluster reached at `endpoints`, with default timeouts and keepalive.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            password: None,
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keepalive: Some(DEFAULT_KEEPALIVE),
        }
    }

    /// Authenticates as `user` with `password`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Connects with TLS.
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-call timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets (or with `None` disables) HTTP/2 keepalive.
    pub fn with_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Checks the options, naming the first invalid one
    /// ([`Error::InvalidConfig`]).
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::invalid("etcd endpoints", "at least one endpoint is needed"));
        }
        for endpoint in &self.endpoints {
            validate_endpoint(endpoint, self.tls.is_some())?;
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(Error::invalid("etcd user", "a password was given without a user"));
        }
        if self.user.as_deref() == Some("") {
            return Err(Error::invalid("etcd user", "the user name is empty"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid("etcd connect_timeout", "must be greater than zero"));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::invalid("etcd request_timeout", "must be greater than zero"));
        }
        if let Some(k) = &self.keepalive
            && (k.interval.is_zero() || k.timeout.is_zero())
        {
            return Err(Error::invalid("etcd keepalive", "interval and timeout must be greater than zero"));
        }
        if let Some(tls) = &self.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err(Error::invalid("etcd tls", "a client certificate needs its key, and a key its certificate"));
        }
        Ok(())
    }

    /// Parses `etcd://[user:password@]host1[:port],host2[:port]…[/][?options]`
    /// (`etcds://` is the same with TLS on).
    ///
    /// Hosts without a port use 2379; user and password are
    /// percent-decoded. Options (all optional, parsed with core's
    /// [`UrlOptions`]): `tls=true|false`, `ca=PATH`, `cert=PATH`, `key=PATH`,
    /// `domain=NAME` (any of `ca`, `cert`, `key`, `domain` turns TLS on),
    /// `connect_timeout=2s`, `timeout=5s` (each request), `keepalive=10s`
    /// (`0s` disables keepalive). An unknown option is an error, so a typo is
    /// never silently ignored.
    ///
    /// This takes a string because a host list with ports
    /// (`h1:2379,h2:2379`) is not a valid authority for [`url::Url`].
    pub fn parse_url(url: &str) -> Result<Self> {
        let (rest, secure) = match (url.strip_prefix("etcd://"), url.strip_prefix("etcds://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => {
                return Err(Error::invalid(
                    "url",
                    format!("an etcd URL starts with `etcd://` or `etcds://`: `{}`", redact(url)),
                ));
            }
        };
        let (before_fragment, _) = rest.split_once('#').unwrap_or((rest, ""));
        let (head, query) = before_fragment.split_once('?').unwrap_or((before_fragment, ""));
        let (authority, path) = head.split_once('/').unwrap_or((head, ""));
        if !path.is_empty() {
            return Err(Error::invalid("url", format!("an etcd URL has no path, found `/{path}`")));
        }
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let endpoints = hosts.split(',').map(|host| with_default_port(host.trim())).collect::<Result<Vec<_>>>()?;
        let mut config = EtcdConfig::new(endpoints);
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            config.user = Some(percent_decode(user)?);
            config.password = Some(percent_decode(password)?);
        }
        config.apply_query(query, secure)?;
        config.validate()?;
        Ok(config)
    }

    /// [`parse_url`](Self::parse_url) for an already parsed URL (one host,
    /// or hosts without ports: `etcd://h1,h2:2379` parses as a [`url::Url`]).
    pub fn from_url(url: &url::Url) -> Result<Self> {
        Self::parse_url(url.as_str())
    }

    /// Applies the URL's options; `secure` (an `etcds://` URL) turns TLS on.
    fn apply_query(&mut self, query: &str, secure: bool) -> Result<()> {
        let mut options = UrlOptions::from_query(query);
        let tls_flag = options.bool("tls")?;
        let tls = EtcdTls {
            ca: options.string("ca").map(PathBuf::from),
            cert: options.string("cert").map(PathBuf::from),
            key: options.string("key").map(PathBuf::from),
            domain: options.string("domain"),
        };
        let tls_wanted = secure || tls != EtcdTls::default();
        if let Some(timeout) = options.duration("connect_timeout")? {
            self.connect_timeout = timeout;
        }
        if let Some(timeout) = options.duration("timeout")? {
            self.request_timeout = timeout;
        }
        if let Some(interval) = options.duration("keepalive")? {
            self.keepalive = (!interval.is_zero())
                .then(|| Keepalive::new(interval, self.keepalive.map_or(DEFAULT_KEEPALIVE.timeout, |k| k.timeout)));
        }
        options.finish()?;
        match (tls_flag, tls_wanted) {
            (Some(false), true) => {
                return Err(Error::invalid(
                    "url",
                    "`tls=false` contradicts `etcds://` or the ca/cert/key/domain options",
                ));
            }
            (Some(true), _) | (None, true) => self.tls = Some(tls),
            (Some(false), false) | (None, false) => self.tls = None,
        }
        Ok(())
    }
}

impl FromStr for EtcdConfig {
    type Err = Error;

    /// Same as [`EtcdConfig::parse_url`].
    fn from_str(s: &str) -> Result<Self> {
        Self::parse_url(s)
    }
}

/// Checks one endpoint: `host:port` or `http(s)://host:port`, and no
/// `http://` when TLS is on.
fn validate_endpoint(endpoint: &str, tls: bool) -> Result<()> {
    let bare = if let Some(rest) = endpoint.strip_prefix("http://") {
        if tls {
            return Err(Error::invalid("etcd endpoints", format!("`{endpoint}` is plain HTTP but TLS is configured")));
        }
        rest
    } else {
        endpoint.strip_prefix("https://").unwrap_or(endpoint)
    };
    let bare = bare.trim_end_matches('/');
    let Some((host, port)) = bare.rsplit_once(':') else {
        return Err(Error::invalid("etcd endpoints", format!("`{endpoint}` has no port (expected host:port)")));
    };
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(Error::invalid("etcd endpoints", format!("`{endpoint}` has no valid host")));
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(Error::invalid("etcd endpoints", format!("`{endpoint}` has an invalid port `{port}`")));
    }
    Ok(())
}

/// `host` → `host:2379`; `host:port` and `[v6]:port` unchanged.
fn with_default_port(host: &str) -> Result<String> {
    if host.is_empty() {
        return Err(Error::invalid("url", "empty host in the etcd URL's host list"));
    }
    let has_port = match host.rfind(']') {
        // IPv6 literal: a port follows the closing bracket.
        Some(close) => host[close..].contains(':'),
        None => host.contains(':'),
    };
    Ok(if has_port { host.to_owned() } else { format!("{host}:{DEFAULT_PORT}") })
}

/// Decodes `%XX` escapes (not `+`, which stays a plus in user info).
fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::invalid("url", "bad percent-escape in the etcd URL's user info"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid("url", "the etcd URL's user info is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_url_with_credentials_and_options() {
        let config = EtcdConfig::parse_url(
            "etcd://alice:p%40ss%3Aword@h1:2379,h2,[::1]:2380?connect_timeout=250ms&timeout=1500ms&keepalive=0s",
        )
        .expect("parses");
        assert_eq!(config.endpoints, ["h1:2379", "h2:2379", "[::1]:2380"]);
        assert_eq!(config.user.as_deref(), Some("alice"));
        assert_eq!(config.password.as_deref(), Some("p@ss:word"));
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.keepalive, None);
        assert_eq!(config.tls, None);
    }

    #[test]
    fn tls_options_turn_tls_on() {
        let config =
            EtcdConfig::parse_url("etcd://h1:2379/?ca=/etc/ca.pem&cert=/etc/c.pem&key=/etc/k.pem").expect("parses");
        let tls = config.tls.expect("tls on");
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(tls.cert, Some(PathBuf::from("/etc/c.pem")));
        assert_eq!(tls.key, Some(PathBuf::from("/etc/k.pem")));
        let plain = EtcdConfig::parse_url("etcd://h1?tls=true").expect("parses");
        assert_eq!(plain.tls, Some(EtcdTls::default()));
        let secure = EtcdConfig::parse_url("etcds://h1,h2?ca=/etc/ca.pem").expect("parses");
        assert_eq!(secure.tls, Some(EtcdTls::with_ca("/etc/ca.pem")));
        assert!(EtcdConfig::parse_url("etcds://h1?tls=false").is_err());
        assert!(EtcdConfig::parse_url("etcd://h1?tls=false&ca=/x").is_err());
        assert!(EtcdConfig::parse_url("etcd://h1?cert=/c.pem").is_err(), "cert without key");
    }

    #[test]
    fn single_host_url_from_url_crate() {
        let url = url::Url::parse("etcd://u:p@h1,h2:2379?tls=false").expect("url parses");
        let config = EtcdConfig::from_url(&url).expect("parses");
        assert_eq!(config.endpoints, ["h1:2379", "h2:2379"]);
        assert_eq!(config.user.as_deref(), Some("u"));
    }

    #[test]
    fn bad_urls_name_the_problem() {
        for (url, needle) in [
            ("http://h1:2379", "etcd://"),
            ("etcd://h1:2379?typo=1", "typo"),
            ("etcd://h1:99999", "invalid port"),
            ("etcd://h1:2379,,h2", "empty host"),
            ("etcd://h1:2379/some/path", "no path"),
            ("etcd://h1?timeout=soon", "`timeout`"),
            ("etcd://h1?timeout=1500", "`timeout`"),
            ("etcd://h1?timeout=0s", "request_timeout"),
        ] {
            let err = EtcdConfig::parse_url(url).expect_err(url);
            assert!(matches!(err, Error::InvalidConfig { .. }), "{url}: {err:?}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn errors_and_debug_never_show_the_password() {
        let err = EtcdConfig::parse_url("etcdx://bob:hunter2@h1").expect_err("bad scheme");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let config = EtcdConfig::new(["h1:2379"]).with_user("bob", "hunter2");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("bob") && debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(EtcdConfig::new(Vec::<String>::new()).validate().is_err());
        assert!(EtcdConfig::new(["h1"]).validate().is_err(), "no port");
        assert!(EtcdConfig::new(["http://h1:2379"]).validate().is_ok());
        assert!(EtcdConfig::new(["http://h1:2379"]).with_tls(EtcdTls::default()).validate().is_err());
        assert!(EtcdConfig::new(["https://h1:2379"]).with_tls(EtcdTls::default()).validate().is_ok());
    }
}
