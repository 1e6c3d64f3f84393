//! Upstream runtime state: endpoint selection, passive health, and in-flight accounting.
//!
//! The selection and health logic is pure (time is passed in); the connection pools
//! live in [`crate::pool`]. An [`EndpointState`] outlives table swaps: when a new table
//! keeps an endpoint, the new upstream reuses the old state, so pools, EWMA and
//! ejections carry over.
//!
//! Besides the [`Balance`] modes, two request-keyed selections live here, both on
//! rendezvous (highest random weight) hashing over [`EndpointState::hash`], a stable hash
//! of the endpoint's address: [`UpstreamState::pick_hash`] (`upstream-hash-by`) and
//! [`UpstreamState::pick_sticky`] (cookie affinity). Rendezvous hashing needs no ring to
//! rebuild, gives every key a full ranking of the endpoints (a retry takes the next one),
//! and when an endpoint joins only the keys it now wins move, about 1/(N+1) of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use crate::model::AffinityMode;
use crate::model::Balance;
use crate::model::Endpoint;
use crate::model::GlobalSettings;
use crate::model::Protocol;
use crate::model::Upstream;
use crate::pool::Pool;

/// EWMA decay time (as linkerd's peak-EWMA default).
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// A new endpoint's assumed latency, so it is neither flooded nor starved.
const EWMA_INITIAL_NS: u64 = 1_000_000;

/// Live state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    pub endpoint: Endpoint,
    pub protocol: Protocol,
    pub pool: Pool,
    /// A stable hash of the address ([`endpoint_hash`]): its identity for consistent hashing,
    /// and the value of a persistent affinity cookie.
    pub hash: u64,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    ejected_until: Option<Instant>,
    ewma_ns: f64,
    ewma_at: Option<Instant>,
}

impl EndpointState {
    pub fn new(endpoint: Endpoint, protocol: Protocol) -> EndpointState {
        EndpointState {
            pool: Pool::new(endpoint.clone(), protocol),
            hash: endpoint_hash(&endpoint),
            endpoint,
            protocol,
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            health: Mutex::new(Health {
                ejected_until: None,
                ewma_ns: EWMA_INITIAL_NS as f64,
                ewma_at: None,
            }),
        }
    }

    /// Requests now in flight to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether passive health has taken the endpoint out at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health
            .lock()
            .map(|h| h.ejected_until.is_some_and(|t| t > now))
            .unwrap_or(false)
    }

    /// Records a failed attempt (connect error, reset, or timeout). Returns true if this ejects it.
    pub fn record_failure(&self, now: Instant, settings: &GlobalSettings) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if settings.upstream_max_fails == 0 || n < settings.upstream_max_fails {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if let Ok(mut h) = self.health.lock() {
            h.ejected_until = Some(now + Duration::from_millis(settings.upstream_fail_timeout_ms));
        }
        true
    }

    /// Records a success and its latency, which feeds EWMA and clears the failure count.
    pub fn record_success(&self, now: Instant, latency: Duration) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if let Ok(mut h) = self.health.lock() {
            h.ejected_until = None;
            let sample = latency.as_nanos() as f64;
            let elapsed = h.ewma_at.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
            h.ewma_at = Some(now);
            // Peak EWMA: jump up to a slow sample at once, decay towards fast ones.
            if sample > h.ewma_ns {
                h.ewma_ns = sample;
            } else {
                let w = (-(elapsed.as_secs_f64()) / EWMA_DECAY.as_secs_f64()).exp();
                h.ewma_ns = h.ewma_ns * w + sample * (1.0 - w);
            }
        }
    }

    fn ewma_cost(&self) -> f64 {
        let ewma = self.health.lock().map(|h| h.ewma_ns).unwrap_or(EWMA_INITIAL_NS as f64);
        ewma * (self.in_flight() as f64 + 1.0)
    }

    /// Marks one request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Counts a request in flight to an endpoint while alive.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The live form of one [`Upstream`].
#[derive(Debug)]
pub struct UpstreamState {
    pub endpoints: Vec<Arc<EndpointState>>,
    pub balance: Balance,
    next: AtomicUsize,
    rng: AtomicU64,
}

