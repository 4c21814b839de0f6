//! The names clients ask for, and the names of the resources derived for them.
//!
//! One server serves one env (the env of its [`Discovery`](registry_core::Discovery)
//! view). With that env called `E`:
//!
//! | name | what it is | Listener | RouteConfiguration | Cluster / ClusterLoadAssignment |
//! |---|---|---|---|---|
//! | `E` | the env target: every registered method of the env | `E` | `E` | — |
//! | `<app_id>.E` | the app target: the methods of one app | `<app_id>.E` | `<app_id>.E` | `<app_id>.E` |
//!
//! A gRPC channel to `xds:///E` or `xds:///greeter.E` asks for the listener
//! named exactly as the target's host part, port included when the target has
//! one (`xds:///greeter.E:50051` asks for `greeter.E:50051`). A listener name
//! may therefore end in `:<port>` (digits only); the port is ignored: the
//! listener is named as asked and points at the route configuration of the
//! name without the port.
//!
//! A name is valid when it is not empty, at most [`MAX_NAME_LEN`] bytes, and
//! holds no `/`, whitespace or control character (the rule the backends apply
//! to app ids, narrowed to what is safe in a URI host part). A valid name that
//! matches nothing (an app with no live instance, another env) is answered as
//! absent, never as an error.

use std::fmt;

/// Longest name accepted (bytes).
pub const MAX_NAME_LEN: usize = 253;

/// Why a requested name is not a name this server can ever serve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("the name is {0} bytes long; at most {MAX_NAME_LEN} are accepted")]
    TooLong(usize),
    /// The name holds a character that no target name holds.
    #[error("the name {name:?} holds {bad:?}, which no target name holds")]
    BadCharacter {
        /// The name.
        name: String,
        /// The first offending character.
        bad: char,
    },
    /// The part after the last `:` is not a port number.
    #[error("the name {0:?} ends in `:` followed by something other than a port number")]
    BadPort(String),
}

/// What a (valid) name designates in the served env.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The env target: routes to every app of the env.
    Env,
    /// The target of one app.
    App(String),
}

impl Target {
    /// The canonical name of this target in `env` (the name of its listener
    /// without a port, of its route configuration and, for an app, of its
    /// cluster).
    pub fn name(&self, env: &str) -> String {
        match self {
            Target::Env => env.to_owned(),
            Target::App(app) => app_name(app, env),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Env => f.write_str("env"),
            Target::App(app) => write!(f, "app {app}"),
        }
    }
}

/// The name of an app's cluster, assignment, route configuration and listener.
pub fn app_name(app_id: &str, env: &str) -> String {
    format!("{app_id}.{env}")
}

/// Checks the characters and length of a requested name.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if let Some(bad) = name.chars().find(|c| *c == '/' || c.is_whitespace() || c.is_control()) {
        return Err(NameError::BadCharacter { name: name.to_owned(), bad });
    }
    Ok(())
}

/// Splits an optional `:<port>` off a listener name. `Ok((name, None))` when
/// there is no `:`.
pub fn split_port(name: &str) -> Result<(&str, Option<u16>), NameError> {
    match name.rsplit_once(':') {
        None => Ok((name, None)),
        // Only the canonical spelling of a port is a port (`:080` and `:+80` are not).
        Some((host, text)) => match text.parse::<u16>() {
            Ok(port) if !host.is_empty() && port.to_string() == text => Ok((host, Some(port))),
            _ => Err(NameError::BadPort(name.to_owned())),
        },
    }
}

/// What `name` (canonical: no port) designates in `env`, or `None` when it
/// designates nothing this server can serve (another env, a malformed name).
pub fn parse_target(name: &str, env: &str) -> Option<Target> {
    if validate(name).is_err() {
        return None;
    }
    if name == env {
        return Some(Target::Env);
    }
    let app = name.strip_suffix(env)?.strip_suffix('.')?;
    if app.is_empty() { None } else { Some(Target::App(app.to_owned())) }
}

/// What a listener name designates: [`split_port`] then [`parse_target`].
pub fn parse_listener(name: &str, env: &str) -> Option<Target> {
    let (host, _) = split_port(name).ok()?;
    parse_target(host, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_app_targets_parse() {
        assert_eq!(parse_target("prod", "prod"), Some(Target::Env));
        assert_eq!(parse_target("greeter.prod", "prod"), Some(Target::App("greeter".into())));
        assert_eq!(parse_target("a.b.prod", "prod"), Some(Target::App("a.b".into())));
        assert_eq!(parse_target("greeter.staging", "prod"), None);
        assert_eq!(parse_target(".prod", "prod"), None);
        assert_eq!(parse_target("greeterprod", "prod"), None);
        assert_eq!(Target::App("greeter".into()).name("prod"), "greeter.prod");
        assert_eq!(Target::Env.name("prod"), "prod");
    }

    #[test]
    fn listener_names_may_carry_a_port() {
        assert_eq!(parse_listener("greeter.prod:50051", "prod"), Some(Target::App("greeter".into())));
        assert_eq!(parse_listener("prod:1", "prod"), Some(Target::Env));
        assert_eq!(split_port("prod:080"), Err(NameError::BadPort("prod:080".into())));
        assert_eq!(split_port("prod:x"), Err(NameError::BadPort("prod:x".into())));
        assert_eq!(split_port(":80"), Err(NameError::BadPort(":80".into())));
        assert_eq!(split_port("prod:70000"), Err(NameError::BadPort("prod:70000".into())));
        assert_eq!(parse_listener("prod:x", "prod"), None);
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert!(matches!(validate("a/b"), Err(NameError::BadCharacter { bad: '/', .. })));
        assert!(matches!(validate("a b"), Err(NameError::BadCharacter { bad: ' ', .. })));
        assert!(matches!(validate("a\u{1}"), Err(NameError::BadCharacter { .. })));
        assert_eq!(validate(&"x".repeat(254)), Err(NameError::TooLong(254)));
        assert_eq!(parse_target("a/b.prod", "prod"), None);
    }
}
