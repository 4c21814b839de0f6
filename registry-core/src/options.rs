//! Backend URL options, parsed the same way by every backend.
//!
//! One convention for every `scheme://…?name=value` option:
//! - names are `snake_case`; a typo is an error naming the option
//!   ([`UrlOptions::finish`]), never silently ignored;
//! - booleans are `true|false` (also `1|0`, `yes|no`, `on|off`);
//! - durations carry their unit: `250ms`, `5s`, `2m`, `1h` (a bare number is
//!   refused, so `timeout=5` cannot mean five milliseconds to one reader and
//!   five seconds to another);
//! - errors name the field as `url.<option>`.
//!
//! [`redact`] hides credentials of any backend URL for logs and messages.

use std::time::Duration;

use crate::{Error, Result};

/// The `?name=value` options of a backend URL, taken one by one; whatever is
/// left at [`finish`](Self::finish) is unknown.
#[derive(Debug, Default)]
pub struct UrlOptions {
    /// `(name, value)` pairs not yet taken, in URL order.
    left: Vec<(String, String)>,
    known: Vec<&'static str>,
}

impl UrlOptions {
    /// Options from a URL query string (`a=1&b=x`, percent-decoded).
    pub fn from_query(query: &str) -> Self {
        let left =
            url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        Self { left, known: Vec::new() }
    }

    /// Takes option `name` (the last one wins when it is repeated).
    pub fn string(&mut self, name: &'static str) -> Option<String> {
        self.known.push(name);
        let mut found = None;
        self.left.retain(|(k, v)| {
            if k == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Takes a boolean option.
    pub fn bool(&mut self, name: &'static str) -> Result<Option<bool>> {
        self.string(name).map(|v| parse_bool(name, &v)).transpose()
    }

    /// Takes a duration option (`250ms`, `5s`, `2m`, `1h`).
    pub fn duration(&mut self, name: &'static str) -> Result<Option<Duration>> {
        self.string(name).map(|v| parse_duration(name, &v)).transpose()
    }

    /// Takes a whole-number option.
    pub fn number(&mut self, name: &'static str) -> Result<Option<u64>> {
        self.string(name)
            .map(|v| v.parse::<u64>().map_err(|_| invalid(name, format!("`{v}` is not a whole number"))))
            .transpose()
    }

    /// Fails on the first option no one took, naming it and the known ones.
    pub fn finish(self) -> Result<()> {
        match self.left.into_iter().next() {
            None => Ok(()),
            Some((name, _)) => {
                let mut known = self.known;
                known.sort_unstable();
                known.dedup();
                Err(Error::invalid("url", format!("unknown option `{name}` (known: {})", known.join(", "))))
            }
        }
    }
}

fn invalid(name: &str, reason: String) -> Error {
    // Field names are static in errors; the option name is in the reason.
    Error::invalid("url", format!("option `{name}`: {reason}"))
}

/// `true|false|1|0|yes|no|on|off`, any case.
pub fn parse_bool(name: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, format!("`{value}` is not true or false"))),
    }
}

/// A number with a unit: `ms`, `s`, `m` or `h` (`250ms`, `5s`, `0s`).
pub fn parse_duration(name: &str, value: &str) -> Result<Duration> {
    let digits = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let bad = || invalid(name, format!("`{value}` is not a duration such as 250ms, 5s, 2m or 1h"));
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => None,
    };
    millis.map(Duration::from_millis).ok_or_else(bad)
}

/// A backend URL for display: credentials (`user:pass@`, `token@`) become
/// `***`. Works on every scheme, including multi-host etcd URLs a URL parser
/// rejects.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rsplit_once('@') {
                Some((_, hosts)) => format!("{scheme}://***@{hosts}{}", &rest[authority_end..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: Error) -> String {
        match e {
            Error::InvalidConfig { field: "url", reason } => reason,
            other => panic!("expected InvalidConfig on url, got {other:?}"),
        }
    }

    #[test]
    fn options_are_taken_and_unknown_ones_named() {
        let mut o = UrlOptions::from_query("tls=yes&timeout=1500ms&wait=2m&dc=eu%201&typo=1");
        assert_eq!(o.bool("tls").ok().flatten(), Some(true));
        assert_eq!(o.duration("timeout").ok().flatten(), Some(Duration::from_millis(1500)));
        assert_eq!(o.duration("wait").ok().flatten(), Some(Duration::from_secs(120)));
        assert_eq!(o.string("dc").as_deref(), Some("eu 1"));
        assert_eq!(o.string("absent"), None);
        let why = reason(o.finish().expect_err("typo is unknown"));
        assert!(why.contains("`typo`") && why.contains("timeout"), "{why}");
    }

    #[test]
    fn bad_values_name_the_option() {
        let mut o = UrlOptions::from_query("timeout=5&tls=maybe&n=x");
        assert!(reason(o.duration("timeout").expect_err("no unit")).contains("`timeout`"));
        assert!(reason(o.bool("tls").expect_err("not a bool")).contains("`tls`"));
        assert!(reason(o.number("n").expect_err("not a number")).contains("`n`"));
        assert!(o.finish().is_ok());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("d", "0s").ok(), Some(Duration::ZERO));
        assert_eq!(parse_duration("d", "1h").ok(), Some(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "5 s", "-1s", "1.5s", "5d"] {
            assert!(parse_duration("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_hidden_on_every_scheme() {
        assert_eq!(redact("etcd://root:s3cret@h1:2379,h2:2379"), "etcd://***@h1:2379,h2:2379");
        assert_eq!(redact("consul://token-123@10.0.0.6:8500?dc=a"), "consul://***@10.0.0.6:8500?dc=a");
        assert_eq!(redact("kubernetes://?mode=lease"), "kubernetes://?mode=lease");
        assert_eq!(redact("memory://?x=a@b"), "memory://?x=a@b");
    }
}
