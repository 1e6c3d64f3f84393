//! The thin Linux I/O shell that puts a [`Decision`] into effect: netlink addresses, sysctls, announcements.
//!
//! - **Active** hold: the address is on the VIP's interface with its configured prefix, added
//!   with `NLM_F_REPLACE` and `valid_lft = preferred_lft =` [`Decision::valid_lft_secs`], and
//!   re-added the same way on every [`Shell::apply`] while held, so the kernel drops it by itself
//!   ~1–2 s after renewals stop (kill -9, SIGSTOP). IPv6 addresses get `IFA_F_NODAD`.
//! - **Quiet** hold: the address is on `lo` as a host address (`/32`, `/128`: a shorter prefix
//!   on `lo` would make the whole subnet local), with the same lifetime, and the VIP interface
//!   has `arp_ignore=1` and `arp_announce=2` (set by the shell the first time it uses the
//!   interface, together with `promote_secondaries=1`), so the kernel never answers ARP for it.
//!   IPv6 needs no sysctl: Linux answers neighbour solicitations only for addresses on the
//!   receiving interface.
//! - **Announce**: gratuitous ARP in both forms (request and reply) or one unsolicited
//!   neighbour advertisement, through an `AF_PACKET` socket on the VIP's interface. `Activate`
//!   sends the first one; the rest of the burst (`announce_repeat`, `announce_interval`) and the
//!   periodic refresh arrive as [`Action::Announce`] from [`crate::hold::decide`]. For a caller
//!   that does not schedule those, [`Shell::announce_burst`] sends the whole burst at once.
//!
//! Netlink and raw sockets need `CAP_NET_ADMIN` and `CAP_NET_RAW`; [`Shell::new`] checks the
//! effective set first and says which one is missing.

pub mod announce;
pub mod guard;
pub mod netlink;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use crate::config::LocalAddr;
use crate::config::Pool;
use crate::config::Timing;
use crate::config::choose_interface;
use crate::error::InterfaceError;
use crate::hold::Action;
use crate::hold::Decision;
use crate::hold::Mode;

use self::netlink::Netlink;

