//! The access phase of a route: rate and connection limits, the source allowlist, and basic
//! authentication, in nginx's order (`limit_req`/`limit_conn`, then `allow`/`deny`, then
//! `auth_basic`).
//!
//! The state behind them outlives table swaps: limiter tables are keyed by the Ingress and
//! its limit settings (one zone per Ingress, as ingress-nginx names them), and parsed
//! htpasswd files by their text, so a swap neither resets a client's budget nor empties the
//! bcrypt cache.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use http::HeaderValue;
use http::StatusCode;
use http::header;

use crate::auth::Htpasswd;
use crate::limit::Admission;
use crate::limit::IpNet;
use crate::limit::LimitConfig;
use crate::limit::Limits;
use crate::model::RateLimit;
use crate::model::RoutePolicy;

/// A route's access checks, compiled.
#[derive(Debug)]
pub struct RouteAccess {
    /// `None`: no allowlist. `Some(nets)`: only these (an empty list allows nobody).
    allow: Option<Vec<IpNet>>,
    limits: Option<(Arc<Limits>, StatusCode)>,
    /// The parsed file (none if it did not parse: nobody gets in) and the challenge.
    auth: Option<(Option<Arc<Htpasswd>>, HeaderValue)>,
}

/// Why a request was turned away.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// Over a rate or connection limit: the configured status (503 by default).
    Limited(StatusCode),
    /// Not in the allowlist: 403.
    Forbidden,
    /// No or wrong credentials: 401 with this `WWW-Authenticate` value.
    Unauthorized(HeaderValue),
}

/// Keeps the stateful parts of access checks across table swaps.
#[derive(Debug, Default)]
pub struct AccessState {
    limits: HashMap<(String, RateLimit), Arc<Limits>>,
    htpasswd: HashMap<String, Option<Arc<Htpasswd>>>,
}

impl AccessState {
    /// Compiles a route's checks, reusing the state of `previous` for unchanged settings.
    /// Returns `None` when the route has none. Unparseable values (which the compiler
    /// rejects first) fail closed: a bad allowlist allows nobody, a bad htpasswd nobody.
    pub fn build(&mut self, source: &str, policy: &RoutePolicy, previous: &AccessState) -> Option<Arc<RouteAccess>> {
        if policy.allow_source.is_empty() && policy.limit.is_none() && policy.basic_auth.is_none() {
            return None;
        }
        // A list that does not parse (the compiler rejects those first) allows nobody.
        let allow = (!policy.allow_source.is_empty()).then(|| nets(&policy.allow_source).unwrap_or_default());
        let limits = policy.limit.as_ref().map(|l| {
            let key = (source.to_string(), l.clone());
            let limits = self
                .limits
                .get(&key)
                .or_else(|| previous.limits.get(&key))
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Limits::new(LimitConfig {
                        rps: l.rps,
                        rpm: l.rpm,
                        connections: l.connections,
                        burst_multiplier: l.burst_multiplier,
                        // Exemptions that do not parse exempt nobody.
                        allow: nets(&l.exempt).unwrap_or_default(),
                        ..LimitConfig::default()
                    }))
                });
            self.limits.insert(key, limits.clone());
            (
                limits,
                StatusCode::from_u16(l.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            )
        });
        let auth = policy.basic_auth.as_ref().map(|a| {
            let file = self
                .htpasswd
                .get(&a.htpasswd)
                .or_else(|| previous.htpasswd.get(&a.htpasswd))
                .cloned()
                .unwrap_or_else(|| Htpasswd::parse(&a.htpasswd).ok().map(Arc::new));
            self.htpasswd.insert(a.htpasswd.clone(), file.clone());
            let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\"", a.realm.replace(['"', '\\'], "")))
                .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"\""));
            (file, challenge)
        });
        Some(Arc::new(RouteAccess { allow, limits, auth }))
    }
}