impl UpstreamState {
    /// Builds the live upstream, reusing endpoint state from `previous` where the endpoint is kept.
    pub fn new(up: &Upstream, previous: &HashMap<(Endpoint, Protocol), Arc<EndpointState>>) -> UpstreamState {
        let endpoints = up
            .endpoints
            .iter()
            .map(|e| {
                previous
                    .get(&(e.clone(), up.protocol))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointState::new(e.clone(), up.protocol)))
            })
            .collect();
        UpstreamState {
            endpoints,
            balance: up.balance,
            next: AtomicUsize::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Picks an endpoint, skipping `tried` ones and ejected ones. When every untried endpoint
    /// is ejected it picks among those anyway (panic mode), so an upstream never goes dark
    /// just because passive health got pessimistic.
    pub fn pick(&self, now: Instant, tried: &[usize]) -> Option<usize> {
        let pool = self.eligible(now, tried);
        if pool.is_empty() {
            return None;
        }
        match self.balance {
            Balance::RoundRobin => pool.nth(self.next.fetch_add(1, Ordering::Relaxed) % pool.len()),
            Balance::LeastRequest => self.p2c(&pool, |e| e.in_flight() as f64),
            Balance::Ewma => self.p2c(&pool, |e| e.ewma_cost()),
        }
    }

    /// The endpoints a pick may choose from: the untried healthy ones, or every untried one
    /// when all of those are ejected (panic mode).
    fn eligible(&self, now: Instant, tried: &[usize]) -> Eligible {
        let untried = || (0..self.endpoints.len()).filter(|i| !tried.contains(i));
        let healthy = Eligible::from(
            untried().filter(|&i| !self.endpoints[i].is_ejected(now)),
            self.endpoints.len(),
        );
        if healthy.is_empty() {
            Eligible::from(untried(), self.endpoints.len())
        } else {
            healthy
        }
    }

    /// `upstream-hash-by`: the eligible endpoint (as [`Self::pick`]) that ranks first for `key`.
    /// The same key keeps going to the same endpoint; a retry, or an ejected endpoint's keys,
    /// go to the key's next-ranked endpoint, and come back once it is healthy again.
    pub fn pick_hash(&self, key: u64, now: Instant, tried: &[usize]) -> Option<usize> {
        let pool = self.eligible(now, tried);
        rendezvous(key, pool.iter().map(|i| (i, self.endpoints[i].hash)))
    }

    /// `upstream-hash-by-subset`: the key's subset is the `size` endpoints that rank first for
    /// it among all current endpoints (so it stays put while they do); the request goes to
    /// the eligible one of them that `draw` picks (random per request, as ingress-nginx).
    /// With none of the subset eligible (all tried, or ejected while others are not), to the
    /// key's next-ranked eligible endpoint, as [`Self::pick_hash`].
    pub fn pick_hash_subset(&self, key: u64, size: usize, now: Instant, tried: &[usize], draw: u64) -> Option<usize> {
        let mut ranked: Vec<(u64, u64, usize)> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (mix64(key ^ e.hash), e.hash, i))
            .collect();
        // The `size` highest scores (ties as `rendezvous` breaks them) to the front, unsorted:
        // linear, and the pick among them is random anyway.
        let size = size.max(1);
        if size < ranked.len() {
            ranked.select_nth_unstable_by(size - 1, |a, b| b.cmp(a));
            ranked.truncate(size);
        }
        let pool = self.eligible(now, tried);
        let subset: Vec<usize> = ranked
            .iter()
            .map(|&(_, _, i)| i)
            .filter(|&i| pool.contains(i))
            .collect();
        match subset.len() {
            0 => self.pick_hash(key, now, tried),
            n => subset.get(usize::try_from(draw % n as u64).unwrap_or(0)).copied(),
        }
    }

    /// Cookie affinity. `cookie` is the request's affinity cookie, already parsed. Returns the
    /// endpoint and the cookie value that designates it: the request's own when honoured, a
    /// new one when a new session starts, `None` when no value could be found.
    ///
    /// A cookie is only ever compared with the current endpoints' hashes (persistent) or
    /// hashed onto them (balanced), so no value can reach an address outside the upstream.
    /// It is honoured when the endpoint it designates is eligible (untried, and healthy
    /// unless every untried endpoint is ejected). Otherwise a new session starts:
    /// * persistent: the endpoint [`Self::pick`] chooses, and a cookie naming it;
    /// * balanced (as ingress-nginx): a fresh random key from `fresh`, drawn again (up to
    ///   [`NEW_KEY_DRAWS`] times) until the endpoint it ranks first among all current
    ///   endpoints is eligible, so the cookie keeps meaning that endpoint afterwards. If no
    ///   draw lands, [`Self::pick`] serves this request and no cookie is issued.
    pub fn pick_sticky(
        &self,
        mode: AffinityMode,
        cookie: Option<u64>,
        now: Instant,
        tried: &[usize],
        mut fresh: impl FnMut() -> u64,
    ) -> Option<(usize, Option<u64>)> {
        let pool = self.eligible(now, tried);
        if pool.is_empty() {
            return None;
        }
        let all = || self.endpoints.iter().enumerate().map(|(i, e)| (i, e.hash));
        if let Some(c) = cookie {
            let target = match mode {
                AffinityMode::Persistent => self.endpoints.iter().position(|e| e.hash == c),
                AffinityMode::Balanced => rendezvous(c, all()),
            };
            if let Some(t) = target.filter(|&t| pool.contains(t)) {
                return Some((t, Some(c)));
            }
        }
        match mode {
            AffinityMode::Persistent => {
                let i = self.pick(now, tried)?;
                Some((i, Some(self.endpoints[i].hash)))
            }
            AffinityMode::Balanced => {
                for _ in 0..NEW_KEY_DRAWS {
                    let key = fresh();
                    if let Some(t) = rendezvous(key, all()).filter(|&t| pool.contains(t)) {
                        return Some((t, Some(key)));
                    }
                }
                self.pick(now, tried).map(|i| (i, None))
            }
        }
    }

    /// Power of two random choices by `cost`.
    fn p2c(&self, pool: &Eligible, cost: impl Fn(&EndpointState) -> f64) -> Option<usize> {
        if pool.len() == 1 {
            return pool.nth(0);
        }
        let r = self.random();
        let a = (r as usize) % pool.len();
        let mut b = ((r >> 32) as usize) % (pool.len() - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (pool.nth(a)?, pool.nth(b)?);
        Some(if cost(&self.endpoints[b]) < cost(&self.endpoints[a]) {
            b
        } else {
            a
        })
    }

    /// xorshift64*: fast, lock-free, and good enough to spread load.
    fn random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A set of endpoint indexes, without allocating for upstreams of up to 64 endpoints (every
/// request builds one).
#[derive(Debug)]
enum Eligible {
    Small { mask: u64, len: usize },
    Large(Vec<usize>),
}

impl Eligible {
    /// The indexes `it` yields, all below `n`, in ascending order.
    fn from(it: impl Iterator<Item = usize>, n: usize) -> Eligible {
        if n > 64 {
            return Eligible::Large(it.collect());
        }
        let mask = it.fold(0u64, |m, i| m | 1 << i);
        Eligible::Small {
            mask,
            len: mask.count_ones() as usize,
        }
    }

    fn len(&self) -> usize {
        match self {
            Eligible::Small { len, .. } => *len,
            Eligible::Large(v) => v.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn contains(&self, i: usize) -> bool {
        match self {
            Eligible::Small { mask, .. } => i < 64 && mask & (1 << i) != 0,
            Eligible::Large(v) => v.contains(&i),
        }
    }

    /// The `k`-th index, in ascending order.
    fn nth(&self, k: usize) -> Option<usize> {
        match self {
            Eligible::Small { .. } => self.iter().nth(k),
            Eligible::Large(v) => v.get(k).copied(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (mut mask, large) = match self {
            Eligible::Small { mask, .. } => (*mask, &[][..]),
            Eligible::Large(v) => (0, &v[..]),
        };
        let small = std::iter::from_fn(move || {
            (mask != 0).then(|| {
                let i = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                i
            })
        });
        small.chain(large.iter().copied())
    }
}

/// How many random keys a new balanced affinity session draws before giving up on a cookie
/// (ingress-nginx's sticky balancer makes the same kind of bounded attempt).
pub const NEW_KEY_DRAWS: usize = 20;

/// A stable 64-bit hash of bytes: FNV-1a, then the murmur3 finaliser for avalanche. Unlike
/// std's hashers it is fixed across processes, builds and nodes, so every member of a
/// cluster sends a key, or a cookie, to the same endpoint.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The hash of an endpoint's address (`10.0.0.1:8080`, `host.example:80`).
pub fn endpoint_hash(e: &Endpoint) -> u64 {
    hash64(e.to_string().as_bytes())
}

/// murmur3's `fmix64`: every input bit affects every output bit.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Rendezvous hashing: of `endpoints` (index, [`EndpointState::hash`]), the one whose score
/// for `key` is highest. Pure: the same key and endpoint set always give the same answer,
/// and adding an endpoint only moves the keys it now wins.
pub fn rendezvous(key: u64, endpoints: impl IntoIterator<Item = (usize, u64)>) -> Option<usize> {
    endpoints
        .into_iter()
        .max_by_key(|&(_, h)| (mix64(key ^ h), h))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    use super::*;

    fn upstream(n: u16, balance: Balance) -> UpstreamState {
        let up = Upstream {
            endpoints: (0..n)
                .map(|i| Endpoint::Addr(SocketAddr::from(([127, 0, 0, 1], 1000 + i))))
                .collect(),
            balance,
            protocol: Protocol::Http,
        };
        UpstreamState::new(&up, &HashMap::new())
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let u = upstream(3, Balance::RoundRobin);
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| u.pick(now, &[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn tried_endpoints_are_skipped_and_exhaustion_is_none() {
        let u = upstream(2, Balance::RoundRobin);
        let now = Instant::now();
        assert_eq!(u.pick(now, &[0]), Some(1));
        assert_eq!(u.pick(now, &[0, 1]), None);
        assert_eq!(upstream(0, Balance::RoundRobin).pick(now, &[]), None);
    }

    #[test]
    fn a_failed_endpoint_sits_out_its_fail_timeout_then_returns() {
        let u = upstream(2, Balance::RoundRobin);
        let s = GlobalSettings {
            upstream_max_fails: 2,
            upstream_fail_timeout_ms: 1000,
            ..GlobalSettings::default()
        };
        let t0 = Instant::now();
        assert!(!u.endpoints[0].record_failure(t0, &s));
        assert!(u.endpoints[0].record_failure(t0, &s));
        for _ in 0..4 {
            assert_eq!(u.pick(t0 + Duration::from_millis(500), &[]), Some(1));
        }
        let later = t0 + Duration::from_millis(1001);
        let picks: Vec<_> = (0..4).map(|_| u.pick(later, &[]).unwrap()).collect();
        assert!(picks.contains(&0));
    }

    #[test]
    fn when_all_are_ejected_they_are_still_tried() {
        let u = upstream(2, Balance::RoundRobin);
        let s = GlobalSettings::default();
        let t0 = Instant::now();
        u.endpoints[0].record_failure(t0, &s);
        u.endpoints[1].record_failure(t0, &s);
        assert!(u.pick(t0, &[]).is_some());
    }

    #[test]
    fn large_upstreams_pick_as_small_ones_do() {
        // 64 endpoints fit the allocation-free set; 65 and more do not.
        for n in [3u16, 64, 65, 130] {
            let len = usize::from(n);
            let u = upstream(n, Balance::RoundRobin);
            let s = GlobalSettings::default();
            let t0 = Instant::now();
            u.endpoints[1].record_failure(t0, &s);
            let tried = [0, len - 1];
            let picks: Vec<usize> = (0..len - 3).map(|_| u.pick(t0, &tried).unwrap()).collect();
            let want: Vec<usize> = (2..len - 1).collect();
            assert_eq!(picks, want, "{n} endpoints: each untried healthy one in turn");
            // Only the ejected one left untried: panic mode picks it.
            let all_but_1: Vec<usize> = (0..len).filter(|&i| i != 1).collect();
            assert_eq!(u.pick(t0, &all_but_1), Some(1), "{n} endpoints");
            let every: Vec<usize> = (0..len).collect();
            assert_eq!(u.pick(t0, &every), None, "{n} endpoints");
            let lr = upstream(n, Balance::LeastRequest);
            let _busy: Vec<_> = (0..len - 1).map(|i| lr.endpoints[i].start()).collect();
            for _ in 0..20 {
                let p = lr.pick(t0, &[]).unwrap();
                assert!(p < len, "{n} endpoints: picked {p}");
            }
            assert_eq!(lr.pick(t0, &all_but_1), Some(1), "{n} endpoints");
        }
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let u = upstream(2, Balance::LeastRequest);
        let _busy: Vec<_> = (0..5).map(|_| u.endpoints[0].start()).collect();
        let now = Instant::now();
        for _ in 0..20 {
            assert_eq!(u.pick(now, &[]), Some(1));
        }
    }

    #[test]
    fn ewma_prefers_the_fast_endpoint() {
        let u = upstream(2, Balance::Ewma);
        let now = Instant::now();
        u.endpoints[0].record_success(now, Duration::from_millis(200));
        u.endpoints[1].record_success(now, Duration::from_micros(100));
        for _ in 0..20 {
            assert_eq!(u.pick(now, &[]), Some(1));
        }
    }

    #[test]
    fn kept_endpoints_keep_their_state_across_swaps() {
        let u = upstream(2, Balance::RoundRobin);
        let _f = u.endpoints[1].start();
        let prev: HashMap<_, _> = u
            .endpoints
            .iter()
            .map(|e| ((e.endpoint.clone(), e.protocol), e.clone()))
            .collect();
        let next = Upstream {
            endpoints: vec![u.endpoints[1].endpoint.clone()],
            ..Upstream::default()
        };
        let n = UpstreamState::new(&next, &prev);
        assert!(Arc::ptr_eq(&n.endpoints[0], &u.endpoints[1]));
        assert_eq!(n.endpoints[0].in_flight(), 1);
    }

    fn addr_hash(a: u32, port: u16) -> u64 {
        endpoint_hash(&Endpoint::Addr(SocketAddr::from((a.to_be_bytes(), port))))
    }

    /// Which of `eps` each of `keys` keys goes to.
    fn assign(eps: &[u64], keys: u64) -> Vec<u64> {
        (0..keys)
            .map(|k| {
                let i = rendezvous(hash64(&k.to_le_bytes()), eps.iter().copied().enumerate());
                eps[i.unwrap()]
            })
            .collect()
    }

    proptest::proptest! {
        /// Adding an endpoint moves only the keys the new endpoint takes, about 1/(N+1) of them.
        #[test]
        fn adding_an_endpoint_moves_few_keys(
            addrs in proptest::collection::btree_set((proptest::prelude::any::<u32>(), 1u16..4), 2..21),
        ) {
            let eps: Vec<u64> = addrs.iter().map(|&(a, p)| addr_hash(a, p)).collect();
            let (old, added) = eps.split_at(eps.len() - 1);
            const KEYS: u64 = 4000;
            let before = assign(old, KEYS);
            let after = assign(&eps, KEYS);
            let moved: Vec<usize> = (0..KEYS as usize).filter(|&k| before[k] != after[k]).collect();
            for &k in &moved {
                proptest::prop_assert_eq!(after[k], added[0], "a key moved between old endpoints");
            }
            let expected = KEYS as f64 / eps.len() as f64;
            // Binomial: 5 standard deviations of slack (at most ~160 of 4000 keys).
            let slack = 5.0 * (KEYS as f64 * 0.25).sqrt();
            proptest::prop_assert!(
                (moved.len() as f64) <= expected + slack,
                "{} of {KEYS} keys moved with {} endpoints", moved.len(), eps.len()
            );
        }

        /// Removing an endpoint moves only the keys it had.
        #[test]
        fn removing_an_endpoint_moves_only_its_keys(
            addrs in proptest::collection::btree_set((proptest::prelude::any::<u32>(), 1u16..4), 2..21),
            gone in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let eps: Vec<u64> = addrs.iter().map(|&(a, p)| addr_hash(a, p)).collect();
            let g = gone.index(eps.len());
            let mut rest = eps.clone();
            let removed = rest.remove(g);
            let before = assign(&eps, 2000);
            let after = assign(&rest, 2000);
            for k in 0..2000 {
                if before[k] != removed {
                    proptest::prop_assert_eq!(before[k], after[k]);
                }
            }
        }
    }

    #[test]
    fn rendezvous_spreads_keys_evenly() {
        let eps: Vec<u64> = (0..8).map(|i| addr_hash(0x0a00_0001 + i, 8080)).collect();
        let got = assign(&eps, 80_000);
        for e in &eps {
            let n = got.iter().filter(|g| *g == e).count();
            assert!((8_500..11_500).contains(&n), "{n} of 80000 keys on one of 8 endpoints");
        }
        assert_eq!(rendezvous(1, std::iter::empty()), None);
    }

    #[test]
    fn hash64_is_stable() {
        // Fixed values: the mapping must not change between builds or nodes.
        assert_eq!(hash64(b""), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash64(b"10.0.0.1:8080"), hash64(b"10.0.0.1:8080"));
        assert_ne!(hash64(b"10.0.0.1:8080"), hash64(b"10.0.0.2:8080"));
        assert_eq!(format!("{:016x}", hash64(b"a")), "82a2a958a9bece5b");
    }

    #[test]
    fn hash_picks_keep_a_key_and_fall_back_in_rank_order() {
        let u = upstream(4, Balance::RoundRobin);
        let now = Instant::now();
        let key = hash64(b"user-42");
        let first = u.pick_hash(key, now, &[]).unwrap();
        for _ in 0..10 {
            assert_eq!(u.pick_hash(key, now, &[]), Some(first));
        }
        // A retry goes to the key's second choice, deterministically.
        let second = u.pick_hash(key, now, &[first]).unwrap();
        assert_ne!(second, first);
        assert_eq!(u.pick_hash(key, now, &[first]), Some(second));
        // An ejected endpoint's keys go to their next choice until it returns.
        let s = GlobalSettings::default();
        u.endpoints[first].record_failure(now, &s);
        assert_eq!(u.pick_hash(key, now, &[]), Some(second));
        let later = now + Duration::from_millis(s.upstream_fail_timeout_ms + 1);
        assert_eq!(u.pick_hash(key, later, &[]), Some(first));
        assert_eq!(u.pick_hash(key, now, &[0, 1, 2, 3]), None);
    }

    #[test]
    fn hash_subsets_spread_a_key_over_its_own_endpoints() {
        let u = upstream(6, Balance::RoundRobin);
        let now = Instant::now();
        let key = hash64(b"/video/42");
        let seen = |u: &UpstreamState, tried: &[usize]| -> BTreeSet<usize> {
            (0..64)
                .filter_map(|d| u.pick_hash_subset(key, 3, now, tried, d))
                .collect()
        };
        let subset = seen(&u, &[]);
        assert_eq!(
            subset.len(),
            3,
            "every draw lands in the key's three endpoints: {subset:?}"
        );
        // The subset is led by the key's plain hash choice, and size 1 is plain hashing.
        let first = u.pick_hash(key, now, &[]).unwrap();
        assert!(subset.contains(&first));
        assert_eq!(seen_one(&u, key, now), BTreeSet::from([first]));
        // Another key has a subset of its own (not all keys share one).
        let other: BTreeSet<usize> = (0..64)
            .filter_map(|d| u.pick_hash_subset(hash64(b"/video/7"), 3, now, &[], d))
            .collect();
        let keys: BTreeSet<BTreeSet<usize>> = (0..20u32)
            .map(|k| {
                (0..64)
                    .filter_map(|d| u.pick_hash_subset(hash64(&k.to_be_bytes()), 3, now, &[], d))
                    .collect()
            })
            .collect();
        assert!(keys.len() > 1, "{keys:?} {other:?}");
        // A retry stays in the subset while some of it is untried, then takes the next-ranked.
        let tried: Vec<usize> = subset.iter().copied().take(2).collect();
        assert_eq!(seen(&u, &tried).len(), 1);
        let all: Vec<usize> = subset.iter().copied().collect();
        let next = seen(&u, &all);
        assert_eq!(next.len(), 1);
        assert!(next.is_disjoint(&subset));
        assert_eq!(next.into_iter().next(), u.pick_hash(key, now, &all));
        // An ejected member is skipped while the rest of the subset is healthy.
        let s = GlobalSettings::default();
        u.endpoints[first].record_failure(now, &s);
        let healthy = seen(&u, &[]);
        assert_eq!(healthy.len(), 2);
        assert!(!healthy.contains(&first) && healthy.is_subset(&subset));
    }

    #[test]
    fn a_new_endpoint_changes_a_subset_by_one_at_most() {
        let (six, seven) = (upstream(6, Balance::RoundRobin), upstream(7, Balance::RoundRobin));
        let now = Instant::now();
        let subset = |u: &UpstreamState, key: u64| -> BTreeSet<usize> {
            (0..64)
                .filter_map(|d| u.pick_hash_subset(key, 3, now, &[], d))
                .collect()
        };
        let mut moved = 0;
        for k in 0..200u32 {
            let key = hash64(&k.to_be_bytes());
            let (before, after) = (subset(&six, key), subset(&seven, key));
            let lost = before.difference(&after).count();
            assert!(lost <= 1, "key {k}: {before:?} -> {after:?}");
            moved += lost;
        }
        // About 3/7 of the keys take the new endpoint into their subset.
        assert!((40..=130).contains(&moved), "{moved} of 200 subsets changed");
    }

    fn seen_one(u: &UpstreamState, key: u64, now: Instant) -> BTreeSet<usize> {
        (0..16)
            .filter_map(|d| u.pick_hash_subset(key, 1, now, &[], d))
            .collect()
    }

    #[test]
    fn persistent_cookies_name_an_endpoint_and_move_when_it_fails() {
        let u = upstream(3, Balance::RoundRobin);
        let now = Instant::now();
        let never = || -> u64 { panic!("persistent mode draws no keys") };
        // No cookie: the balancer picks, and the cookie names that endpoint.
        let (i, set) = u.pick_sticky(AffinityMode::Persistent, None, now, &[], never).unwrap();
        assert_eq!(set, Some(u.endpoints[i].hash));
        // The cookie brings the client back, whatever round robin would do.
        for _ in 0..5 {
            assert_eq!(
                u.pick_sticky(AffinityMode::Persistent, set, now, &[], never),
                Some((i, set))
            );
        }
        // A cookie naming no current endpoint cannot choose one: a new session starts.
        let (j, reset) = u
            .pick_sticky(AffinityMode::Persistent, Some(0xdead_beef), now, &[], never)
            .unwrap();
        assert_eq!(reset, Some(u.endpoints[j].hash));
        // The sticky endpoint failed in this request: another one, and a new cookie.
        let (k, moved) = u.pick_sticky(AffinityMode::Persistent, set, now, &[i], never).unwrap();
        assert_ne!(k, i);
        assert_eq!(moved, Some(u.endpoints[k].hash));
        // So does an ejected one.
        u.endpoints[i].record_failure(now, &GlobalSettings::default());
        let (k, moved) = u.pick_sticky(AffinityMode::Persistent, set, now, &[], never).unwrap();
        assert_ne!(k, i);
        assert_eq!(moved, Some(u.endpoints[k].hash));
    }

    #[test]
    fn balanced_cookies_are_keys_hashed_onto_the_endpoints() {
        let u = upstream(3, Balance::RoundRobin);
        let now = Instant::now();
        let mut draws = (1u64..).map(|i| hash64(&i.to_le_bytes()));
        let (i, key) = u
            .pick_sticky(AffinityMode::Balanced, None, now, &[], || draws.next().unwrap_or(0))
            .unwrap();
        let key = key.unwrap();
        let all = || u.endpoints.iter().enumerate().map(|(i, e)| (i, e.hash));
        assert_eq!(
            rendezvous(key, all()),
            Some(i),
            "the cookie means the endpoint it served"
        );
        let no_draw = || -> u64 { panic!("a valid cookie draws no key") };
        assert_eq!(
            u.pick_sticky(AffinityMode::Balanced, Some(key), now, &[], no_draw),
            Some((i, Some(key)))
        );
        // Its endpoint failed: a new key, which means the endpoint that serves.
        let (j, new) = u
            .pick_sticky(AffinityMode::Balanced, Some(key), now, &[i], || {
                draws.next().unwrap_or(0)
            })
            .unwrap();
        assert_ne!(j, i);
        assert_eq!(rendezvous(new.unwrap(), all()), Some(j));
        // Keys that never land on an eligible endpoint: the balancer serves, no cookie.
        let (other, third) = ((i + 1) % 3, (i + 2) % 3);
        let (k, none) = u
            .pick_sticky(AffinityMode::Balanced, None, now, &[i, third], || key)
            .unwrap();
        assert_eq!((k, none), (other, None));
        assert_eq!(u.pick_sticky(AffinityMode::Balanced, None, now, &[0, 1, 2], || 0), None);
    }
}
