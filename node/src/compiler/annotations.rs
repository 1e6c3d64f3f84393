//! `nginx.ingress.kubernetes.io/*` annotations parsed into typed values.
//!
//! An invalid value is an error for the Ingress that carries it, naming the key and value.
//! Snippets are never executed: they are reported as ignored. Unknown keys are ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use raftgate_proxy::model::Balance;
use raftgate_proxy::model::Protocol;

use crate::config::parse_size;

/// The annotation prefix ingress-nginx uses.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// An annotation value that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("annotation {PREFIX}{key}: invalid value {value:?}: {reason}")]
pub struct AnnotationError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// The annotations this build understands, all optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Annotations {
    pub use_regex: bool,
    pub backend_protocol: Option<Protocol>,
    pub ssl_redirect: Option<bool>,
    pub proxy_body_size: Option<u64>,
    pub proxy_connect_timeout: Option<Duration>,
    pub proxy_read_timeout: Option<Duration>,
    pub proxy_send_timeout: Option<Duration>,
    pub proxy_next_upstream_tries: Option<u32>,
    pub load_balance: Option<Balance>,
    /// Snippet annotations present on the object; never executed.
    pub ignored_snippets: Vec<String>,
}

impl Annotations {
    /// Parses the annotations of one object.
    pub fn parse(all: Option<&BTreeMap<String, String>>) -> Result<Annotations, AnnotationError> {
        let mut a = Annotations::default();
        let Some(all) = all else { return Ok(a) };
        for (full, value) in all {
            let Some(key) = full.strip_prefix(PREFIX) else {
                continue;
            };
            let err = |reason: &str| AnnotationError {
                key: key.into(),
                value: value.clone(),
                reason: reason.into(),
            };
            let v = value.trim();
            match key {
                "use-regex" => {
                    a.use_regex = boolean(v).ok_or_else(|| err("expected \"true\" or \"false\""))?
                }
                "ssl-redirect" => {
                    a.ssl_redirect =
                        Some(boolean(v).ok_or_else(|| err("expected \"true\" or \"false\""))?)
                }
                "backend-protocol" => {
                    a.backend_protocol = Some(match v.to_ascii_uppercase().as_str() {
                        "HTTP" => Protocol::Http,
                        "HTTPS" => Protocol::Https,
                        "GRPC" | "HTTP2" | "H2C" => Protocol::H2c,
                        "GRPCS" => Protocol::H2,
                        "AJP" | "FCGI" => {
                            return Err(err("AJP and FCGI backends are not supported"));
                        }
                        _ => return Err(err("expected HTTP, HTTPS, GRPC, GRPCS or HTTP2")),
                    })
                }
                "proxy-body-size" => {
                    a.proxy_body_size = Some(
                        parse_size(v).ok_or_else(|| err("expected a size such as 0, 8k, 1m"))?,
                    )
                }
                "proxy-connect-timeout" => {
                    a.proxy_connect_timeout =
                        Some(seconds(v).ok_or_else(|| err("expected whole seconds above 0"))?)
                }
                "proxy-read-timeout" => {
                    a.proxy_read_timeout =
                        Some(seconds(v).ok_or_else(|| err("expected whole seconds above 0"))?)
                }
                "proxy-send-timeout" => {
                    a.proxy_send_timeout =
                        Some(seconds(v).ok_or_else(|| err("expected whole seconds above 0"))?)
                }
                "proxy-next-upstream-tries" => {
                    a.proxy_next_upstream_tries =
                        Some(v.parse().map_err(|_| err("expected a whole number"))?)
                }
                "load-balance" => {
                    a.load_balance = Some(match v {
                        "round_robin" => Balance::RoundRobin,
                        "least_conn" | "least_request" => Balance::LeastRequest,
                        "ewma" => Balance::Ewma,
                        _ => return Err(err("expected round_robin, least_conn or ewma")),
                    })
                }
                k if k.ends_with("-snippet") || k == "configuration-snippet" => {
                    a.ignored_snippets.push(k.to_string())
                }
                _ => {
                    tracing::debug!(annotation = %full, "annotation not supported by raftgate; ignored")
                }
            }
        }
        Ok(a)
    }
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// ingress-nginx timeouts are whole seconds ("60"); "60s" is accepted too.
fn seconds(v: &str) -> Option<Duration> {
    let n: u64 = v.strip_suffix('s').unwrap_or(v).parse().ok()?;
    (n > 0).then(|| Duration::from_secs(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> Result<Annotations, AnnotationError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        Annotations::parse(Some(&m))
    }

    #[test]
    fn typed_values() {
        let a = ann(&[
            ("use-regex", "true"),
            ("backend-protocol", "GRPC"),
            ("proxy-body-size", "8m"),
            ("proxy-read-timeout", "3600"),
            ("load-balance", "ewma"),
            ("server-snippet", "return 200;"),
        ])
        .unwrap();
        assert!(a.use_regex);
        assert_eq!(a.backend_protocol, Some(Protocol::H2c));
        assert_eq!(a.proxy_body_size, Some(8 << 20));
        assert_eq!(a.proxy_read_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(a.load_balance, Some(Balance::Ewma));
        assert_eq!(a.ignored_snippets, vec!["server-snippet".to_string()]);
    }

    #[test]
    fn invalid_values_name_the_key_and_value() {
        let e = ann(&[("proxy-body-size", "big")]).unwrap_err();
        assert_eq!(e.key, "proxy-body-size");
        assert!(e.to_string().contains("\"big\""));
        assert!(ann(&[("use-regex", "yes")]).is_err());
        assert!(
            ann(&[("backend-protocol", "FCGI")])
                .unwrap_err()
                .reason
                .contains("not supported")
        );
        assert!(ann(&[("proxy-read-timeout", "0")]).is_err());
    }

    #[test]
    fn other_prefixes_and_unknown_keys_are_ignored() {
        let mut m = BTreeMap::new();
        m.insert(
            "kubernetes.io/ingress.class".to_string(),
            "nginx".to_string(),
        );
        m.insert(format!("{PREFIX}some-future-thing"), "x".to_string());
        assert_eq!(
            Annotations::parse(Some(&m)).unwrap(),
            Annotations::default()
        );
    }
}
