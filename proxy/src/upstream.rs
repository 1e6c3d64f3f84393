//! Upstream runtime state: endpoint selection, passive health, and in-flight accounting.
//!
//! The selection and health logic is pure (time is passed in); the connection pools
//! live in [`crate::pool`]. An [`EndpointState`] outlives table swaps: when a new table
//! keeps an endpoint, the new upstream reuses the old state, so pools, EWMA and
//! ejections carry over.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

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
            let elapsed = h
                .ewma_at
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
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
        let ewma = self
            .health
            .lock()
            .map(|h| h.ewma_ns)
            .unwrap_or(EWMA_INITIAL_NS as f64);
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
    pub fn new(
        up: &Upstream,
        previous: &HashMap<(Endpoint, Protocol), Arc<EndpointState>>,
    ) -> UpstreamState {
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
        let candidates: Vec<usize> = (0..self.endpoints.len())
            .filter(|i| !tried.contains(i))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let healthy: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| !self.endpoints[i].is_ejected(now))
            .collect();
        let pool = if healthy.is_empty() {
            &candidates
        } else {
            &healthy
        };
        Some(match self.balance {
            Balance::RoundRobin => pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()],
            Balance::LeastRequest => self.p2c(pool, |e| e.in_flight() as f64),
            Balance::Ewma => self.p2c(pool, |e| e.ewma_cost()),
        })
    }

    /// Power of two random choices by `cost`.
    fn p2c(&self, pool: &[usize], cost: impl Fn(&EndpointState) -> f64) -> usize {
        if pool.len() == 1 {
            return pool[0];
        }
        let r = self.random();
        let a = (r as usize) % pool.len();
        let mut b = ((r >> 32) as usize) % (pool.len() - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (pool[a], pool[b]);
        if cost(&self.endpoints[b]) < cost(&self.endpoints[a]) {
            b
        } else {
            a
        }
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

#[cfg(test)]
mod tests {
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
}