fn nets(list: &[String]) -> Option<Vec<IpNet>> {
    list.iter().map(|s| IpNet::parse(s).ok()).collect()
}

impl RouteAccess {
    /// The limits, then the allowlist, for a request from `ip`. The returned admission holds
    /// the client's connection slot until dropped (at the end of the response).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<Option<Admission>, Denied> {
        let admission = match &self.limits {
            Some((limits, status)) => Some(limits.admit(ip, now).map_err(|_| Denied::Limited(*status))?),
            None => None,
        };
        if let Some(allow) = &self.allow
            && !allow.iter().any(|n| n.contains(ip))
        {
            return Err(Denied::Forbidden);
        }
        Ok(admission)
    }

    /// Basic authentication, if the route has it. The check runs on the blocking pool: a
    /// bcrypt hash takes milliseconds, which must not stall the worker serving other requests.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let Some((file, challenge)) = &self.auth else {
            return Ok(());
        };
        let denied = || Err(Denied::Unauthorized(challenge.clone()));
        let creds = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::parse_basic_authorization);
        let (Some(file), Some((user, pass))) = (file.clone(), creds) else {
            return denied();
        };
        match tokio::task::spawn_blocking(move || file.verify(&user, &pass)).await {
            Ok(true) => Ok(()),
            _ => denied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BasicAuth;

    fn policy() -> RoutePolicy {
        RoutePolicy::default()
    }

    fn build(p: &RoutePolicy, previous: &AccessState) -> Arc<RouteAccess> {
        AccessState::default().build("ns/i", p, previous).unwrap()
    }

    #[test]
    fn no_checks_means_no_access_object() {
        assert!(
            AccessState::default()
                .build("ns/i", &policy(), &AccessState::default())
                .is_none()
        );
    }

    #[tokio::test]
    async fn allowlist_then_auth() {
        let mut p = policy();
        p.allow_source = vec!["10.0.0.0/8".into()];
        // {SHA} of "pass".
        p.basic_auth = Some(BasicAuth {
            realm: "Staff".into(),
            htpasswd: "alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n".into(),
        });
        let a = build(&p, &AccessState::default());
        let now = Instant::now();
        assert_eq!(
            a.admit("192.168.1.1".parse().unwrap(), now).unwrap_err(),
            Denied::Forbidden
        );
        assert!(a.admit("10.1.2.3".parse().unwrap(), now).is_ok());
        let Err(Denied::Unauthorized(c)) = a.authenticate(&HeaderMap::new()).await else {
            panic!("needs credentials")
        };
        assert_eq!(c, "Basic realm=\"Staff\"");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cGFzcw=="),
        ); // alice:pass
        assert!(a.authenticate(&h).await.is_ok());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6bm9wZQ=="),
        ); // alice:nope
        assert!(matches!(a.authenticate(&h).await, Err(Denied::Unauthorized(_))));
    }

    #[test]
    fn an_allowlist_that_does_not_parse_allows_nobody() {
        let mut p = policy();
        p.allow_source = vec!["10.0.0.0/8".into(), "garbage".into()];
        let a = build(&p, &AccessState::default());
        assert_eq!(
            a.admit("10.0.0.1".parse().unwrap(), Instant::now()).unwrap_err(),
            Denied::Forbidden
        );
    }

    #[test]
    fn limiter_state_survives_a_rebuild_with_the_same_settings() {
        let mut p = policy();
        p.limit = Some(RateLimit {
            rps: Some(1),
            rpm: None,
            burst_multiplier: 0,
            connections: None,
            status: 429,
            exempt: vec![],
        });
        let mut first = AccessState::default();
        let a = first.build("ns/i", &p, &AccessState::default()).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        assert!(a.admit(ip, now).is_ok());
        // A swap rebuilds the route; the client's budget is still spent.
        let b = build(&p, &first);
        assert_eq!(
            b.admit(ip, now).unwrap_err(),
            Denied::Limited(StatusCode::TOO_MANY_REQUESTS)
        );
    }
}
