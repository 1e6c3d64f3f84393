//! Per-client-IP limits as ingress-nginx configures them: request rates, requests in flight, and CIDR allowlists.
//!
//! A pure core: time comes in as an argument, nothing here does I/O or awaits, so the
//! request path calls it inline and tests drive the clock by hand.
//!
//! | annotation                  | what ingress-nginx writes                              | here                              |
//! |-----------------------------|--------------------------------------------------------|-----------------------------------|
//! | `limit-rps: N`              | `limit_req zone=…_rps burst=N×M nodelay`, rate `N r/s` | [`RateConfig::rps`]               |
//! | `limit-rpm: N`              | `limit_req zone=…_rpm burst=N×M nodelay`, rate `N r/m` | [`RateConfig::rpm`]               |
//! | `limit-burst-multiplier: M` | the `M` above (default 5)                              | [`RateConfig::burst_multiplier`]  |
//! | `limit-connections: N`      | `limit_conn …_conn N`                                  | [`ConnLimiter`]                   |
//! | `limit-whitelist: CIDRs`    | a `geo` map that blanks the key, which skips them all  | [`LimitConfig::allow`]            |
//!
//! [`Limits`] bundles one ingress's limits in nginx's order: the rates first (`limit_req`
//! runs before `limit_conn` in the preaccess phase), then the connection slot. [`IpNet`]
//! and [`parse_cidr_list`] also serve `whitelist-source-range`.
//!
//! # The `limit_req` arithmetic
//!
//! Buckets count milli-requests, in integers, exactly as `ngx_http_limit_req_module`:
//!
//! ```text
//! rate  = N × 1000 / scale     milli-requests drained per second (scale 1 for r/s, 60 for r/m)
//! burst = N × M × 1000         milli-requests
//!
//! a key not in the table:   accept, store excess = 0, last = now
//! a key in the table:       ms     = whole milliseconds from last to now
//!                           excess = max(stored − rate × ms / 1000 + 1000, 0)
//!                           excess > burst → reject, and store nothing
//!                           otherwise      → accept at once (nodelay), store excess,
//!                                            move last forward by ms
//! ```
//!
//! So `1 + burst` requests pass at once from cold, then one per `1 / rate`. The integer
//! divisions are nginx's too: `limit-rpm: 1` drains 16 milli-requests a second, so after
//! a burst the next request passes after 62.5 s rather than 60 s. nginx's clock ticks in
//! whole milliseconds and it sets `last = now`; moving `last` forward by whole
//! milliseconds does the same on an [`Instant`] clock, and the sub-millisecond rest
//! carries over to the next request instead of being lost.
//! With both rates set, a request must pass both, and one that fails either is charged
//! to neither (nginx's two-phase `lookup`/`account`).
//!
//! # Memory
//!
//! A table tracks at most `max_keys` clients. A key whose buckets have drained so far
//! that its next request would find it just like a new key (for every rate,
//! `excess + 1000 ≤ drained`) is dropped, which changes nothing: on each check up to two
//! such keys go from the least-recently-seen end, as in nginx's
//! `ngx_http_limit_req_expire`. When the table is full, the least-recently-seen key is
//! evicted and that client starts afresh, which is what nginx does when a zone runs out
//! of memory. A flood of new addresses can thus make a limited client look new; as
//! with nginx's zone size, only a table big enough for the active clients avoids it.
//!
//! Connection counts are never evicted, since a guard must find its own count again:
//! an entry lives exactly while its client has requests in flight, and a new client
//! that finds the table full is turned away, as `limit_conn` does when its zone is full.
//!
//! # Locking
//!
//! A table is split into up to 16 shards, each a `std::sync::Mutex` over a hash map and
//! an LRU list. A check locks one shard once, for a hash lookup and a few stores, and
//! never across an await, so a blocking mutex is right and cheap. Shards spare the cores
//! from queueing on one lock and one cache line; they are picked with a randomly keyed
//! hash, so clients cannot aim at one. A shard holds at least 1,024 keys, so tables
//! under 2,048 keys have one shard and an exact LRU; bigger ones evict per shard, a
//! close approximation of it.

use std::collections::HashMap;
use std::collections::hash_map;
use std::fmt;
use std::hash::BuildHasher;
use std::hash::RandomState;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

/// ingress-nginx's default `limit-burst-multiplier`.
pub const DEFAULT_BURST_MULTIPLIER: u32 = 5;

/// Default most clients per table: about what one of ingress-nginx's 5 MB zones holds
/// (the nginx docs count 8,192 states a megabyte on 64-bit platforms).
pub const DEFAULT_MAX_KEYS: usize = 5 * 8192;

/// Most shards in one table.
const MAX_SHARDS: usize = 16;
/// Fewest keys a shard holds, so that small tables keep an exact LRU.
const MIN_SHARD_KEYS: usize = 1024;
/// One request, in the buckets' unit.
const ONE: u64 = 1000;
/// Drained keys looked at per check, as nginx's `expire(ctx, 1)`.
const SWEEP: usize = 2;

// ---------------------------------------------------------------------------------------
// Verdicts

/// Which limit turned a request away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `limit-rps`. ingress-nginx answers `limit-req-status-code` (default 503).
    Rps,
    /// `limit-rpm`. ingress-nginx answers `limit-req-status-code` (default 503).
    Rpm,
    /// `limit-connections`: the client already has that many requests in flight.
    /// ingress-nginx answers `limit-conn-status-code` (default 503).
    Connections,
    /// The connection table is full of clients with requests in flight, so a new client
    /// cannot be counted. nginx's `limit_conn` rejects too (`limit-conn-status-code`).
    ConnectionTable,
}

/// The verdict of [`RateLimiter::check`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Reject(Limit),
}

impl Decision {
    /// Whether the request may go on.
    pub fn is_allow(self) -> bool {
        self == Decision::Allow
    }
}

// ---------------------------------------------------------------------------------------
// Request rates

/// Request-rate limits for one ingress, keyed by client IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateConfig {
    /// `limit-rps`: requests a second per client. `None` or `Some(0)` is off. Default off.
    pub rps: Option<u32>,
    /// `limit-rpm`: requests a minute per client. `None` or `Some(0)` is off. Default off.
    pub rpm: Option<u32>,
    /// `limit-burst-multiplier`: each rate's burst is the rate times this; 0 allows no
    /// burst. Default [`DEFAULT_BURST_MULTIPLIER`] (5).
    pub burst_multiplier: u32,
    /// Most clients tracked at once, at least 1. Default [`DEFAULT_MAX_KEYS`].
    pub max_keys: usize,
}

