//! Addresses over rtnetlink: add or replace with a kernel lifetime, delete, and dump.

use std::fmt;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_core::NLM_F_CREATE;
use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_core::NLM_F_REPLACE;
use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_core::NetlinkHeader;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::address::AddressFlags;
use netlink_packet_route::address::AddressHeaderFlags;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::address::CacheInfo;
use netlink_sys::Socket;
use netlink_sys::SocketAddr;
use netlink_sys::protocols::NETLINK_ROUTE;

use super::ShellError;

/// `EADDRNOTAVAIL`: deleting an address that is not there.
const EADDRNOTAVAIL: i32 = 99;
/// `ENODEV`: the interface vanished under us.
const ENODEV: i32 = 19;

/// One address as the kernel lists it (`RTM_GETADDR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelAddr {
    /// Interface index.
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    /// Seconds left (`u32::MAX` = forever).
    pub valid_lft: Option<u32>,
    pub tentative: bool,
}

/// A blocking `NETLINK_ROUTE` socket. Every request is one round trip to the local kernel
/// (microseconds), so it is used directly from async code.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens and binds the socket.
    pub fn open() -> Result<Self, ShellError> {
        let io = |source| ShellError::Netlink { op: "open", source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Adds `addr/prefix` on interface `index`, or replaces it (`NLM_F_REPLACE`), with
    /// `valid_lft = preferred_lft = lft_secs` (`None`: forever). IPv6 addresses get `IFA_F_NODAD`.
    pub fn replace(&mut self, index: u32, addr: IpAddr, prefix: u8, lft_secs: Option<u32>) -> Result<(), ShellError> {
        let mut msg = address_message(index, addr, prefix);
        let lft = lft_secs.unwrap_or(u32::MAX);
        let mut cache = CacheInfo::default();
        cache.ifa_preferred = lft;
        cache.ifa_valid = lft;
        msg.attributes.push(AddressAttribute::CacheInfo(cache));
        if addr.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request(RouteNetlinkMessage::NewAddress(msg), flags, "add address", Some(addr))
            .map(drop)
    }

    /// Deletes `addr/prefix` from interface `index`; absent is not an error. Returns whether it was there.
    pub fn delete(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<bool, ShellError> {
        let msg = address_message(index, addr, prefix);
        match self.request(
            RouteNetlinkMessage::DelAddress(msg),
            NLM_F_REQUEST | NLM_F_ACK,
            "delete address",
            Some(addr),
        ) {
            Ok(_) => Ok(true),
            Err(ShellError::Kernel { errno, .. }) if errno == EADDRNOTAVAIL || errno == ENODEV => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every address of every interface.
    pub fn addresses(&mut self) -> Result<Vec<KernelAddr>, ShellError> {
        let msg = AddressMessage::default();
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
            "list addresses",
            None,
        )?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(m) = reply else {
                continue;
            };
            let mut addr = None;
            let mut local = None;
            let mut valid_lft = None;
            let mut flags = u32::from(m.header.flags.bits());
            for a in &m.attributes {
                match a {
                    AddressAttribute::Address(ip) => addr = Some(*ip),
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::CacheInfo(c) => valid_lft = Some(c.ifa_valid),
                    AddressAttribute::Flags(f) => flags |= f.bits(),
                    _ => {}
                }
            }
            // IPv4 point-to-point links carry the peer in IFA_ADDRESS; the own one is IFA_LOCAL.
            if let Some(addr) = local.or(addr) {
                out.push(KernelAddr {
                    index: m.header.index,
                    addr,
                    prefix: m.header.prefix_len,
                    valid_lft,
                    tentative: flags & AddressFlags::Tentative.bits() != 0,
                });
            }
        }
        Ok(out)
    }

    /// Sends one request and collects the replies until the ACK (or `NLMSG_DONE` for dumps).
    fn request(
        &mut self,
        payload: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        vip: Option<IpAddr>,
    ) -> Result<Vec<RouteNetlinkMessage>, ShellError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| ShellError::Netlink { op, source })?;
        let mut out = Vec::new();
        let mut rx = Vec::with_capacity(64 * 1024);
        loop {
            rx.clear();
            self.socket
                .recv(&mut rx, 0)
                .map_err(|source| ShellError::Netlink { op, source })?;
            let mut offset = 0;
            while offset < rx.len() {
                let bytes = rx.get(offset..).unwrap_or_default();
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| ShellError::Netlink {
                        op,
                        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len.next_multiple_of(4);
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(ShellError::Kernel {
                                op,
                                vip,
                                errno: code.get().saturating_neg(),
                                source: io::Error::from_raw_os_error(code.get().saturating_neg()),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}

fn address_message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}
