//! The UDP session table: a pure core keyed by client address, driven with `now` passed in.
//!
//! A session binds one client address to one upstream endpoint (by index) from the first
//! datagram until it has been idle for the timeout. The table does no I/O and reads no
//! clock: the UDP shell (`l4::udp`) calls [`SessionTable::lookup_or_create`] for each
//! client datagram, [`SessionTable::touch`] for each reply, [`SessionTable::expire`] on a
//! timer tick, and [`SessionTable::close`] when a session's upstream socket fails.
//!
//! When the table is full, a datagram from a new client is **refused** (dropped); live
//! sessions are never evicted to make room. Eviction would let a flood of datagrams from
//! spoofed source addresses churn out every real client; refusing only hurts new clients
//! until idle sessions expire, which is what nginx does when it runs out of connections.
//!
//! Invariant (property-tested): `len() <= max` and `created == len() + expired + closed`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

/// One client's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// Unique for the life of the table, so a stale close cannot end a newer session of
    /// the same client.
    pub id: u64,
    /// The endpoint's index in the upstream it was picked from.
    pub endpoint: usize,
    pub created: Instant,
    pub last_seen: Instant,
}

/// What [`SessionTable::lookup_or_create`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client already had this session; it was touched.
    Existing(Session),
    /// A new session was made: the shell must open its upstream side.
    Created(Session),
    /// The table is at its bound; the datagram should be dropped.
    Full,
    /// The pick found no endpoint; the datagram should be dropped.
    NoEndpoint,
}

/// Lifetime counters of a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub created: u64,
    /// Ended by [`SessionTable::expire`].
    pub expired: u64,
    /// Ended by [`SessionTable::close`].
    pub closed: u64,
    /// New clients turned away because the table was full.
    pub refused: u64,
}

/// Client address to session, bounded, with an idle timeout.
#[derive(Debug)]
pub struct SessionTable {
    sessions: HashMap<SocketAddr, Session>,
    max: usize,
    idle: Duration,
    next_id: u64,
    counters: Counters,
}

impl SessionTable {
    /// A table of at most `max` sessions that end after `idle` without traffic.
    pub fn new(max: usize, idle: Duration) -> SessionTable {
        SessionTable {
            sessions: HashMap::new(),
            max,
            idle,
            next_id: 0,
            counters: Counters::default(),
        }
    }

    /// The client's session, touched; or a new one bound to the endpoint `pick` returns.
    /// `pick` is only called when a session is about to be created.
    pub fn lookup_or_create(
        &mut self,
        client: SocketAddr,
        now: Instant,
        pick: impl FnOnce() -> Option<usize>,
    ) -> Outcome {
        if let Some(s) = self.sessions.get_mut(&client) {
            s.last_seen = s.last_seen.max(now);
            return Outcome::Existing(*s);
        }
        if self.sessions.len() >= self.max {
            self.counters.refused += 1;
            return Outcome::Full;
        }
        let Some(endpoint) = pick() else {
            return Outcome::NoEndpoint;
        };
        let s = Session {
            id: self.next_id,
            endpoint,
            created: now,
            last_seen: now,
        };
        self.next_id += 1;
        self.counters.created += 1;
        self.sessions.insert(client, s);
        Outcome::Created(s)
    }

    /// Marks traffic on the client's session `id` (a reply). False if it is gone.
    pub fn touch(&mut self, client: SocketAddr, id: u64, now: Instant) -> bool {
        match self.sessions.get_mut(&client) {
            Some(s) if s.id == id => {
                s.last_seen = s.last_seen.max(now);
                true
            }
            _ => false,
        }
    }

    /// Ends the client's session `id` (its upstream side failed or closed). False if that
    /// session is already gone, so a late close never ends a newer session.
    pub fn close(&mut self, client: SocketAddr, id: u64) -> bool {
        match self.sessions.get(&client) {
            Some(s) if s.id == id => {
                self.sessions.remove(&client);
                self.counters.closed += 1;
                true
            }
            _ => false,
        }
    }