impl Default for RateConfig {
    fn default() -> RateConfig {
        RateConfig {
            rps: None,
            rpm: None,
            burst_multiplier: DEFAULT_BURST_MULTIPLIER,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// One `limit_req` zone's parameters, in milli-requests.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    limit: Limit,
    /// Milli-requests drained per second.
    rate: u64,
    /// Most milli-requests held.
    burst: u64,
}

impl Bucket {
    fn new(limit: Limit, n: u32, scale: u64, multiplier: u32) -> Bucket {
        let n = u64::from(n);
        Bucket {
            limit,
            rate: n.saturating_mul(ONE) / scale,
            burst: n.saturating_mul(u64::from(multiplier)).saturating_mul(ONE),
        }
    }

    /// Milli-requests drained in `ms` milliseconds.
    fn drained(&self, ms: u64) -> u64 {
        self.rate.saturating_mul(ms) / 1000
    }
}

/// What a table remembers of one client: one excess per configured bucket.
#[derive(Clone, Copy, Debug)]
struct Client {
    last: Instant,
    excess: [u64; 2],
}

impl Client {
    fn new(now: Instant) -> Client {
        Client {
            last: now,
            excess: [0; 2],
        }
    }

    /// nginx's lookup and account for a key already in the table.
    fn admit(&mut self, buckets: &[Bucket], now: Instant) -> Decision {
        let ms = whole_ms(self.last, now);
        let mut next = self.excess;
        for (bucket, excess) in buckets.iter().zip(next.iter_mut()) {
            *excess = excess.saturating_add(ONE).saturating_sub(bucket.drained(ms));
            if *excess > bucket.burst {
                return Decision::Reject(bucket.limit);
            }
        }
        self.excess = next;
        if ms > 0 {
            self.last = self.last.checked_add(Duration::from_millis(ms)).unwrap_or(now);
        }
        Decision::Allow
    }

    /// Whether the next request would find this client just as a new key (excess 0 in
    /// every bucket), so dropping it changes nothing.
    fn is_cold(&self, buckets: &[Bucket], now: Instant) -> bool {
        let ms = whole_ms(self.last, now);
        buckets
            .iter()
            .zip(self.excess)
            .all(|(bucket, excess)| excess.saturating_add(ONE) <= bucket.drained(ms))
    }
}

/// Whole milliseconds from `last` to `now`; 0 if `now` is earlier (a caller read the
/// clock before another, which then locked first).
fn whole_ms(last: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(last).as_millis()).unwrap_or(u64::MAX)
}

/// `limit-rps` and `limit-rpm` for one ingress: nginx's `limit_req … nodelay` per client IP.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateConfig,
    /// The rps bucket, then the rpm one, as ingress-nginx orders its `limit_req` lines.
    buckets: Vec<Bucket>,
    table: Sharded<Lru<Client>>,
}

impl RateLimiter {
    pub fn new(config: RateConfig) -> RateLimiter {
        let mut buckets = Vec::with_capacity(2);
        if let Some(n) = config.rps.filter(|&n| n > 0) {
            buckets.push(Bucket::new(Limit::Rps, n, 1, config.burst_multiplier));
        }
        if let Some(n) = config.rpm.filter(|&n| n > 0) {
            buckets.push(Bucket::new(Limit::Rpm, n, 60, config.burst_multiplier));
        }
        RateLimiter {
            config,
            buckets,
            table: Sharded::new(config.max_keys, Lru::new),
        }
    }

    pub fn config(&self) -> &RateConfig {
        &self.config
    }

    /// Whether a request from `ip` arriving at `now` may go on. An allowed request is
    /// counted; a rejected one is not. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Decision {
        if self.buckets.is_empty() {
            return Decision::Allow;
        }
        let ip = ip.to_canonical();
        let mut lru = lock_lru(self.table.shard(&ip));
        for _ in 0..SWEEP {
            if !lru.oldest().is_some_and(|c| c.is_cold(&self.buckets, now)) {
                break;
            }
            lru.pop_oldest();
        }
        if let Some(client) = lru.get_mut(&ip) {
            return client.admit(&self.buckets, now);
        }
        lru.insert(ip, Client::new(now));
        Decision::Allow
    }

    /// Clients tracked now, across all shards.
    pub fn tracked(&self) -> usize {
        self.table.iter().map(|m| lock_lru(m).len()).sum()
    }
}

/// Locks a shard. A panic inside the critical section (only a bug could cause one) may
/// have left the list half-linked, so the shard forgets its clients, as a restart would.
fn lock_lru<V>(m: &Mutex<Lru<V>>) -> MutexGuard<'_, Lru<V>> {
    m.lock().unwrap_or_else(|poisoned| {
        let mut lru = poisoned.into_inner();
        lru.clear();
        m.clear_poison();
        lru
    })
}

// ---------------------------------------------------------------------------------------
// Requests in flight

/// `limit-connections` for one ingress: nginx's `limit_conn` per client IP, which counts
/// requests in flight (each HTTP/2 stream is one).
#[derive(Debug)]
pub struct ConnLimiter {
    limit: u32,
    table: Sharded<Counts>,
}

#[derive(Debug)]
struct Counts {
    live: HashMap<IpAddr, u32>,
    cap: usize,
}

