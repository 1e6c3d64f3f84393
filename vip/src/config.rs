//! The VIP pool (address, prefix, interface or one chosen by subnet) and the timing, with validation.
//!
//! # Default timing and what it gives
//!
//! | setting | default | role |
//! | --- | --- | --- |
//! | `lease` | 300 ms | a member may hold VIPs for this long after the send time of its last granted renewal |
//! | `drift_ppm` | 10 000 (1 %) | the most any node's monotonic clock runs fast or slow against real time |
//! | `release_guard` | 50 ms | a holder stops this long before its lease ends: the shell's budget to take the address down |
//! | `refresh` | 100 ms | how often a member asks the leader to renew (with the default lease, one may be lost or late without the lease lapsing) |
//! | `preempt_delay` | 30 s | a member that comes back receives VIPs taken from others only after this long up and healthy |
//! | `grace` | 10 s | after a handover the old owner keeps the address, silent, for this long |
//! | `announce_repeat` / `announce_interval` | 3 / 100 ms | gratuitous ARP (IPv6: unsolicited NA) burst on taking a VIP |
//! | `reannounce` | 10 s | a refresh announcement while holding |
//! | `max_config_lag` | 10 s | a member whose routing config is older than what was committed this long ago is stale |
//!
//! The leader reassigns a silent owner's VIP after [`Timing::fence_wait_ms`] = ⌈300 × 1.01 / 0.99⌉ + 1
//! = 308 ms from its last grant to that owner. Worst-case failover when an owner (not the leader)
//! dies is therefore 308 ms + one commit (a quorum round trip and an fsync, ~5–30 ms on a LAN) +
//! apply and netlink (~ms) ≈ 0.35 s; the leader's planning timer is set to the exact instant by
//! [`crate::assign::Plan::wake_at`], so there is no polling delay on top. When the *leader* dies,
//! every VIP is dark until a new leader is elected (a member keeps VIPs only while a quorum-confirmed
//! leader renews it) and the new leader waits `fence_wait` from its election for the dead leader's
//! VIPs: failover is election time + 0.35 s. openraft followers start an election
//! `election_timeout_max` + a random election timeout after the last heartbeat; with raftgate's
//! defaults (heartbeat 50 ms, election timeout 150–300 ms) that is 450–600 ms, so ~0.8–0.95 s in all.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::error::ConfigError;
use crate::error::InterfaceError;
use crate::time::ceil_ms;
use crate::time::floor_ms;

/// One floating address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    pub addr: IpAddr,
    /// The prefix length the address is added with (`ip addr add ADDR/PREFIX`).
    pub prefix: u8,
    /// The interface to add it on; `None` chooses, per node, the interface with a subnet that
    /// contains the address ([`choose_interface`]).
    #[serde(default)]
    pub interface: Option<String>,
}

