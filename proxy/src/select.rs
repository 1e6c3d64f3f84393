//! Per-request choices on top of a route: the canary or the main backend, then the endpoint
//! by session-affinity cookie, `upstream-hash-by` key, or the upstream's balancer.
//!
//! ```text
//! route ─► canary? header ─► cookie ─► weight ─► backend ─► affinity cookie ─► hash key ─► balancer
//!           (a value that does not decide falls through)      (the first one configured wins)
//! ```
//!
//! * The canary's weight is a deterministic round, not a coin toss: of every
//!   `weight_total` requests that reach the weight rule (the header and cookie did not
//!   decide), exactly `weight` go to the canary, spread evenly ([`weighted`]). Each node
//!   counts for itself, and the count restarts when a new table is installed.
//! * Affinity cookies are issued on the response of the attempt that served the request,
//!   whatever its status, when the session is new or had to move: its endpoint is gone or
//!   ejected, or (with `session-cookie-change-on-failure`) it failed on this request and the
//!   retry went elsewhere. Without that annotation, as in ingress-nginx, a session keeps its
//!   cookie through a failed attempt. See [`UpstreamState::pick_sticky`] for what the cookie
//!   value means in each mode.
//! * A hash-by key that comes out empty (say `$http_x_user` without the header) does not
//!   pile every such request on one endpoint: the balancer picks instead.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use http::HeaderMap;
use http::HeaderValue;
use http::Uri;
use http::header;
use regex::Regex;

use crate::dataplane::Snapshot;
use crate::model::Affinity;
use crate::model::Backend;
use crate::model::Canary;
use crate::model::HashBy;
use crate::model::HashPart;
use crate::model::HeaderMatch;
use crate::model::RoutePolicy;
use crate::model::SameSite;
use crate::router::RouteEntry;
use crate::router::normalize_host;
use crate::router::normalize_path;
use crate::upstream::UpstreamState;
use crate::upstream::hash64;

/// The compiled form of a route's [`Canary`]: its header regex and its weight counter.
#[derive(Debug)]
pub struct CanaryState {
    pattern: Option<Regex>,
    /// Requests that reached the weight rule so far.
    seen: AtomicU64,
}

impl CanaryState {
    pub fn new(c: &Canary) -> Result<CanaryState, regex::Error> {
        let pattern = match c.header.as_ref().map(|h| &h.matches) {
            Some(HeaderMatch::Pattern(p)) => Some(header_pattern(p)?),
            _ => None,
        };
        Ok(CanaryState {
            pattern,
            seen: AtomicU64::new(0),
        })
    }
}

/// A `canary-by-header-pattern` regex, built the same way by the compiler (to check it) and
/// the router: unanchored and case-sensitive, as nginx's `ngx.re.match`, with a size limit.
pub fn header_pattern(p: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(p).size_limit(1 << 20).build()
}

/// Whether the `n`th request (from 0) to reach the weight rule goes to the canary: exactly
/// `weight` of every `total` consecutive requests do, spread evenly (Bresenham's rule).
pub fn weighted(n: u64, weight: u32, total: u32) -> bool {
    let (w, t) = (u64::from(weight), u64::from(total.max(1)));
    let i = n % t;
    (i + 1) * w / t > i * w / t
}

/// Whether a request goes to the canary: by header, then by cookie, then by weight.
pub fn to_canary(c: &Canary, state: &CanaryState, headers: &HeaderMap) -> bool {
    if let Some(h) = &c.header
        && let Some(v) = headers.get(h.name.as_str()).and_then(|v| v.to_str().ok())
    {
        match &h.matches {
            HeaderMatch::Value(want) if v == want.as_str() => return true,
            HeaderMatch::Pattern(_) if state.pattern.as_ref().is_some_and(|re| re.is_match(v)) => {
                return true;
            }
            HeaderMatch::AlwaysNever if v == "always" => return true,
            HeaderMatch::AlwaysNever if v == "never" => return false,
            _ => {}
        }
    }
    if let Some(name) = &c.cookie {
        match cookie(headers, name) {
            Some("always") => return true,
            Some("never") => return false,
            _ => {}
        }
    }
    c.weight > 0 && weighted(state.seen.fetch_add(1, Ordering::Relaxed), c.weight, c.weight_total)
}