impl ConnLimiter {
    /// Allows `limit` requests in flight per client (0 turns every request away; an
    /// ingress without the annotation has no limiter), and tracks at most `max_keys`
    /// clients with requests in flight (at least 1).
    pub fn new(limit: u32, max_keys: usize) -> ConnLimiter {
        ConnLimiter {
            limit,
            table: Sharded::new(max_keys, |cap| Counts {
                live: HashMap::new(),
                cap,
            }),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Takes one of `ip`'s slots until the guard drops, or says which limit is in the way.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Limit> {
        let ip = ip.to_canonical();
        let shard = self.table.index(&ip);
        let mut counts = lock_counts(self.table.at(shard));
        let full = counts.live.len() >= counts.cap;
        match counts.live.entry(ip) {
            hash_map::Entry::Occupied(mut e) => {
                if *e.get() >= self.limit {
                    return Err(Limit::Connections);
                }
                *e.get_mut() += 1;
            }
            hash_map::Entry::Vacant(e) => {
                if self.limit == 0 {
                    return Err(Limit::Connections);
                }
                if full {
                    return Err(Limit::ConnectionTable);
                }
                e.insert(1);
            }
        }
        drop(counts);
        Ok(ConnGuard {
            limiter: Arc::clone(self),
            ip,
            shard,
        })
    }

    /// Slots `ip` holds now.
    pub fn active(&self, ip: IpAddr) -> u32 {
        let ip = ip.to_canonical();
        let counts = lock_counts(self.table.shard(&ip));
        counts.live.get(&ip).copied().unwrap_or(0)
    }

    /// Clients with requests in flight now, across all shards.
    pub fn tracked(&self) -> usize {
        self.table.iter().map(|m| lock_counts(m).live.len()).sum()
    }
}

/// Locks a shard of counts. Each change to the map is a single step, so a poisoned one is
/// still consistent and is used as it is.
fn lock_counts(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Holds one of a client's [`ConnLimiter`] slots; dropping it gives the slot back.
#[must_use = "the slot is given back as soon as the guard drops"]
#[derive(Debug)]
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
    shard: usize,
}

impl ConnGuard {
    /// The client this slot belongs to (IPv4-mapped addresses as IPv4).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut counts = lock_counts(self.limiter.table.at(self.shard));
        if let hash_map::Entry::Occupied(mut e) = counts.live.entry(self.ip) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// All of one ingress's limits

/// One ingress's per-client limits, as its rate-limit annotations set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitConfig {
    /// `limit-rps`; `None` or `Some(0)` is off. Default off.
    pub rps: Option<u32>,
    /// `limit-rpm`; `None` or `Some(0)` is off. Default off.
    pub rpm: Option<u32>,
    /// `limit-connections`: requests in flight per client; `None` or `Some(0)` is off.
    /// Default off.
    pub connections: Option<u32>,
    /// `limit-burst-multiplier`. Default [`DEFAULT_BURST_MULTIPLIER`] (5).
    pub burst_multiplier: u32,
    /// Most clients each table tracks, at least 1. Default [`DEFAULT_MAX_KEYS`].
    pub max_keys: usize,
    /// `limit-whitelist`: clients in these networks skip every limit. Default empty.
    pub allow: Vec<IpNet>,
}

impl Default for LimitConfig {
    fn default() -> LimitConfig {
        LimitConfig {
            rps: None,
            rpm: None,
            connections: None,
            burst_multiplier: DEFAULT_BURST_MULTIPLIER,
            max_keys: DEFAULT_MAX_KEYS,
            allow: Vec::new(),
        }
    }
}

/// One ingress's limiters and its allowlist. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Limits {
    allow: Vec<IpNet>,
    rate: Option<RateLimiter>,
    conn: Option<Arc<ConnLimiter>>,
}

impl Limits {
    pub fn new(config: LimitConfig) -> Limits {
        let rate = RateConfig {
            rps: config.rps,
            rpm: config.rpm,
            burst_multiplier: config.burst_multiplier,
            max_keys: config.max_keys,
        };
        let has_rate = [rate.rps, rate.rpm].iter().any(|n| n.is_some_and(|n| n > 0));
        Limits {
            rate: has_rate.then(|| RateLimiter::new(rate)),
            conn: config
                .connections
                .filter(|&n| n > 0)
                .map(|n| Arc::new(ConnLimiter::new(n, config.max_keys))),
            allow: config.allow,
        }
    }

    /// Whether `ip` is on the allowlist and skips every limit.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(ip))
    }

    /// Checks a request from `ip` at `now`: the rates first, then a connection slot, as
    /// nginx runs `limit_req` before `limit_conn`. So a request turned away for
    /// connections has still been counted against the rates, as in nginx.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<Admission, Limit> {
        if self.is_exempt(ip) {
            return Ok(Admission { _slot: None });
        }
        if let Some(Decision::Reject(limit)) = self.rate.as_ref().map(|r| r.check(ip, now)) {
            return Err(limit);
        }
        let slot = self.conn.as_ref().map(|c| c.acquire(ip)).transpose()?;
        Ok(Admission { _slot: slot })
    }
}

/// A request [`Limits`] let through; holds its connection slot, if it took one, until dropped.
#[must_use = "the connection slot is given back as soon as this drops"]
#[derive(Debug)]
pub struct Admission {
    _slot: Option<ConnGuard>,
}

// ---------------------------------------------------------------------------------------
// Sharded tables

/// A table split into shards by a randomly keyed hash of the client address.
#[derive(Debug)]
struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    hasher: RandomState,
}

impl<T> Sharded<T> {
    /// Splits `max_keys` (at least 1) between the shards exactly; `make` gets each
    /// shard's capacity.
    fn new(max_keys: usize, make: impl Fn(usize) -> T) -> Sharded<T> {
        let max_keys = max_keys.max(1);
        let n = shard_count(max_keys);
        let shards = (0..n)
            .map(|i| Mutex::new(make(max_keys / n + usize::from(i < max_keys % n))))
            .collect();
        Sharded {
            shards,
            hasher: RandomState::new(),
        }
    }