impl VipSpec {
    fn validate(&self) -> Result<(), ConfigError> {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix > max {
            return Err(ConfigError::Prefix {
                addr: self.addr,
                prefix: self.prefix,
                max,
            });
        }
        let broadcast = matches!(self.addr, IpAddr::V4(a) if a.is_broadcast());
        if self.addr.is_unspecified() || self.addr.is_loopback() || self.addr.is_multicast() || broadcast {
            return Err(ConfigError::NotUnicast { addr: self.addr });
        }
        if let Some(name) = &self.interface {
            // Linux: at most IFNAMSIZ-1 = 15 bytes, no '/', ':' (alias syntax) or whitespace, not "." or "..".
            let bad = name.is_empty()
                || name.len() > 15
                || name == "."
                || name == ".."
                || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
            if bad {
                return Err(ConfigError::InterfaceName {
                    addr: self.addr,
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The configured VIPs, validated, in address order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    specs: Vec<VipSpec>,
}

impl Pool {
    /// Validates every spec and refuses duplicates.
    pub fn new(mut specs: Vec<VipSpec>) -> Result<Self, ConfigError> {
        let mut seen = BTreeSet::new();
        for s in &specs {
            s.validate()?;
            if !seen.insert(s.addr) {
                return Err(ConfigError::Duplicate { addr: s.addr });
            }
        }
        specs.sort_by_key(|s| s.addr);
        Ok(Self { specs })
    }

    pub fn specs(&self) -> &[VipSpec] {
        &self.specs
    }

    pub fn get(&self, addr: IpAddr) -> Option<&VipSpec> {
        self.specs
            .binary_search_by_key(&addr, |s| s.addr)
            .ok()
            .and_then(|i| self.specs.get(i))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.get(addr).is_some()
    }

    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.specs.iter().map(|s| s.addr)
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

/// An address configured on a local interface, as the shell lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddr {
    pub interface: String,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// The interface a VIP goes on: the named one, or the one whose subnet contains the VIP with the
/// longest prefix (the VIP itself, if already present, is not a subnet). Two interfaces tied at
/// that prefix are an error, never a guess.
pub fn choose_interface<'a>(spec: &'a VipSpec, local: &'a [LocalAddr]) -> Result<&'a str, InterfaceError> {
    if let Some(name) = &spec.interface {
        return Ok(name);
    }
    let mut best: Option<&LocalAddr> = None;
    let mut tie: Option<&LocalAddr> = None;
    for l in local {
        if l.addr == spec.addr || !in_subnet(spec.addr, l.addr, l.prefix) {
            continue;
        }
        match best {
            None => best = Some(l),
            Some(b) if l.prefix > b.prefix => {
                best = Some(l);
                tie = None;
            }
            Some(b) if l.prefix == b.prefix && l.interface != b.interface => tie = Some(l),
            Some(_) => {}
        }
    }
    match (best, tie) {
        (Some(b), Some(t)) => Err(InterfaceError::Ambiguous {
            addr: spec.addr,
            prefix: b.prefix,
            first: b.interface.clone().min(t.interface.clone()),
            second: b.interface.clone().max(t.interface.clone()),
        }),
        (Some(b), None) => Ok(&b.interface),
        (None, _) => Err(InterfaceError::NoSubnet { addr: spec.addr }),
    }
}

fn in_subnet(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Lease, margins and delays. See the module docs for the defaults and the failover they give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a member may hold VIPs after the send time of its last renewal a leader granted.
    pub lease: Duration,
    /// Bound on any node's clock rate error against real time, in parts per million.
    pub drift_ppm: u32,
    /// A holder treats its lease as ending this much early, so the shell has this long to remove
    /// the address (timer lateness, netlink) before the lease really ends.
    pub release_guard: Duration,
    /// How often a member sends a renewal report.
    pub refresh: Duration,
    /// A member that comes back (or joins) receives VIPs taken from other healthy members only
    /// after it has been up and healthy this long. VIPs nobody else can hold it gets at once.
    pub preempt_delay: Duration,
    /// How long the old owner keeps a handed-over address, silent, for traffic still reaching it.
    pub grace: Duration,
    /// Announcements (gratuitous ARP / unsolicited NA) sent on taking a VIP, including the first.
    pub announce_repeat: u32,
    /// Spacing of that burst.
    pub announce_interval: Duration,
    /// A refresh announcement while holding.
    pub reannounce: Duration,
    /// A member whose routing config version is below what was committed this long ago is stale
    /// and gets no VIP (see [`crate::leader::VersionHistory`]).
    pub max_config_lag: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease: Duration::from_millis(300),
            drift_ppm: 10_000,
            release_guard: Duration::from_millis(50),
            refresh: Duration::from_millis(100),
            preempt_delay: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            announce_repeat: 3,
            announce_interval: Duration::from_millis(100),
            reannounce: Duration::from_secs(10),
            max_config_lag: Duration::from_secs(10),
        }
    }
}

impl Timing {
    /// Refuses settings under which leases would lapse between renewals or the margins break.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: &str| Err(ConfigError::Timing(s.to_string()));
        if self.drift_ppm >= 100_000 {
            return err("drift_ppm must be below 100000 (10%)");
        }
        if self.refresh.is_zero() || self.announce_interval.is_zero() || self.reannounce.is_zero() {
            return err("refresh, announce_interval and reannounce must be positive");
        }
        if self.announce_repeat == 0 {
            return err("announce_repeat must be at least 1");
        }
        // One lost renewal must not make a member drop its VIPs.
        if self.release_guard + self.refresh * 2 >= self.lease {
            return err("lease must exceed release_guard + 2 x refresh");
        }
        Ok(())
    }

    /// Milliseconds after its lease anchor a holder keeps VIPs: `lease - release_guard`.
    pub fn hold_ms(&self) -> u64 {
        floor_ms(self.lease).saturating_sub(ceil_ms(self.release_guard))
    }

    /// Milliseconds, on the leader's clock, from the last grant to a member until its lease has
    /// surely ended: ⌈lease × (1 + ρ) / (1 − ρ)⌉ + 1, ρ = `drift_ppm` / 10⁶.
    ///
    /// The member's lease is anchored at a real time A no later than the grant's real time G and
    /// ends, by its own clock, `lease` later: by real time A + lease / (1 − ρ) at the latest.
    /// W milliseconds of the leader's clock after G last at least W / (1 + ρ) real time, so
    /// W ≥ lease (1 + ρ) / (1 − ρ) suffices; the extra millisecond covers the leader's readings
    /// being truncated to whole milliseconds (a holder's truncation errs the safe way).
    pub fn fence_wait_ms(&self) -> u64 {
        let ppm = u128::from(self.drift_ppm);
        let ns = self.lease.as_nanos() * (1_000_000 + ppm);
        let ns = ns.div_ceil(1_000_000u128.saturating_sub(ppm).max(1));
        u64::try_from(ns.div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// A member the leader granted within this many milliseconds counts as live.
    pub fn live_ms(&self) -> u64 {
        floor_ms(self.lease)
    }

    /// After its election the leader collects reports this long before its first plan; members
    /// that reported by then count as incumbents, not as returning (no preemption delay).
    pub fn startup_ms(&self) -> u64 {
        ceil_ms(self.refresh) * 2
    }

    pub(crate) fn preempt_ms(&self) -> u64 {
        ceil_ms(self.preempt_delay)
    }

    pub(crate) fn grace_ms(&self) -> u64 {
        floor_ms(self.grace)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::net::Ipv6Addr;

    use super::*;

    fn spec(addr: &str, prefix: u8, iface: Option<&str>) -> VipSpec {
        VipSpec {
            addr: addr.parse().unwrap(),
            prefix,
            interface: iface.map(str::to_string),
        }
    }

    fn local(iface: &str, addr: &str, prefix: u8) -> LocalAddr {
        LocalAddr {
            interface: iface.to_string(),
            addr: addr.parse().unwrap(),
            prefix,
        }
    }

    #[test]
    fn pool_validation() {
        assert!(
            Pool::new(vec![
                spec("10.0.0.10", 24, Some("eth0")),
                spec("2001:db8::10", 64, None)
            ])
            .is_ok()
        );
        assert!(matches!(
            Pool::new(vec![spec("10.0.0.10", 33, None)]),
            Err(ConfigError::Prefix { .. })
        ));
        assert!(matches!(
            Pool::new(vec![spec("10.0.0.10", 24, None), spec("10.0.0.10", 32, None)]),
            Err(ConfigError::Duplicate { .. })
        ));
        for bad in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "::1"] {
            assert!(matches!(
                Pool::new(vec![spec(bad, 32, None)]),
                Err(ConfigError::NotUnicast { .. })
            ));
        }
        for bad in ["", "a/b", "eth0:1", "sixteen-chars-xx", ".."] {
            assert!(matches!(
                Pool::new(vec![spec("10.0.0.1", 32, Some(bad))]),
                Err(ConfigError::InterfaceName { .. })
            ));
        }
        let p = Pool::new(vec![spec("10.0.0.2", 32, None), spec("10.0.0.1", 32, None)]).unwrap();
        assert_eq!(
            p.addrs().collect::<Vec<_>>(),
            vec![
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
            ]
        );
        assert!(p.contains(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
    }

    #[test]
    fn interface_by_subnet() {
        let locals = [
            local("eth0", "10.0.0.5", 16),
            local("eth1", "10.0.1.5", 24),
            local("eth2", "192.168.1.5", 24),
            local("eth3", "192.168.1.6", 24),
            local("eth4", "2001:db8::5", 64),
            local("eth0", "10.0.1.77", 32),
        ];
        // Longest prefix wins; the VIP itself (already held) is not a subnet.
        assert_eq!(choose_interface(&spec("10.0.1.77", 32, None), &locals), Ok("eth1"));
        assert_eq!(choose_interface(&spec("10.0.9.1", 32, None), &locals), Ok("eth0"));
        assert_eq!(choose_interface(&spec("2001:db8::99", 128, None), &locals), Ok("eth4"));
        assert_eq!(
            choose_interface(&spec("10.0.9.1", 32, Some("bond0")), &locals),
            Ok("bond0")
        );
        assert!(matches!(
            choose_interface(&spec("192.168.1.9", 32, None), &locals),
            Err(InterfaceError::Ambiguous { .. })
        ));
        assert!(matches!(
            choose_interface(&spec("172.16.0.1", 32, None), &locals),
            Err(InterfaceError::NoSubnet { .. })
        ));
        assert!(!in_subnet(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            0
        ));
        assert!(in_subnet("1.2.3.4".parse().unwrap(), "9.9.9.9".parse().unwrap(), 0));
    }

    #[test]
    fn default_timing_and_fence() {
        let t = Timing::default();
        t.validate().unwrap();
        // ceil(300 * 1.01 / 0.99) = ceil(306.06) = 307, + 1 for truncation.
        assert_eq!(t.fence_wait_ms(), 308);
        assert_eq!(t.hold_ms(), 250);
        let zero_drift = Timing {
            drift_ppm: 0,
            ..Timing::default()
        };
        assert_eq!(zero_drift.fence_wait_ms(), 301);
        let bad = Timing {
            refresh: Duration::from_millis(200),
            ..Timing::default()
        };
        assert!(bad.validate().is_err());
        let bad = Timing {
            drift_ppm: 100_000,
            ..Timing::default()
        };
        assert!(bad.validate().is_err());
    }
}