/// Where one request goes: the upstream, and what picks its endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Choice<'a> {
    pub upstream: &'a str,
    pub affinity: Option<&'a Affinity>,
    pub hash_by: Option<&'a HashBy>,
    /// The route's canary was chosen.
    pub canary: bool,
}

/// The backend of a request: the route's canary when its rules say so and it has ready
/// endpoints (a canary without any never takes traffic), else the main backend.
pub fn choose<'a>(
    snap: &Snapshot,
    entry: Option<&'a RouteEntry>,
    backend: &'a Backend,
    policy: &'a RoutePolicy,
    headers: &HeaderMap,
) -> Choice<'a> {
    let main = Choice {
        upstream: &backend.upstream,
        affinity: policy.affinity.as_ref(),
        hash_by: policy.hash_by.as_ref(),
        canary: false,
    };
    let Some((c, state)) = entry.and_then(|e| e.route.canary.as_ref().zip(e.canary.as_ref())) else {
        return main;
    };
    // A session stays with the backend whose affinity cookie it carries, before any canary rule
    // (ingress-nginx's `is_affinitized`): the main one first, then the canary.
    let affinitized = |affinity: Option<&Affinity>, upstream: &str| {
        affinity.is_some_and(|a| {
            cookie(headers, &a.cookie)
                .and_then(cookie_value)
                .is_some_and(|(_, tag)| tag == Some(backend_tag(upstream)))
        })
    };
    if affinitized(main.affinity, main.upstream) {
        return main;
    }
    let ready = snap
        .upstreams
        .get(&c.backend.upstream)
        .is_some_and(|u| !u.endpoints.is_empty());
    if ready && (affinitized(c.affinity.as_ref(), &c.backend.upstream) || to_canary(c, state, headers)) {
        Choice {
            upstream: &c.backend.upstream,
            affinity: c.affinity.as_ref(),
            hash_by: c.hash_by.as_ref(),
            canary: true,
        }
    } else {
        main
    }
}

/// How the endpoint of one request is picked, attempt after attempt.
#[derive(Debug)]
pub enum Pick<'a> {
    /// The upstream's balancer.
    Balance,
    /// `upstream-hash-by`: the hash of the request's key, and the subset size with
    /// `upstream-hash-by-subset`.
    Hash { key: u64, subset: Option<usize> },
    /// Cookie affinity.
    Sticky {
        affinity: &'a Affinity,
        /// The request's cookie, if it holds a well-formed value.
        sent: Option<u64>,
        /// The backend the request's cookie names, if it names one.
        sent_tag: Option<u32>,
        /// The backend of this choice, as cookies name it ([`backend_tag`]).
        tag: u32,
        /// The value designating the endpoint of the latest attempt.
        current: Option<u64>,
        /// The session's own endpoint (the cookie's) failed an attempt of this request.
        failed_over: bool,
        /// The client is one known to reject a `SameSite=None` cookie, and the affinity
        /// asks for it to be left out then (`session-cookie-conditional-samesite-none`).
        omit_same_site_none: bool,
    },
}