    fn index(&self, ip: &IpAddr) -> usize {
        // The count is a power of two, so the mask keeps the hash's low bits.
        (self.hasher.hash_one(ip) as usize) & (self.shards.len() - 1)
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<T> {
        self.at(self.index(ip))
    }

    fn at(&self, index: usize) -> &Mutex<T> {
        &self.shards[index]
    }

    fn iter(&self) -> impl Iterator<Item = &Mutex<T>> {
        self.shards.iter()
    }
}

/// A power of two from 1 to [`MAX_SHARDS`], leaving each shard at least
/// [`MIN_SHARD_KEYS`] keys when there are enough.
fn shard_count(max_keys: usize) -> usize {
    let n = (max_keys / MIN_SHARD_KEYS).clamp(1, MAX_SHARDS);
    1 << n.ilog2()
}

const NIL: usize = usize::MAX;

/// A map with a capacity that evicts its least-recently-seen key, like nginx's zone
/// queue. The recency list is linked by indices into `nodes`, which stays dense: a
/// removal moves the last node into the hole.
#[derive(Debug)]
struct Lru<V> {
    index: HashMap<IpAddr, usize>,
    nodes: Vec<Node<V>>,
    /// Most recently seen, or [`NIL`].
    head: usize,
    /// Least recently seen, or [`NIL`].
    tail: usize,
    cap: usize,
}

#[derive(Debug)]
struct Node<V> {
    key: IpAddr,
    value: V,
    prev: usize,
    next: usize,
}

impl<V> Lru<V> {
    fn new(cap: usize) -> Lru<V> {
        Lru {
            index: HashMap::new(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.max(1),
        }
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn clear(&mut self) {
        self.index.clear();
        self.nodes.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    /// The value for `key`, which now counts as the most recently seen.
    fn get_mut(&mut self, key: &IpAddr) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.unlink(i);
        self.push_front(i);
        Some(&mut self.nodes[i].value)
    }

    /// Stores `value` as the most recently seen, evicting the least recently seen key
    /// first if the map is full.
    fn insert(&mut self, key: IpAddr, value: V) {
        if let Some(&i) = self.index.get(&key) {
            self.nodes[i].value = value;
            self.unlink(i);
            self.push_front(i);
            return;
        }
        if self.nodes.len() >= self.cap {
            self.pop_oldest();
        }
        let i = self.nodes.len();
        self.nodes.push(Node {
            key,
            value,
            prev: NIL,
            next: NIL,
        });
        self.index.insert(key, i);
        self.push_front(i);
    }

    fn oldest(&self) -> Option<&V> {
        self.nodes.get(self.tail).map(|n| &n.value)
    }

    fn pop_oldest(&mut self) -> Option<(IpAddr, V)> {
        (self.tail != NIL).then(|| self.remove_at(self.tail))
    }

    fn remove_at(&mut self, i: usize) -> (IpAddr, V) {
        self.unlink(i);
        let node = self.nodes.swap_remove(i);
        self.index.remove(&node.key);
        if let Some(moved) = self.nodes.get(i) {
            // The former last node now sits at `i`: repoint its neighbours and its key.
            let (prev, next, key) = (moved.prev, moved.next, moved.key);
            match prev {
                NIL => self.head = i,
                p => self.nodes[p].next = i,
            }
            match next {
                NIL => self.tail = i,
                n => self.nodes[n].prev = i,
            }
            self.index.insert(key, i);
        }
        (node.key, node.value)
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
        self.nodes[i].prev = NIL;
        self.nodes[i].next = NIL;
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.nodes[h].prev = i,
        }
        self.head = i;
    }

    /// Keys from most to least recently seen.
    #[cfg(test)]
    fn keys(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        let mut i = self.head;
        while i != NIL && out.len() <= self.nodes.len() {
            out.push(self.nodes[i].key);
            i = self.nodes[i].next;
        }
        out
    }

    /// Panics unless the list, the index and the nodes agree.
    #[cfg(test)]
    fn assert_consistent(&self) {
        assert!(self.nodes.len() <= self.cap);
        assert_eq!(self.index.len(), self.nodes.len());
        let keys = self.keys();
        assert_eq!(keys.len(), self.nodes.len());
        for (key, &i) in &self.index {
            assert_eq!(self.nodes[i].key, *key);
        }
        let mut back = Vec::new();
        let mut i = self.tail;
        while i != NIL && back.len() <= self.nodes.len() {
            back.push(self.nodes[i].key);
            i = self.nodes[i].prev;
        }
        back.reverse();
        assert_eq!(back, keys);
    }
}

// ---------------------------------------------------------------------------------------
// CIDRs

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32`; a single address is a `/32` or
/// `/128`. Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`, as Go's `ParseCIDR`
/// reads it), and IPv4-mapped IPv6 networks of `/96` or longer are stored as IPv4.
/// Serialises as its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR did not parse. Displays as `"10.0.0.0/33": prefix length out of range`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {reason}")]
pub struct CidrError {
    /// The text that did not parse.
    pub input: String,
    pub reason: CidrErrorReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrErrorReason {
    #[error("empty entry")]
    Empty,
    #[error("not an IP address")]
    Address,
    #[error("invalid prefix length")]
    Prefix,
    #[error("prefix length out of range")]
    PrefixRange,
}

impl IpNet {
    /// The network of `addr` with `prefix` bits, or `None` if the prefix is longer than
    /// the address (32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a) & mask_v4(prefix);
                (prefix <= 32).then(|| IpNet {
                    addr: IpAddr::V4(Ipv4Addr::from(bits)),
                    prefix,
                })
            }
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if (96..=128).contains(&prefix) => IpNet::new(IpAddr::V4(v4), prefix - 96),
                _ => {
                    let bits = u128::from(a) & mask_v6(prefix);
                    (prefix <= 128).then(|| IpNet {
                        addr: IpAddr::V6(Ipv6Addr::from(bits)),
                        prefix,
                    })
                }
            },
        }
    }

    /// Parses `10.0.0.0/8`, `2001:db8::/32`, or a single address. No surrounding
    /// whitespace; the prefix is a plain decimal (`/8`, not `/08` or `/+8`).
    pub fn parse(s: &str) -> Result<IpNet, CidrError> {
        let err = |reason| CidrError {
            input: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(err(CidrErrorReason::Empty));
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err(CidrErrorReason::Address))?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => max,
            Some(p) => parse_prefix(p, max).map_err(err)?,
        };
        IpNet::new(addr, prefix).ok_or_else(|| err(CidrErrorReason::PrefixRange))
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (a client on a
    /// dual-stack socket) is matched as IPv4, as nginx's access and geo modules do.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => (u32::from(net) ^ u32::from(ip)) & mask_v4(self.prefix) == 0,
            (IpAddr::V6(net), IpAddr::V6(ip)) => (u128::from(net) ^ u128::from(ip)) & mask_v6(self.prefix) == 0,
            _ => false,
        }
    }
}