/// The loopback interface quiet holds live on.
pub const LOOPBACK: &str = "lo";

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// Why the shell could not do something. The node refuses to own VIPs while it gets one.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The process lacks a capability it needs to own VIPs.
    #[error("cannot own VIPs: missing {missing} (needs CAP_NET_ADMIN for addresses and CAP_NET_RAW for ARP/NDP)")]
    MissingCapability { missing: String },
    #[error("reading the process capabilities from /proc/self/status: {0}")]
    Capabilities(#[source] io::Error),
    /// A netlink socket operation failed.
    #[error("netlink {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a netlink request.
    #[error("netlink {op}{}: errno {errno}: {source}", vip.map(|v| format!(" {v}")).unwrap_or_default())]
    Kernel {
        op: &'static str,
        vip: Option<IpAddr>,
        errno: i32,
        #[source]
        source: io::Error,
    },
    #[error("no interface named {name:?}")]
    NoInterface { name: String },
    #[error("interface {interface:?} has no MAC address to announce from")]
    NoMac { interface: String },
    #[error("raw socket on {interface:?}: {source}")]
    Datalink {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("setting {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The decision's lease ran out before it was carried out (the process stalled).
    #[error("the lease ran out before the decision was carried out (this process was stalled)")]
    Expired,
    #[error("VIP {vip} is not in the pool")]
    UnknownVip { vip: IpAddr },
    #[error(transparent)]
    Interface(#[from] InterfaceError),
}

/// Which of `CAP_NET_ADMIN` and `CAP_NET_RAW` the effective set `cap_eff` (the `CapEff:` hex of
/// `/proc/self/status`) lacks, if any.
pub fn missing_capabilities(cap_eff: u64) -> Option<String> {
    let missing: Vec<&str> = [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW")]
        .into_iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    (!missing.is_empty()).then(|| missing.join(" and "))
}

/// Checks that this process has `CAP_NET_ADMIN` and `CAP_NET_RAW` in its effective set.
pub fn check_capabilities() -> Result<(), ShellError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(ShellError::Capabilities)?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| ShellError::Capabilities(io::Error::new(io::ErrorKind::InvalidData, "no CapEff line")))?;
    match missing_capabilities(cap_eff) {
        Some(missing) => Err(ShellError::MissingCapability { missing }),
        None => Ok(()),
    }
}

/// Removes every pool address from every interface it is on (including `lo`): at startup, for
/// what a crashed process left behind, and at shutdown. Returns how many were removed.
pub fn remove_all(pool: &Pool) -> Result<usize, ShellError> {
    let mut nl = Netlink::open()?;
    remove_all_with(&mut nl, pool)
}

fn remove_all_with(nl: &mut Netlink, pool: &Pool) -> Result<usize, ShellError> {
    let mut removed = 0;
    for a in nl.addresses()? {
        if pool.contains(a.addr) && nl.delete(a.index, a.addr, a.prefix)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Carries out [`Decision`]s on this host.
#[derive(Debug)]
pub struct Shell {
    pool: Pool,
    timing: Timing,
    nl: Netlink,
    /// Interfaces whose ARP sysctls are already set.
    prepared: BTreeSet<String>,
    /// The last lifetime set, for [`Shell::renew`].
    lft_secs: Option<u32>,
    /// What this shell put in the kernel, by VIP (mirrors the last decision's holdings).
    held: BTreeMap<IpAddr, Mode>,
}

impl Shell {
    /// Checks the capabilities and opens the netlink socket. Does not touch any address: call
    /// [`Shell::release_all`] at startup to remove what a previous process left.
    pub fn new(pool: Pool, timing: Timing) -> Result<Self, ShellError> {
        check_capabilities()?;
        Ok(Self {
            pool,
            timing,
            nl: Netlink::open()?,
            prepared: BTreeSet::new(),
            lft_secs: None,
            held: BTreeMap::new(),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Performs the decision's actions in order, then renews the lifetime of every address it holds.
    pub async fn apply(&mut self, decision: &Decision) -> Result<(), ShellError> {
        self.apply_within(decision, None).await
    }

    /// As [`Shell::apply`], but adds and announces nothing once `deadline` has passed (the
    /// decision's lease ran out while this process was stalled): it fails with
    /// [`ShellError::Expired`] instead, and the caller releases everything.
    pub async fn apply_within(
        &mut self,
        decision: &Decision,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), ShellError> {
        let check = || match deadline {
            Some(d) if std::time::Instant::now() >= d => Err(ShellError::Expired),
            _ => Ok(()),
        };
        self.lft_secs = decision.valid_lft_secs;
        let mut touched = BTreeSet::new();
        for action in &decision.actions {
            match *action {
                Action::Release { vip } => {
                    self.remove(vip)?;
                    self.held.remove(&vip);
                }
                Action::Quiesce { vip } => {
                    check()?;
                    let iface = self.interface_of(vip)?;
                    self.prepare(&iface)?;
                    let lo = self.index_of(LOOPBACK)?;
                    self.nl.replace(lo, vip, host_prefix(vip), self.lft_secs)?;
                    let (index, prefix) = (self.index_of(&iface)?, self.prefix_of(vip)?);
                    self.nl.delete(index, vip, prefix)?;
                    self.held.insert(vip, Mode::Quiet);
                    touched.insert(vip);
                }
                Action::Activate { vip, from_quiet } => {
                    let iface = self.interface_of(vip)?;
                    self.prepare(&iface)?;
                    let (index, prefix) = (self.index_of(&iface)?, self.prefix_of(vip)?);
                    check()?;
                    self.nl.replace(index, vip, prefix, self.lft_secs)?;
                    if from_quiet || self.held.get(&vip) == Some(&Mode::Quiet) {
                        let lo = self.index_of(LOOPBACK)?;
                        self.nl.delete(lo, vip, host_prefix(vip))?;
                    }
                    self.held.insert(vip, Mode::Active);
                    touched.insert(vip);
                    check()?;
                    announce::send_announcement(&iface, vip)?;
                }
                Action::Announce { vip } => {
                    let iface = self.interface_of(vip)?;
                    check()?;
                    announce::send_announcement(&iface, vip)?;
                }
            }
        }
        // Whatever the decision holds that this shell has not put in place (a restart with
        // holdings passed in) is put in place by the renewal below, in its mode.
        for (vip, hold) in &decision.held {
            self.held.insert(*vip, hold.mode);
        }
        self.held.retain(|vip, _| decision.held.contains_key(vip));
        check()?;
        self.renew_except(&touched)
    }

    /// Re-adds every held address with the last lifetime (`NLM_F_REPLACE`).
    pub fn renew(&mut self) -> Result<(), ShellError> {
        self.renew_except(&BTreeSet::new())
    }

    fn renew_except(&mut self, skip: &BTreeSet<IpAddr>) -> Result<(), ShellError> {
        let held: Vec<(IpAddr, Mode)> = self.held.iter().map(|(v, m)| (*v, *m)).collect();
        for (vip, mode) in held {
            if skip.contains(&vip) {
                continue;
            }
            match mode {
                Mode::Active => {
                    let iface = self.interface_of(vip)?;
                    let (index, prefix) = (self.index_of(&iface)?, self.prefix_of(vip)?);
                    self.nl.replace(index, vip, prefix, self.lft_secs)?;
                }
                Mode::Quiet => {
                    let lo = self.index_of(LOOPBACK)?;
                    self.nl.replace(lo, vip, host_prefix(vip), self.lft_secs)?;
                }
            }
        }
        Ok(())
    }

    /// Sends the whole takeover burst for `vip`: `announce_repeat` announcements
    /// `announce_interval` apart. Not needed when [`crate::hold::decide`] drives the shell (it
    /// schedules the burst as [`Action::Announce`]s).
    pub async fn announce_burst(&mut self, vip: IpAddr) -> Result<(), ShellError> {
        let iface = self.interface_of(vip)?;
        for i in 0..self.timing.announce_repeat {
            if i > 0 {
                tokio::time::sleep(self.timing.announce_interval).await;
            }
            announce::send_announcement(&iface, vip)?;
        }
        Ok(())
    }

    /// Removes every pool address from every interface (startup and shutdown). Returns how many.
    pub async fn release_all(&mut self) -> Result<usize, ShellError> {
        self.held.clear();
        remove_all_with(&mut self.nl, &self.pool)
    }

    /// Removes `vip` wherever it is (its interface or `lo`).
    fn remove(&mut self, vip: IpAddr) -> Result<(), ShellError> {
        for a in self.nl.addresses()? {
            if a.addr == vip {
                self.nl.delete(a.index, a.addr, a.prefix)?;
            }
        }
        Ok(())
    }

    fn prefix_of(&self, vip: IpAddr) -> Result<u8, ShellError> {
        self.pool
            .get(vip)
            .map(|s| s.prefix)
            .ok_or(ShellError::UnknownVip { vip })
    }

    /// The interface `vip` goes on: the configured one, or the one whose subnet contains it.
    fn interface_of(&mut self, vip: IpAddr) -> Result<String, ShellError> {
        let spec = self.pool.get(vip).ok_or(ShellError::UnknownVip { vip })?;
        if let Some(name) = &spec.interface {
            return Ok(name.clone());
        }
        let names: BTreeMap<u32, String> = pnet_datalink::interfaces()
            .into_iter()
            .map(|i| (i.index, i.name))
            .collect();
        let local: Vec<LocalAddr> = self
            .nl
            .addresses()?
            .into_iter()
            .filter_map(|a| {
                Some(LocalAddr {
                    interface: names.get(&a.index)?.clone(),
                    addr: a.addr,
                    prefix: a.prefix,
                })
            })
            .filter(|l| l.interface != LOOPBACK)
            .collect();
        Ok(choose_interface(spec, &local)?.to_string())
    }

    fn index_of(&self, name: &str) -> Result<u32, ShellError> {
        announce::interface(name).map(|i| i.index)
    }

    /// Sets `arp_ignore=1`, `arp_announce=2` and `promote_secondaries=1` on `iface` (once), writing
    /// only the ones that differ.
    fn prepare(&mut self, iface: &str) -> Result<(), ShellError> {
        if self.prepared.contains(iface) {
            return Ok(());
        }
        for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2"), ("promote_secondaries", "1")] {
            let path = format!("/proc/sys/net/ipv4/conf/{iface}/{key}");
            // Written only when it differs: in a container /proc/sys is read-only, and the
            // settings can be made on the host instead (sysctl.d, docs/deploy.md).
            if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
                continue;
            }
            std::fs::write(&path, value).map_err(|source| ShellError::Sysctl { path, source })?;
        }
        self.prepared.insert(iface.to_string());
        Ok(())
    }
}

/// `/32` or `/128`: the prefix of a quiet hold on `lo`.
pub fn host_prefix(vip: IpAddr) -> u8 {
    if vip.is_ipv4() { 32 } else { 128 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bits() {
        assert_eq!(missing_capabilities(u64::MAX), None);
        assert_eq!(missing_capabilities(1 << 12 | 1 << 13), None);
        assert_eq!(missing_capabilities(1 << 13).as_deref(), Some("CAP_NET_ADMIN"));
        assert_eq!(missing_capabilities(1 << 12).as_deref(), Some("CAP_NET_RAW"));
        assert_eq!(
            missing_capabilities(0).as_deref(),
            Some("CAP_NET_ADMIN and CAP_NET_RAW")
        );
    }
}