    /// Ends and returns every session idle for at least the timeout at `now`. Linear in
    /// the table's size; the shell calls it a few times per timeout, not per datagram.
    pub fn expire(&mut self, now: Instant) -> Vec<(SocketAddr, Session)> {
        let idle = self.idle;
        let mut out = Vec::new();
        self.sessions.retain(|client, s| {
            let keep = now.saturating_duration_since(s.last_seen) < idle;
            if !keep {
                out.push((*client, *s));
            }
            keep
        });
        self.counters.expired += out.len() as u64;
        out
    }

    /// Ends every session (the listener is closing); counted as closed.
    pub fn clear(&mut self) -> Vec<(SocketAddr, Session)> {
        let out: Vec<_> = self.sessions.drain().collect();
        self.counters.closed += out.len() as u64;
        out
    }

    /// The earliest instant at which some session could expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions.values().map(|s| s.last_seen + self.idle).min()
    }

    pub fn get(&self, client: SocketAddr) -> Option<Session> {
        self.sessions.get(&client).copied()
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn client(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 5000 + u16::from(i)))
    }

    const IDLE: Duration = Duration::from_secs(30);

    #[test]
    fn a_client_keeps_its_endpoint_until_idle() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(10, IDLE);
        let Outcome::Created(s) = t.lookup_or_create(client(1), t0, || Some(2)) else {
            panic!("expected a new session");
        };
        assert_eq!(s.endpoint, 2);
        // Later datagrams reuse it; pick is not called.
        let again = t.lookup_or_create(client(1), t0 + Duration::from_secs(20), || {
            panic!("picked for an existing session")
        });
        assert!(matches!(again, Outcome::Existing(s2) if s2.id == s.id && s2.endpoint == 2));
        // Touched at 20 s, so still live at 45 s, gone at 50 s.
        assert!(t.expire(t0 + Duration::from_secs(45)).is_empty());
        let gone = t.expire(t0 + Duration::from_secs(50));
        assert_eq!(
            gone,
            vec![(
                client(1),
                Session {
                    last_seen: t0 + Duration::from_secs(20),
                    ..s
                }
            )]
        );
        assert!(t.is_empty());
        assert_eq!(t.counters().expired, 1);
    }

    #[test]
    fn a_reply_touches_the_session() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(10, IDLE);
        let Outcome::Created(s) = t.lookup_or_create(client(1), t0, || Some(0)) else {
            panic!()
        };
        assert!(t.touch(client(1), s.id, t0 + Duration::from_secs(25)));
        assert!(t.expire(t0 + Duration::from_secs(40)).is_empty());
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(55)));
    }

    #[test]
    fn a_full_table_refuses_new_clients_and_keeps_old_ones() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(2, IDLE);
        assert!(matches!(
            t.lookup_or_create(client(1), t0, || Some(0)),
            Outcome::Created(_)
        ));
        assert!(matches!(
            t.lookup_or_create(client(2), t0, || Some(0)),
            Outcome::Created(_)
        ));
        assert_eq!(t.lookup_or_create(client(3), t0, || Some(0)), Outcome::Full);
        assert!(matches!(
            t.lookup_or_create(client(1), t0, || Some(0)),
            Outcome::Existing(_)
        ));
        assert_eq!(t.counters().refused, 1);
        // Room again once one expires.
        t.touch(client(2), 1, t0 + Duration::from_secs(10));
        assert_eq!(t.expire(t0 + IDLE).len(), 1);
        assert!(matches!(
            t.lookup_or_create(client(3), t0 + IDLE, || Some(0)),
            Outcome::Created(_)
        ));
    }

    #[test]
    fn no_endpoint_creates_nothing() {
        let mut t = SessionTable::new(2, IDLE);
        assert_eq!(
            t.lookup_or_create(client(1), Instant::now(), || None),
            Outcome::NoEndpoint
        );
        assert!(t.is_empty());
        assert_eq!(t.counters(), Counters::default());
    }

    #[test]
    fn a_stale_close_does_not_end_a_newer_session() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(2, IDLE);
        let Outcome::Created(old) = t.lookup_or_create(client(1), t0, || Some(0)) else {
            panic!()
        };
        assert_eq!(t.expire(t0 + IDLE).len(), 1);
        let Outcome::Created(new) = t.lookup_or_create(client(1), t0 + IDLE, || Some(1)) else {
            panic!()
        };
        assert!(!t.close(client(1), old.id));
        assert!(!t.touch(client(1), old.id, t0 + IDLE));
        assert_eq!(t.get(client(1)), Some(new));
        assert!(t.close(client(1), new.id));
        assert_eq!(t.counters().closed, 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Datagram {
            client: u8,
            advance_ms: u16,
            endpoint: Option<u8>,
        },
        Reply {
            client: u8,
            advance_ms: u16,
        },
        Close {
            client: u8,
        },
        Expire {
            advance_ms: u16,
        },
        Clear,
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..12, 0u16..20_000, prop::option::weighted(0.9, 0u8..4))
                .prop_map(|(client, advance_ms, endpoint)| Op::Datagram { client, advance_ms, endpoint }),
            2 => (0u8..12, 0u16..20_000).prop_map(|(client, advance_ms)| Op::Reply { client, advance_ms }),
            1 => (0u8..12).prop_map(|client| Op::Close { client }),
            2 => (0u16..40_000).prop_map(|advance_ms| Op::Expire { advance_ms }),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #[test]
        fn bounded_and_every_session_accounted_for(
            max in 0usize..6,
            ops in prop::collection::vec(arb_op(), 0..200),
        ) {
            let idle = Duration::from_secs(10);
            let t0 = Instant::now();
            let mut now = t0;
            let mut t = SessionTable::new(max, idle);
            for op in ops {
                match op {
                    Op::Datagram { client: c, advance_ms, endpoint } => {
                        now += Duration::from_millis(u64::from(advance_ms));
                        let before = t.get(client(c));
                        match t.lookup_or_create(client(c), now, || endpoint.map(usize::from)) {
                            Outcome::Existing(s) => {
                                // The same session, still bound to the same endpoint.
                                let b = before.ok_or_else(|| TestCaseError::fail("existing without a session"))?;
                                prop_assert_eq!((s.id, s.endpoint), (b.id, b.endpoint));
                                prop_assert_eq!(s.last_seen, now);
                            }
                            Outcome::Created(s) => {
                                prop_assert!(before.is_none());
                                prop_assert_eq!(Some(s.endpoint), endpoint.map(usize::from));
                            }
                            Outcome::Full => prop_assert!(before.is_none() && t.len() == max),
                            Outcome::NoEndpoint => prop_assert!(before.is_none() && endpoint.is_none()),
                        }
                    }
                    Op::Reply { client: c, advance_ms } => {
                        now += Duration::from_millis(u64::from(advance_ms));
                        if let Some(s) = t.get(client(c)) {
                            prop_assert!(t.touch(client(c), s.id, now));
                        }
                    }
                    Op::Close { client: c } => {
                        if let Some(s) = t.get(client(c)) {
                            prop_assert!(t.close(client(c), s.id));
                            prop_assert!(!t.close(client(c), s.id));
                        }
                    }
                    Op::Expire { advance_ms } => {
                        now += Duration::from_millis(u64::from(advance_ms));
                        for (_, s) in t.expire(now) {
                            prop_assert!(now.duration_since(s.last_seen) >= idle);
                        }
                        // Whatever is left is still within its timeout.
                        if let Some(d) = t.next_deadline() {
                            prop_assert!(d > now);
                        }
                    }
                    Op::Clear => {
                        t.clear();
                        prop_assert!(t.is_empty());
                    }
                }
                let c = t.counters();
                prop_assert!(t.len() <= max);
                prop_assert_eq!(c.created, t.len() as u64 + c.expired + c.closed);
            }
        }
    }
}