/// Parses a decimal prefix length of at most `max`.
fn parse_prefix(p: &str, max: u8) -> Result<u8, CidrErrorReason> {
    let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits || (p.len() > 1 && p.starts_with('0')) {
        return Err(CidrErrorReason::Prefix);
    }
    match p.parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(CidrErrorReason::PrefixRange),
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

impl From<IpAddr> for IpNet {
    /// The single-address network (`/32` or `/128`).
    fn from(ip: IpAddr) -> IpNet {
        let ip = ip.to_canonical();
        IpNet {
            addr: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<IpNet, CidrError> {
        IpNet::parse(s)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(deserializer)?;
        IpNet::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a comma-separated list as ingress-nginx reads `limit-whitelist` and
/// `whitelist-source-range`: entries are trimmed, an empty value is an empty list, and an
/// empty entry (`10.0.0.0/8,`) is an error.
pub fn parse_cidr_list(s: &str) -> Result<Vec<IpNet>, CidrError> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',').map(|entry| IpNet::parse(entry.trim())).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    fn rates(rps: Option<u32>, rpm: Option<u32>, burst_multiplier: u32) -> RateLimiter {
        RateLimiter::new(RateConfig {
            rps,
            rpm,
            burst_multiplier,
            max_keys: 100,
        })
    }

    /// Sends `n` requests at `now` and returns how many passed.
    fn burst(l: &RateLimiter, ip: IpAddr, now: Instant, n: usize) -> usize {
        (0..n).filter(|_| l.check(ip, now).is_allow()).count()
    }

    // --- limit_req arithmetic ---

    #[test]
    fn rps_1_allows_one_plus_burst_from_cold_then_one_a_second() {
        let l = rates(Some(1), None, DEFAULT_BURST_MULTIPLIER);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        for i in 0..6 {
            assert_eq!(l.check(a, t0), Decision::Allow, "request {i}");
        }
        assert_eq!(l.check(a, t0), Decision::Reject(Limit::Rps));
        // 999 ms drain 999 milli-requests: 5000 - 999 + 1000 > 5000.
        assert_eq!(l.check(a, t0 + 999 * MS), Decision::Reject(Limit::Rps));
        for s in 1..=5 {
            let t = t0 + s * SEC;
            assert_eq!(l.check(a, t), Decision::Allow, "second {s}");
            assert_eq!(l.check(a, t), Decision::Reject(Limit::Rps), "second {s}");
        }
        // Another client is not affected.
        assert_eq!(burst(&l, ip("192.0.2.2"), t0, 10), 6);
    }

    #[test]
    fn the_bucket_drains_by_the_millisecond() {
        // rps 2, burst 2: excess 0, 1000, 2000 from cold, then 3000 is over.
        let l = rates(Some(2), None, 1);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert_eq!(burst(&l, a, t0, 5), 3);
        // 499 ms drain 998: 2000 - 998 + 1000 = 2002 > 2000.
        assert!(!l.check(a, t0 + 499 * MS).is_allow());
        // 500 ms drain 1000: 2000 exactly, which passes.
        assert!(l.check(a, t0 + 500 * MS).is_allow());
        assert!(!l.check(a, t0 + 500 * MS).is_allow());
        // After a long pause the bucket is empty again: 1 + burst pass.
        assert_eq!(burst(&l, a, t0 + 60 * SEC, 5), 3);
    }

    #[test]
    fn no_burst_means_one_request_per_interval() {
        let l = rates(Some(1), None, 0);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert!(l.check(a, t0).is_allow());
        assert!(!l.check(a, t0).is_allow());
        assert!(!l.check(a, t0 + 999 * MS).is_allow());
        assert!(l.check(a, t0 + SEC).is_allow());
        assert!(!l.check(a, t0 + SEC).is_allow());
    }

    #[test]
    fn sub_millisecond_remainders_are_kept() {
        // Requests every 1.5 ms at 1000 r/s with no burst: nginx's millisecond clock
        // sees gaps of 1 and 2 ms, which drain 1000 and 2000; none is lost.
        let l = rates(Some(1000), None, 0);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        let passed = (0..1000)
            .filter(|&i| l.check(a, t0 + Duration::from_micros(1500 * i)).is_allow())
            .count();
        assert_eq!(passed, 1000);
    }

    #[test]
    fn rpm_uses_nginx_integer_rate() {
        // rpm 1, burst 5: 6 from cold; the rate is 1000 / 60 = 16 milli-requests a
        // second, so one more passes after 62.5 s, not after 60 s.
        let l = rates(None, Some(1), DEFAULT_BURST_MULTIPLIER);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert_eq!(burst(&l, a, t0, 10), 6);
        assert_eq!(l.check(a, t0 + 60 * SEC), Decision::Reject(Limit::Rpm));
        assert_eq!(l.check(a, t0 + 62_499 * MS), Decision::Reject(Limit::Rpm));
        assert_eq!(l.check(a, t0 + 62_500 * MS), Decision::Allow);
        assert_eq!(l.check(a, t0 + 62_500 * MS), Decision::Reject(Limit::Rpm));
    }

    #[test]
    fn rpm_60_is_one_a_second() {
        let l = rates(None, Some(60), 1);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert_eq!(burst(&l, a, t0, 100), 61);
        for s in 1..=3 {
            assert_eq!(burst(&l, a, t0 + s * SEC, 5), 1);
        }
    }

    #[test]
    fn both_rates_must_pass_and_a_rejection_charges_neither() {
        // rps 10 (burst 10) and rpm 10 (burst 10, 166 milli-requests a second).
        let l = rates(Some(10), Some(10), 1);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert_eq!(burst(&l, a, t0, 11), 11);
        // Both are full; rps is checked first, as ingress-nginx orders them.
        assert_eq!(l.check(a, t0), Decision::Reject(Limit::Rps));
        // A second later rps has room but rpm has not. Were the rejected requests
        // charged to rps, rps would reject again after ten of them.
        for _ in 0..20 {
            assert_eq!(l.check(a, t0 + SEC), Decision::Reject(Limit::Rpm));
        }
        // 6.1 s drain 166 × 6100 / 1000 = 1012 from rpm: one passes.
        assert_eq!(l.check(a, t0 + 6100 * MS), Decision::Allow);
        assert_eq!(l.check(a, t0 + 6100 * MS), Decision::Reject(Limit::Rpm));
    }

    #[test]
    fn no_rate_allows_everything_and_tracks_nothing() {
        let l = rates(None, Some(0), 5);
        let t0 = Instant::now();
        assert_eq!(burst(&l, ip("192.0.2.1"), t0, 1000), 1000);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn clocks_going_back_and_far_forward_are_harmless() {
        let l = rates(Some(1), None, 0);
        let a = ip("192.0.2.1");
        let t0 = Instant::now() + SEC;
        assert!(l.check(a, t0).is_allow());
        // An earlier reading (a task that read the clock, then lost the race to lock).
        assert!(!l.check(a, t0 - 500 * MS).is_allow());
        let far = t0 + Duration::from_secs(10 * 365 * 86_400);
        assert!(l.check(a, far).is_allow());
        assert!(!l.check(a, far).is_allow());
    }

    #[test]
    fn huge_settings_do_not_overflow() {
        let l = RateLimiter::new(RateConfig {
            rps: Some(u32::MAX),
            rpm: Some(u32::MAX),
            burst_multiplier: u32::MAX,
            max_keys: 1,
        });
        let t0 = Instant::now();
        assert_eq!(burst(&l, ip("192.0.2.1"), t0, 100), 100);
        assert!(
            l.check(ip("192.0.2.1"), t0 + Duration::from_secs(u32::MAX.into()))
                .is_allow()
        );
    }

    #[test]
    fn ipv4_mapped_clients_share_the_ipv4_bucket() {
        let l = rates(Some(1), None, 0);
        let t0 = Instant::now();
        assert!(l.check(ip("192.0.2.1"), t0).is_allow());
        assert!(!l.check(ip("::ffff:192.0.2.1"), t0).is_allow());
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn many_threads_share_one_bucket() {
        let l = rates(Some(1), None, DEFAULT_BURST_MULTIPLIER);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| burst(&l, a, t0, 100))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(passed, 6);
    }

    #[test]
    fn limiters_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RateLimiter>();
        check::<ConnLimiter>();
        check::<Limits>();
        check::<ConnGuard>();
    }

    // --- memory ---

    #[test]
    fn a_full_table_evicts_the_least_recently_seen_client() {
        let l = RateLimiter::new(RateConfig {
            rps: Some(1),
            rpm: None,
            burst_multiplier: 0,
            max_keys: 3,
        });
        let (a, b, c, d) = (v4(1), v4(2), v4(3), v4(4));
        let t0 = Instant::now();
        for x in [a, b, c] {
            assert!(l.check(x, t0).is_allow());
        }
        // Seeing `a` again (even rejected) makes `b` the least recently seen.
        assert!(!l.check(a, t0 + MS).is_allow());
        assert!(l.check(d, t0 + MS).is_allow());
        assert_eq!(l.tracked(), 3);
        // `b` was forgotten and starts afresh; `a` was kept and is still limited.
        assert!(!l.check(a, t0 + MS).is_allow());
        assert!(l.check(b, t0 + MS).is_allow());
        assert_eq!(l.tracked(), 3);
    }

    #[test]
    fn drained_clients_are_dropped() {
        let l = rates(Some(1), None, 0);
        let t0 = Instant::now();
        assert!(l.check(v4(1), t0).is_allow());
        assert!(l.check(v4(2), t0).is_allow());
        assert_eq!(l.tracked(), 2);
        // Not yet drained a full request below empty.
        assert!(l.check(v4(3), t0 + 999 * MS).is_allow());
        assert_eq!(l.tracked(), 3);
        // Now the two oldest are; each check drops up to two.
        assert!(l.check(v4(3), t0 + 1999 * MS).is_allow());
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn big_tables_are_sharded_and_still_bounded() {
        assert_eq!(shard_count(1), 1);
        assert_eq!(shard_count(2047), 1);
        assert_eq!(shard_count(2048), 2);
        assert_eq!(shard_count(5000), 4);
        assert_eq!(shard_count(DEFAULT_MAX_KEYS), 16);
        let l = RateLimiter::new(RateConfig {
            rps: Some(1),
            rpm: None,
            burst_multiplier: 0,
            max_keys: 5000,
        });
        let t0 = Instant::now();
        for n in 0..20_000 {
            assert!(l.check(v4(n), t0).is_allow());
        }
        // Every shard saw far more than its share, so every shard is full.
        assert_eq!(l.tracked(), 5000);
    }

    #[test]
    fn lru_keeps_order_through_moves() {
        let mut lru = Lru::new(4);
        for n in 1..=4 {
            lru.insert(v4(n), n);
        }
        assert_eq!(lru.get_mut(&v4(2)), Some(&mut 2));
        lru.assert_consistent();
        assert_eq!(lru.keys(), vec![v4(2), v4(4), v4(3), v4(1)]);
        lru.insert(v4(5), 5);
        assert_eq!(lru.keys(), vec![v4(5), v4(2), v4(4), v4(3)]);
        assert_eq!(lru.pop_oldest(), Some((v4(3), 3)));
        assert_eq!(lru.oldest(), Some(&4));
        lru.insert(v4(2), 20);
        assert_eq!(lru.keys(), vec![v4(2), v4(5), v4(4)]);
        lru.assert_consistent();
        while lru.pop_oldest().is_some() {
            lru.assert_consistent();
        }
        assert_eq!(lru.len(), 0);
        assert_eq!(lru.oldest(), None);
    }

    // --- connections ---

    #[test]
    fn connection_slots_are_counted_and_given_back() {
        let l = Arc::new(ConnLimiter::new(2, 100));
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        let g1 = l.acquire(a).unwrap();
        let g2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).unwrap_err(), Limit::Connections);
        assert_eq!(l.active(a), 2);
        let _other = l.acquire(b).unwrap();
        drop(g1);
        assert_eq!(l.active(a), 1);
        let g3 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(ip("::ffff:192.0.2.1")).unwrap_err(), Limit::Connections);
        drop((g2, g3));
        assert_eq!(l.active(a), 0);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn a_full_connection_table_turns_new_clients_away() {
        let l = Arc::new(ConnLimiter::new(5, 2));
        let ga = l.acquire(v4(1)).unwrap();
        let _gb = l.acquire(v4(2)).unwrap();
        assert_eq!(l.acquire(v4(3)).unwrap_err(), Limit::ConnectionTable);
        // Clients already tracked still get their slots.
        let ga2 = l.acquire(v4(1)).unwrap();
        drop(ga);
        assert_eq!(l.acquire(v4(3)).unwrap_err(), Limit::ConnectionTable);
        drop(ga2);
        assert!(l.acquire(v4(3)).is_ok());
    }

    #[test]
    fn a_zero_connection_limit_turns_everyone_away() {
        let l = Arc::new(ConnLimiter::new(0, 10));
        assert_eq!(l.acquire(v4(1)).unwrap_err(), Limit::Connections);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn guards_outlive_their_limits() {
        let limits = Limits::new(LimitConfig {
            connections: Some(1),
            ..LimitConfig::default()
        });
        let t0 = Instant::now();
        let admitted = limits.admit(v4(1), t0).unwrap();
        assert_eq!(limits.admit(v4(1), t0).unwrap_err(), Limit::Connections);
        drop(limits);
        drop(admitted);
    }

    // --- Limits ---

    #[test]
    fn allowlisted_clients_skip_every_limit() {
        let limits = Limits::new(LimitConfig {
            rps: Some(1),
            connections: Some(1),
            burst_multiplier: 0,
            allow: parse_cidr_list("10.0.0.0/8, 2001:db8::/32").unwrap(),
            ..LimitConfig::default()
        });
        let t0 = Instant::now();
        let mut held = Vec::new();
        for client in ["10.1.2.3", "::ffff:10.9.9.9", "2001:db8::7"] {
            for _ in 0..10 {
                held.push(limits.admit(ip(client), t0).unwrap());
            }
        }
        let other = ip("192.0.2.1");
        let slot = limits.admit(other, t0).unwrap();
        assert_eq!(limits.admit(other, t0).unwrap_err(), Limit::Rps);
        drop(slot);
        assert!(limits.admit(other, t0 + SEC).is_ok());
    }

    #[test]
    fn rates_are_checked_before_connections() {
        let limits = Limits::new(LimitConfig {
            rps: Some(1),
            connections: Some(1),
            burst_multiplier: 1,
            ..LimitConfig::default()
        });
        let a = v4(1);
        let t0 = Instant::now();
        let held = limits.admit(a, t0).unwrap();
        // Passes the rate (excess 1000 ≤ 1000), then finds no slot: still charged.
        assert_eq!(limits.admit(a, t0).unwrap_err(), Limit::Connections);
        drop(held);
        assert_eq!(limits.admit(a, t0).unwrap_err(), Limit::Rps);
    }

    #[test]
    fn limits_without_settings_admit_everyone() {
        let limits = Limits::new(LimitConfig::default());
        let t0 = Instant::now();
        let held: Vec<_> = (0..100).map(|_| limits.admit(v4(1), t0).unwrap()).collect();
        assert_eq!(held.len(), 100);
    }

    // --- CIDRs ---

    fn net(s: &str) -> IpNet {
        IpNet::parse(s).unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let n = net("10.0.0.0/8");
        assert!(n.contains(ip("10.0.0.0")));
        assert!(n.contains(ip("10.255.255.255")));
        assert!(!n.contains(ip("11.0.0.0")));
        assert!(!n.contains(ip("9.255.255.255")));
        assert!(!n.contains(ip("::a00:1")));
        let n = net("2001:db8::/32");
        assert!(n.contains(ip("2001:db8:ffff::1")));
        assert!(!n.contains(ip("2001:db9::")));
        assert!(!n.contains(ip("32.1.13.184")));
        let n = net("192.168.0.1");
        assert_eq!(n.prefix(), 32);
        assert!(n.contains(ip("192.168.0.1")));
        assert!(!n.contains(ip("192.168.0.2")));
        let n = net("::1");
        assert_eq!(n.prefix(), 128);
        assert!(n.contains(ip("::1")));
        assert!(!n.contains(ip("::2")));
    }

    #[test]
    fn edge_prefixes() {
        let all4 = net("0.0.0.0/0");
        assert!(all4.contains(ip("0.0.0.0")));
        assert!(all4.contains(ip("255.255.255.255")));
        assert!(all4.contains(ip("::ffff:1.2.3.4")));
        assert!(!all4.contains(ip("::1")));
        let all6 = net("::/0");
        assert!(all6.contains(ip("::")));
        assert!(all6.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!all6.contains(ip("1.2.3.4")));
        let one4 = net("255.255.255.255/32");
        assert!(one4.contains(ip("255.255.255.255")));
        assert!(!one4.contains(ip("255.255.255.254")));
        let one6 = net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
        assert!(one6.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!one6.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")));
        assert!(net("10.0.0.0/31").contains(ip("10.0.0.1")));
        assert!(!net("10.0.0.0/31").contains(ip("10.0.0.2")));
        assert!(net("8000::/1").contains(ip("ffff::")));
        assert!(!net("8000::/1").contains(ip("7fff::")));
    }

    #[test]
    fn host_bits_are_cleared_and_mapped_networks_become_ipv4() {
        assert_eq!(net("10.1.2.3/8"), net("10.0.0.0/8"));
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(net("::ffff:10.0.0.0/104"), net("10.0.0.0/8"));
        assert_eq!(net("::ffff:10.1.2.3"), net("10.1.2.3"));
        assert!(net("::ffff:10.0.0.0/104").contains(ip("10.2.3.4")));
        assert_eq!(IpNet::from(ip("::ffff:10.1.2.3")), net("10.1.2.3/32"));
        assert_eq!(IpNet::new(ip("10.0.0.0"), 33), None);
        assert_eq!(IpNet::new(ip("::"), 129), None);
    }

    #[test]
    fn cidr_errors_name_the_input_and_the_reason() {
        let msg = |s: &str| IpNet::parse(s).unwrap_err().to_string();
        assert_eq!(msg("10.0.0.0/33"), r#""10.0.0.0/33": prefix length out of range"#);
        assert_eq!(msg("::/129"), r#""::/129": prefix length out of range"#);
        assert_eq!(msg("10.0.0.0/300"), r#""10.0.0.0/300": prefix length out of range"#);
        assert_eq!(msg("10.0.0.0/"), r#""10.0.0.0/": invalid prefix length"#);
        assert_eq!(msg("10.0.0.0/08"), r#""10.0.0.0/08": invalid prefix length"#);
        assert_eq!(msg("10.0.0.0/+8"), r#""10.0.0.0/+8": invalid prefix length"#);
        assert_eq!(msg("10.0.0.0/8/8"), r#""10.0.0.0/8/8": invalid prefix length"#);
        assert_eq!(msg("10.0.0/8"), r#""10.0.0/8": not an IP address"#);
        assert_eq!(msg("example.com"), r#""example.com": not an IP address"#);
        assert_eq!(msg("fe80::1%eth0"), r#""fe80::1%eth0": not an IP address"#);
        assert_eq!(msg(" 10.0.0.0/8"), r#"" 10.0.0.0/8": not an IP address"#);
        assert_eq!(msg(""), r#""": empty entry"#);
        let e = IpNet::parse("1.2.3.4/40").unwrap_err();
        assert_eq!(e.input, "1.2.3.4/40");
        assert_eq!(e.reason, CidrErrorReason::PrefixRange);
        assert!(net("10.0.0.0/0").contains(ip("1.1.1.1")));
    }

    #[test]
    fn cidr_lists_read_like_ingress_nginx() {
        assert_eq!(
            parse_cidr_list("10.0.0.0/8, 192.168.0.1 ,2001:db8::/32").unwrap(),
            vec![net("10.0.0.0/8"), net("192.168.0.1/32"), net("2001:db8::/32")]
        );
        assert_eq!(parse_cidr_list("").unwrap(), vec![]);
        assert_eq!(parse_cidr_list("  ").unwrap(), vec![]);
        assert_eq!(
            parse_cidr_list("10.0.0.0/8,").unwrap_err().to_string(),
            r#""": empty entry"#
        );
        assert_eq!(
            parse_cidr_list("10.0.0.0/8, 10.0.0.0/33").unwrap_err().to_string(),
            r#""10.0.0.0/33": prefix length out of range"#
        );
    }

    #[test]
    fn cidrs_serialise_as_text() {
        let n = net("10.0.0.0/8");
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""10.0.0.0/8""#);
        assert_eq!(serde_json::from_str::<IpNet>(r#""10.1.0.0/8""#).unwrap(), n);
        let e = serde_json::from_str::<IpNet>(r#""10.0.0.0/33""#).unwrap_err();
        assert!(e.to_string().contains("prefix length out of range"), "{e}");
    }

    // --- properties ---

    /// Request times as microsecond offsets, ascending; on a millisecond grid if asked.
    fn arb_times() -> impl Strategy<Value = Vec<(u8, u64)>> {
        (prop::collection::vec((0u8..3, 0u64..400_000), 1..200), any::<bool>()).prop_map(|(steps, grid)| {
            let mut t = 0;
            steps
                .into_iter()
                .map(|(who, step)| {
                    // Mostly short gaps, so that buckets fill up.
                    let step = if step % 4 == 0 { step } else { step / 100 };
                    t += if grid { step / 1000 * 1000 } else { step };
                    (who, t)
                })
                .collect()
        })
    }

    proptest! {
        /// In any window `[t, t + d]` a client gets at most `rate × d + burst + 1`
        /// requests through, for each configured rate. nginx reads its clock in whole
        /// milliseconds, so off that grid `d` gains up to one millisecond.
        #[test]
        fn no_window_passes_more_than_rate_times_length_plus_burst_plus_one(
            rps in prop::option::of(1u32..50),
            rpm in prop::option::of(1u32..600),
            multiplier in 0u32..6,
            times in arb_times(),
        ) {
            let l = RateLimiter::new(RateConfig { rps, rpm, burst_multiplier: multiplier, max_keys: 3 });
            let t0 = Instant::now();
            let mut passed: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
            for &(who, us) in &times {
                if l.check(v4(u32::from(who)), t0 + Duration::from_micros(us)).is_allow() {
                    passed.entry(who).or_default().push(us);
                }
            }
            let on_grid = times.iter().all(|&(_, us)| us % 1000 == 0);
            let slack_us = if on_grid { 0 } else { 1000 };
            // (requests a second, as a fraction n / scale)
            let limits: Vec<(u64, u64)> = [rps.map(|n| (n, 1)), rpm.map(|n| (n, 60))]
                .into_iter()
                .flatten()
                .map(|(n, scale)| (u64::from(n), scale))
                .collect();
            for list in passed.values() {
                for i in 0..list.len() {
                    for j in i..list.len() {
                        let k = (j - i + 1) as u64;
                        let d_us = list[j] - list[i] + slack_us;
                        for &(n, scale) in &limits {
                            // k ≤ n/scale × d + n × multiplier + 1, in whole numbers.
                            let extra = k.saturating_sub(n * u64::from(multiplier) + 1);
                            prop_assert!(
                                extra * scale * 1_000_000 <= n * d_us,
                                "{k} passed in {d_us} µs at {n}/{scale} r/s, multiplier {multiplier}"
                            );
                        }
                    }
                }
            }
        }

        /// However many clients come, the table holds at most `max_keys`.
        #[test]
        fn the_table_never_exceeds_max_keys(
            max_keys in 1usize..20,
            multiplier in 0u32..3,
            requests in prop::collection::vec((0u32..64, 0u64..3000), 1..300),
        ) {
            let l = RateLimiter::new(RateConfig {
                rps: Some(1),
                rpm: Some(30),
                burst_multiplier: multiplier,
                max_keys,
            });
            let t0 = Instant::now();
            let mut t = t0;
            for (who, step_ms) in requests {
                t += Duration::from_millis(step_ms);
                let _ = l.check(v4(who), t);
                prop_assert!(l.tracked() <= max_keys);
                for shard in l.table.iter() {
                    lock_lru(shard).assert_consistent();
                }
            }
        }

        /// A client never holds more than `limit` slots, and the counts match the live guards.
        #[test]
        fn no_client_holds_more_than_limit_slots(
            limit in 0u32..4,
            max_keys in 1usize..5,
            ops in prop::collection::vec((any::<bool>(), 0u32..6, any::<prop::sample::Index>()), 1..200),
        ) {
            let l = Arc::new(ConnLimiter::new(limit, max_keys));
            let mut live: Vec<ConnGuard> = Vec::new();
            for (take, who, pick) in ops {
                let client = v4(who);
                let held = live.iter().filter(|g| g.ip() == client).count() as u32;
                if take || live.is_empty() {
                    let tracked = l.tracked();
                    match l.acquire(client) {
                        Ok(g) => live.push(g),
                        Err(Limit::Connections) => prop_assert!(held >= limit),
                        Err(Limit::ConnectionTable) => {
                            prop_assert!(held == 0 && tracked >= max_keys)
                        }
                        Err(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                    }
                } else {
                    drop(live.swap_remove(pick.index(live.len())));
                }
                for who in 0..6 {
                    let n = live.iter().filter(|g| g.ip() == v4(who)).count() as u32;
                    prop_assert!(n <= limit);
                    prop_assert_eq!(l.active(v4(who)), n);
                }
                prop_assert!(l.tracked() <= max_keys);
            }
        }
    }
}
