//! Controller-wide defaults: the config file's `defaults`, with an ingress-nginx ConfigMap's
//! keys laid over them, and the global settings of the routing table they produce.

use std::time::Duration;

use raftgate_proxy::model::Balance;
use raftgate_proxy::model::GlobalSettings;
use raftgate_proxy::model::Hsts;
use raftgate_proxy::model::RoutePolicy;

use crate::config::RouteDefaults;
use crate::config::parse_size;
use crate::config::parse_ssl_protocols;

/// Lays ingress-nginx ConfigMap keys over `d`. Returns a reason for each key whose value
/// could not be used; that key keeps its previous value. Unknown keys are ignored.
pub(super) fn overlay<'a>(d: &mut RouteDefaults, data: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in data {
        let v = value.trim();
        let flag = || match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("expected \"true\" or \"false\"".to_string()),
        };
        let secs = || {
            v.strip_suffix('s')
                .unwrap_or(v)
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| "expected whole seconds above 0".to_string())
        };
        let count = || v.parse::<u32>().map_err(|_| "expected a whole number".to_string());
        let result: Result<(), String> = match key.as_str() {
            "proxy-body-size" => parse_size(v)
                .map(|n| d.proxy_body_size = n)
                .ok_or_else(|| "expected a size such as 1m".into()),
            "proxy-connect-timeout" => secs().map(|t| d.proxy_connect_timeout = t),
            "proxy-read-timeout" => secs().map(|t| d.proxy_read_timeout = t),
            "proxy-send-timeout" => secs().map(|t| d.proxy_send_timeout = t),
            "ssl-redirect" => flag().map(|b| d.ssl_redirect = b),
            "proxy-next-upstream-tries" => count().map(|n| d.proxy_next_upstream_tries = n),
            "load-balance" => match v {
                "round_robin" => Ok(Balance::RoundRobin),
                "least_conn" => Ok(Balance::LeastRequest),
                "ewma" => Ok(Balance::Ewma),
                _ => Err("expected round_robin, least_conn or ewma".into()),
            }
            .map(|b| d.load_balance = b),
            "limit-req-status-code" => v
                .parse::<u16>()
                .ok()
                .filter(|c| (400..=599).contains(c))
                .map(|c| d.limit_req_status_code = c)
                .ok_or_else(|| "expected a 4xx or 5xx status".into()),
            "use-forwarded-headers" => flag().map(|b| d.use_forwarded_headers = b),
            "proxy-real-ip-cidr" => super::annotations::cidrs(v).map(|c| d.proxy_real_ip_cidr = c),
            "use-proxy-protocol" => flag().map(|b| d.use_proxy_protocol = b),
            "hsts" => flag().map(|b| d.hsts = b),
            "hsts-include-subdomains" => flag().map(|b| d.hsts_include_subdomains = b),
            "hsts-preload" => flag().map(|b| d.hsts_preload = b),
            "hsts-max-age" => v
                .parse::<u64>()
                .map(|n| d.hsts_max_age = n)
                .map_err(|_| "expected whole seconds".into()),
            "ssl-protocols" => parse_ssl_protocols(v).map(|_| d.ssl_protocols = v.to_string()),
            "upstream-keepalive-connections" => count().map(|n| d.upstream_keepalive_connections = n),
            "disable-access-log" => flag().map(|b| d.access_log = !b),
            "custom-http-errors" => super::annotations::error_statuses(v).map(|s| d.custom_http_errors = s),
            _ => {
                tracing::debug!(key = %key, "ConfigMap key not used by raftgate; ignored");
                Ok(())
            }
        };
        if let Err(reason) = result {
            problems.push(format!("key {key} = {v:?}: {reason}; keeping the previous value"));
        }
    }
    problems
}

/// The routing table's global settings from the effective defaults.
pub(super) fn settings(d: &RouteDefaults, default_policy: RoutePolicy) -> GlobalSettings {
    GlobalSettings {
        upstream_max_fails: d.upstream_max_fails,
        upstream_fail_timeout_ms: u64::try_from(d.upstream_fail_timeout.as_millis()).unwrap_or(u64::MAX),
        access_log: d.access_log,
        default_policy,
        use_forwarded_headers: d.use_forwarded_headers,
        real_ip_cidrs: d.proxy_real_ip_cidr.clone(),
        use_proxy_protocol: d.use_proxy_protocol,
        hsts: d.hsts.then_some(Hsts {
            max_age: d.hsts_max_age,
            include_subdomains: d.hsts_include_subdomains,
            preload: d.hsts_preload,
        }),
        // The config is validated at load; a ConfigMap value is checked before it is taken.
        tls_versions: parse_ssl_protocols(&d.ssl_protocols).unwrap_or_default(),
        upstream_keepalive_connections: d.upstream_keepalive_connections,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn cm(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn configmap_keys_override_the_config_file() {
        let mut d = RouteDefaults::default();
        let data = cm(&[
            ("proxy-body-size", "16m"),
            ("proxy-read-timeout", "3600"),
            ("use-forwarded-headers", "true"),
            ("proxy-real-ip-cidr", "10.0.0.0/8"),
            ("hsts", "false"),
            ("ssl-protocols", "TLSv1.3"),
            ("upstream-keepalive-connections", "64"),
            ("custom-http-errors", "404,503"),
            ("worker-processes", "auto"),
        ]);
        assert!(overlay(&mut d, data.iter()).is_empty());
        assert_eq!(d.proxy_body_size, 16 << 20);
        assert_eq!(d.proxy_read_timeout, Duration::from_secs(3600));
        let s = settings(&d, RoutePolicy::default());
        assert!(s.use_forwarded_headers);
        assert_eq!(s.real_ip_cidrs, vec!["10.0.0.0/8".to_string()]);
        assert_eq!(s.hsts, None);
        assert!(!s.tls_versions.tls12 && s.tls_versions.tls13);
        assert_eq!(s.upstream_keepalive_connections, 64);
        assert_eq!(d.custom_http_errors, vec![404, 503]);
    }

    #[test]
    fn bad_values_are_reported_and_keep_the_previous_value() {
        let mut d = RouteDefaults::default();
        let data = cm(&[
            ("proxy-body-size", "huge"),
            ("ssl-protocols", "TLSv1"),
            ("hsts", "yes"),
            ("custom-http-errors", "200,404"),
        ]);
        let problems = overlay(&mut d, data.iter());
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("ssl-protocols") && p.contains("insecure"))
        );
        assert_eq!(d, RouteDefaults::default());
    }

    #[test]
    fn hsts_defaults_match_ingress_nginx() {
        let s = settings(&RouteDefaults::default(), RoutePolicy::default());
        assert_eq!(s.hsts.unwrap().value(), "max-age=15724800; includeSubDomains");
    }
}