impl<'a> Pick<'a> {
    /// Reads what the choice needs from the request. `client` is the client's address as
    /// the handler established it (`$remote_addr`); `host` the raw Host or authority.
    pub fn new(choice: &Choice<'a>, headers: &HeaderMap, uri: &Uri, client: IpAddr, host: &str) -> Pick<'a> {
        if let Some(affinity) = choice.affinity {
            let parsed = cookie(headers, &affinity.cookie).and_then(cookie_value);
            let attrs = &affinity.attributes;
            let omit_same_site_none = attrs.conditional_same_site_none
                && attrs.same_site == Some(SameSite::None)
                && headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(rejects_same_site_none);
            return Pick::Sticky {
                affinity,
                sent: parsed.map(|(value, _)| value),
                sent_tag: parsed.and_then(|(_, tag)| tag),
                tag: backend_tag(choice.upstream),
                current: None,
                failed_over: false,
                omit_same_site_none,
            };
        }
        if let Some(h) = choice.hash_by {
            let key = hash_key(h, headers, uri, client, host);
            if !key.is_empty() {
                return Pick::Hash {
                    key: hash64(&key),
                    subset: h.subset.map(|n| n as usize),
                };
            }
        }
        Pick::Balance
    }

    /// The endpoint of the next attempt, skipping `tried`.
    pub fn next(&mut self, upstream: &UpstreamState, now: Instant, tried: &[usize]) -> Option<usize> {
        match self {
            Pick::Balance => upstream.pick(now, tried),
            Pick::Hash { key, subset: None } => upstream.pick_hash(*key, now, tried),
            Pick::Hash {
                key,
                subset: Some(size),
            } => upstream.pick_hash_subset(*key, *size, now, tried, crate::id::random()),
            Pick::Sticky {
                affinity,
                sent,
                current,
                failed_over,
                ..
            } => {
                // A retry after an attempt on the cookie's own endpoint.
                if !tried.is_empty() && current.is_some() && *current == *sent {
                    *failed_over = true;
                }
                let (i, value) = upstream.pick_sticky(affinity.mode, *sent, now, tried, crate::id::random)?;
                *current = value;
                Some(i)
            }
        }
    }

    /// The `Set-Cookie` to send with the response of the latest attempt, if the client's
    /// cookie does not already designate its endpoint and backend. `tls`: the client
    /// connection is TLS.
    pub fn set_cookie(&self, tls: bool, now: SystemTime) -> Option<HeaderValue> {
        match self {
            Pick::Sticky {
                affinity,
                sent,
                sent_tag,
                tag,
                current: Some(v),
                omit_same_site_none,
                failed_over,
            } => {
                // Without `session-cookie-change-on-failure` the session stays where its
                // cookie points, though a retry served this one request elsewhere.
                let value = match sent {
                    Some(s) if *failed_over && !affinity.change_on_failure => *s,
                    _ => *v,
                };
                (*sent != Some(value) || *sent_tag != Some(*tag))
                    .then(|| set_cookie(affinity, value, *tag, tls, *omit_same_site_none, now))
                    .flatten()
            }
            _ => None,
        }
    }
}

/// The `Set-Cookie` value of an affinity cookie. `HttpOnly` always, as ingress-nginx;
/// `Secure` as `session-cookie-secure` says, or on TLS connections (`tls`) when unset.
/// `omit_same_site_none` leaves a `SameSite=None` out (see [`rejects_same_site_none`]).
pub fn set_cookie(
    a: &Affinity,
    value: u64,
    tag: u32,
    tls: bool,
    omit_same_site_none: bool,
    now: SystemTime,
) -> Option<HeaderValue> {
    let attrs = &a.attributes;
    let mut s = format!("{}={value:016x}.{tag:08x}; Path={}", a.cookie, a.path);
    if let Some(domain) = &attrs.domain {
        let _ = write!(s, "; Domain={domain}");
    }
    if let Some(age) = attrs.max_age {
        let _ = write!(s, "; Max-Age={age}");
    }
    // `Expires` for the browsers that predate `Max-Age`: from `session-cookie-expires`,
    // else the same moment as `Max-Age`.
    if let Some(at) = attrs
        .expires
        .or(attrs.max_age)
        .and_then(|secs| now.checked_add(Duration::from_secs(secs)))
    {
        let _ = write!(s, "; Expires={}", http_date(at));
    }
    match attrs.same_site {
        Some(SameSite::None) if omit_same_site_none => {}
        Some(same_site) => {
            let _ = write!(s, "; SameSite={}", same_site.as_str());
        }
        None => {}
    }
    if attrs.secure.unwrap_or(tls) {
        s.push_str("; Secure");
    }
    s.push_str("; HttpOnly");
    HeaderValue::from_str(&s).ok()
}

/// Whether a `User-Agent` is one of the clients that drop a cookie marked `SameSite=None`
/// altogether (Chromium's list of incompatible clients, as ingress-nginx reads it): Chrome
/// 4x to 6x, anything on iOS or iPadOS 12, and Safari on macOS 10.14.
pub fn rejects_same_site_none(user_agent: &str) -> bool {
    let has = |needle: &str| user_agent.contains(needle);
    has("Chrome/4")
        || has("Chrome/5")
        || has("Chrome/6")
        || has("CPU iPhone OS 12")
        || has("iPad; CPU OS 12")
        || (has("Macintosh") && has("Intel Mac OS X 10_14") && has("Safari") && !has("Chrome"))
}

/// An affinity cookie's value: 16 hex digits for the endpoint, then `.` and 8 for the backend
/// that issued it (cookies of an earlier raftgate have no backend). Anything else is no cookie.
fn cookie_value(v: &str) -> Option<(u64, Option<u32>)> {
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (endpoint, backend) = match v.split_once('.') {
        Some((e, b)) if hex(b, 8) => (e, u32::from_str_radix(b, 16).ok()),
        Some(_) => return None,
        None => (v, None),
    };
    if !hex(endpoint, 16) {
        return None;
    }
    Some((u64::from_str_radix(endpoint, 16).ok()?, backend))
}

/// How an affinity cookie names the backend (upstream) that issued it: 32 bits of the stable
/// [`hash64`] of its name, the same on every member, so that a session stays with the main
/// backend or its canary (`affinity-canary-behavior`).
pub fn backend_tag(upstream: &str) -> u32 {
    let h = hash64(upstream.as_bytes());
    u32::try_from(h >> 32).unwrap_or_default()
}

/// The value of the first cookie called `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The bytes an `upstream-hash-by` key stands for in this request, as nginx would expand
/// the variables. Missing values are empty.
pub fn hash_key(h: &HashBy, headers: &HeaderMap, uri: &Uri, client: IpAddr, host: &str) -> Vec<u8> {
    let mut key = Vec::new();
    for part in &h.parts {
        match part {
            HashPart::Text(t) => key.extend_from_slice(t.as_bytes()),
            HashPart::RemoteAddr => key.extend_from_slice(client.to_string().as_bytes()),
            HashPart::RequestUri => {
                let pq = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
                key.extend_from_slice(pq.as_bytes());
            }
            HashPart::Uri => key.extend_from_slice(normalize_path(uri.path()).as_bytes()),
            HashPart::Args => key.extend_from_slice(uri.query().unwrap_or_default().as_bytes()),
            HashPart::Host => key.extend_from_slice(normalize_host(host).as_bytes()),
            HashPart::Header(name) => {
                if let Some(v) = headers.get(name.as_str()) {
                    key.extend_from_slice(v.as_bytes());
                }
            }
            HashPart::Cookie(name) => {
                if let Some(v) = cookie(headers, name) {
                    key.extend_from_slice(v.as_bytes());
                }
            }
            HashPart::Arg(name) => {
                let value = uri.query().unwrap_or_default().split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v)
                });
                if let Some(v) = value {
                    key.extend_from_slice(v.as_bytes());
                }
            }
        }
    }
    key
}

/// An IMF-fixdate (`Tue, 14 Nov 2023 22:13:20 GMT`), for `Expires`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days, for days since 1970-01-01.
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AffinityMode;
    use crate::model::CanaryHeader;
    use crate::model::CookieAttributes;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn canary(matches: Option<HeaderMatch>, cookie: Option<&str>, weight: u32) -> Canary {
        Canary {
            backend: Backend { upstream: "c".into() },
            header: matches.map(|matches| CanaryHeader {
                name: "x-canary".into(),
                matches,
            }),
            cookie: cookie.map(Into::into),
            weight,
            weight_total: 100,
            affinity: None,
            hash_by: None,
            source: "ns/canary".into(),
        }
    }

    fn decide(c: &Canary, h: &[(&str, &str)]) -> bool {
        to_canary(c, &CanaryState::new(c).unwrap(), &headers(h))
    }

    #[test]
    fn header_then_cookie_then_weight() {
        let c = canary(Some(HeaderMatch::AlwaysNever), Some("canary"), 100);
        assert!(decide(&c, &[("x-canary", "always")]));
        assert!(!decide(&c, &[("x-canary", "never")]));
        assert!(
            !decide(&c, &[("x-canary", "never"), ("cookie", "canary=always")]),
            "header first"
        );
        assert!(
            !decide(&c, &[("x-canary", "maybe"), ("cookie", "a=1; canary=never")]),
            "falls through"
        );
        assert!(
            decide(&c, &[("x-canary", "maybe"), ("cookie", "canary=other")]),
            "weight 100"
        );
        let c = canary(Some(HeaderMatch::AlwaysNever), Some("canary"), 0);
        assert!(!decide(&c, &[]));
        assert!(decide(&c, &[("cookie", "canary=always")]));
    }

    #[test]
    fn header_value_and_pattern() {
        let c = canary(Some(HeaderMatch::Value("beta".into())), None, 0);
        assert!(decide(&c, &[("x-canary", "beta")]));
        assert!(
            !decide(&c, &[("x-canary", "always")]),
            "always means nothing with a value"
        );
        assert!(!decide(&c, &[("x-canary", "Beta")]));
        let c = canary(Some(HeaderMatch::Pattern("^(alpha|beta)$".into())), None, 0);
        assert!(decide(&c, &[("x-canary", "alpha")]));
        assert!(!decide(&c, &[("x-canary", "gamma")]));
        let c = canary(Some(HeaderMatch::Pattern("eta".into())), None, 0);
        assert!(decide(&c, &[("x-canary", "beta")]), "unanchored, like ngx.re.match");
    }

    #[test]
    fn weight_sends_an_exact_share_of_each_round() {
        for (w, t) in [
            (0, 100),
            (1, 100),
            (30, 100),
            (50, 100),
            (99, 100),
            (100, 100),
            (3, 7),
            (250, 1000),
        ] {
            let n = (0..u64::from(t) * 3).filter(|&i| weighted(i, w, t)).count();
            assert_eq!(n as u32, w * 3, "{w}/{t}");
        }
        // Spread out, not in a block: half alternates.
        let picks: Vec<bool> = (0..4).map(|i| weighted(i, 50, 100)).collect();
        assert_eq!(picks, vec![false, true, false, true]);
        let c = canary(None, None, 30);
        let s = CanaryState::new(&c).unwrap();
        let n = (0..1000).filter(|_| to_canary(&c, &s, &HeaderMap::new())).count();
        assert_eq!(n, 300);
    }

    #[test]
    fn cookies_parse_from_every_cookie_header() {
        let h = headers(&[("cookie", "a=1; b=\"2\""), ("cookie", "c = 3;d=")]);
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "d"), Some(""));
        assert_eq!(cookie(&h, "e"), None);
        // An earlier raftgate's cookie names the endpoint only; this one's the backend too.
        assert_eq!(cookie_value("00000000000000ff"), Some((255, None)));
        assert_eq!(cookie_value("00000000000000ff.0000abcd"), Some((255, Some(0xabcd))));
        for bad in [
            "ff",
            "0000000000000000ff",
            "zzzzzzzzzzzzzzzz",
            "+00000000000000f",
            "",
            "00000000000000ff.",
            "00000000000000ff.abcd",
            "00000000000000ff.0000abcdx",
            ".0000abcd",
        ] {
            assert_eq!(cookie_value(bad), None, "{bad}");
        }
    }

    #[test]
    fn backend_tags_tell_backends_apart_and_round_trip_through_the_cookie() {
        let (main, canary) = (backend_tag("ns/web:80"), backend_tag("ns/web-canary:80"));
        assert_ne!(main, canary);
        assert_eq!(main, backend_tag("ns/web:80"), "stable across calls and processes");
        assert_eq!(u64::from(main), hash64(b"ns/web:80") >> 32);
        let a = Affinity {
            cookie: "route".into(),
            path: "/".into(),
            attributes: CookieAttributes::default(),
            mode: AffinityMode::Balanced,
            change_on_failure: false,
        };
        let set = set_cookie(&a, 0xfeed, canary, false, false, UNIX_EPOCH).unwrap();
        let value = set
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("route=");
        assert_eq!(cookie_value(value), Some((0xfeed, Some(canary))));
    }

    #[test]
    fn hash_keys_expand_variables() {
        let h = headers(&[("x-user", "u1"), ("cookie", "sid=s9")]);
        let uri: Uri = "/a/../b?x=1&y=2".parse().unwrap();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let key = |parts: Vec<HashPart>| {
            String::from_utf8(hash_key(&HashBy { parts, subset: None }, &h, &uri, ip, "Shop.COM:8080")).unwrap()
        };
        assert_eq!(key(vec![HashPart::RemoteAddr]), "10.1.2.3");
        assert_eq!(
            key(vec![HashPart::RequestUri, HashPart::Host]),
            "/a/../b?x=1&y=2shop.com"
        );
        assert_eq!(
            key(vec![HashPart::Uri, HashPart::Text("|".into()), HashPart::Args]),
            "/b|x=1&y=2"
        );
        assert_eq!(key(vec![HashPart::Header("x-user".into())]), "u1");
        assert_eq!(
            key(vec![HashPart::Cookie("sid".into()), HashPart::Arg("y".into())]),
            "s92"
        );
        assert_eq!(key(vec![HashPart::Header("x-missing".into())]), "");
    }

    #[test]
    fn set_cookie_attributes() {
        let mut a = Affinity {
            cookie: "INGRESSCOOKIE".into(),
            path: "/app".into(),
            attributes: CookieAttributes::default(),
            mode: AffinityMode::Balanced,
            change_on_failure: false,
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            set_cookie(&a, 0xab, 0x1234_abcd, false, false, t).unwrap(),
            "INGRESSCOOKIE=00000000000000ab.1234abcd; Path=/app; HttpOnly"
        );
        a.attributes.max_age = Some(3600);
        a.attributes.same_site = Some(SameSite::Strict);
        assert_eq!(
            set_cookie(&a, 1, 0x1234_abcd, true, false, t).unwrap(),
            "INGRESSCOOKIE=0000000000000001.1234abcd; Path=/app; Max-Age=3600; Expires=Tue, 14 Nov 2023 23:13:20 GMT; SameSite=Strict; Secure; HttpOnly"
        );
        // session-cookie-expires has its own moment; -domain; -secure both ways.
        a.attributes.expires = Some(60);
        a.attributes.domain = Some("example.com".into());
        a.attributes.secure = Some(true);
        assert_eq!(
            set_cookie(&a, 2, 0x1234_abcd, false, false, t).unwrap(),
            "INGRESSCOOKIE=0000000000000002.1234abcd; Path=/app; Domain=example.com; Max-Age=3600; Expires=Tue, 14 Nov 2023 22:14:20 GMT; SameSite=Strict; Secure; HttpOnly"
        );
        a.attributes = CookieAttributes {
            secure: Some(false),
            same_site: Some(SameSite::None),
            ..CookieAttributes::default()
        };
        assert_eq!(
            set_cookie(&a, 3, 0x1234_abcd, true, false, t).unwrap(),
            "INGRESSCOOKIE=0000000000000003.1234abcd; Path=/app; SameSite=None; HttpOnly"
        );
        // Left out for a client that rejects it; other SameSite values stay.
        assert_eq!(
            set_cookie(&a, 3, 0x1234_abcd, true, true, t).unwrap(),
            "INGRESSCOOKIE=0000000000000003.1234abcd; Path=/app; HttpOnly"
        );
        a.attributes.same_site = Some(SameSite::Lax);
        assert_eq!(
            set_cookie(&a, 3, 0x1234_abcd, true, true, t).unwrap(),
            "INGRESSCOOKIE=0000000000000003.1234abcd; Path=/app; SameSite=Lax; HttpOnly"
        );
    }

    #[test]
    fn the_clients_that_reject_same_site_none() {
        let rejects = [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/66.0.3359.181 Safari/537.36",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/51.0.2704.103 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 12_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (iPad; CPU OS 12_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Safari/605.1.15",
        ];
        let accepts = [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            // Chrome on macOS 10.14 is not Safari.
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/90.0.4430.93 Safari/537.36",
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
            "curl/8.5.0",
        ];
        for ua in rejects {
            assert!(rejects_same_site_none(ua), "{ua}");
        }
        for ua in accepts {
            assert!(!rejects_same_site_none(ua), "{ua}");
        }
    }

    #[test]
    fn conditional_same_site_none_follows_the_user_agent() {
        let a = Affinity {
            cookie: "c".into(),
            path: "/".into(),
            attributes: CookieAttributes {
                same_site: Some(SameSite::None),
                conditional_same_site_none: true,
                ..CookieAttributes::default()
            },
            mode: AffinityMode::Balanced,
            change_on_failure: false,
        };
        let choice = sticky(&a);
        let uri: Uri = "/".parse().unwrap();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let old = headers(&[("user-agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 12_4 like Mac OS X)")]);
        let new = headers(&[("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0")]);
        let omits = |h: &HeaderMap| match Pick::new(&choice, h, &uri, ip, "h") {
            Pick::Sticky {
                omit_same_site_none, ..
            } => omit_same_site_none,
            other => panic!("{other:?}"),
        };
        assert!(omits(&old));
        assert!(!omits(&new));
        assert!(!omits(&HeaderMap::new()));
    }

    /// The affinity-only choice of upstream `u`.
    fn sticky(a: &Affinity) -> Choice<'_> {
        Choice {
            upstream: "u",
            affinity: Some(a),
            hash_by: None,
            canary: false,
        }
    }

    fn persistent(change_on_failure: bool) -> Affinity {
        Affinity {
            cookie: "c".into(),
            path: "/".into(),
            attributes: CookieAttributes::default(),
            mode: AffinityMode::Persistent,
            change_on_failure,
        }
    }

    #[test]
    fn a_session_keeps_its_cookie_through_a_failed_attempt_unless_told_to_change() {
        let endpoints: Vec<crate::model::Endpoint> = (0..3)
            .map(|i| crate::model::Endpoint::Addr(std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i))))
            .collect();
        let up = UpstreamState::new(
            &crate::model::Upstream {
                endpoints: endpoints.clone(),
                balance: crate::model::Balance::RoundRobin,
                protocol: crate::model::Protocol::Http,
            },
            &std::collections::HashMap::new(),
        );
        let session = crate::upstream::endpoint_hash(&endpoints[1]);
        let tag = backend_tag("u");
        let cookie = format!("c={session:016x}.{tag:08x}");
        let (uri, ip, now): (Uri, IpAddr, Instant) = ("/".parse().unwrap(), [127, 0, 0, 1].into(), Instant::now());
        for change_on_failure in [false, true] {
            let a = persistent(change_on_failure);
            let mut pick = Pick::new(&sticky(&a), &headers(&[("cookie", &cookie)]), &uri, ip, "h");
            assert_eq!(pick.next(&up, now, &[]), Some(1), "the session's endpoint first");
            assert_eq!(pick.set_cookie(false, UNIX_EPOCH), None, "nothing moved");
            // It fails; the retry goes elsewhere.
            let retry = pick.next(&up, now, &[1]).unwrap();
            assert_ne!(retry, 1);
            let set = pick.set_cookie(false, UNIX_EPOCH);
            if change_on_failure {
                let moved = crate::upstream::endpoint_hash(&endpoints[retry]);
                let set = set.expect("the cookie follows the retry");
                assert!(
                    set.to_str().unwrap().starts_with(&format!("c={moved:016x}.{tag:08x};")),
                    "{set:?}"
                );
            } else {
                assert_eq!(set, None, "the session keeps its endpoint");
            }
        }
        // A session whose endpoint is gone moves either way.
        let a = persistent(false);
        let gone = format!("c={:016x}.{tag:08x}", 0xdead_u64);
        let mut pick = Pick::new(&sticky(&a), &headers(&[("cookie", &gone)]), &uri, ip, "h");
        assert!(pick.next(&up, now, &[]).is_some());
        assert!(pick.set_cookie(false, UNIX_EPOCH).is_some());
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
    }
}
