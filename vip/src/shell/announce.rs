//! Announcements on the wire: gratuitous ARP (request and reply forms) and unsolicited neighbour advertisements.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

use pnet_datalink::Channel;
use pnet_datalink::Config;
use pnet_datalink::MacAddr;
use pnet_datalink::NetworkInterface;
use pnet_packet::MutablePacket;
use pnet_packet::arp::ArpHardwareTypes;
use pnet_packet::arp::ArpOperation;
use pnet_packet::arp::ArpOperations;
use pnet_packet::arp::MutableArpPacket;
use pnet_packet::ethernet::EtherTypes;
use pnet_packet::ethernet::MutableEthernetPacket;
use pnet_packet::icmpv6::Icmpv6Packet;
use pnet_packet::icmpv6::Icmpv6Types;
use pnet_packet::icmpv6::checksum;
use pnet_packet::icmpv6::ndp::Icmpv6Codes;
use pnet_packet::icmpv6::ndp::MutableNeighborAdvertPacket;
use pnet_packet::icmpv6::ndp::NdpOption;
use pnet_packet::icmpv6::ndp::NdpOptionTypes;
use pnet_packet::icmpv6::ndp::NeighborAdvertFlags;
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::MutableIpv6Packet;

use super::ShellError;

const ETH_LEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_LEN: usize = 40;
/// Neighbour advertisement (24) plus one target link-layer address option (8).
const NA_LEN: usize = 32;

/// The two forms of gratuitous ARP; [`send_announcement`] sends both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GarpForm {
    /// `op=request`, sender IP = target IP = VIP, target MAC all zeros.
    Request,
    /// `op=reply`, sender IP = target IP = VIP, target MAC = sender MAC (what Linux requires of a gratuitous reply).
    Reply,
}

/// Finds the interface by name (index, MAC).
pub fn interface(name: &str) -> Result<NetworkInterface, ShellError> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| ShellError::NoInterface { name: name.to_string() })
}

/// The Ethernet frame of a gratuitous ARP for `vip` from `mac`, to broadcast.
pub fn garp_frame(mac: MacAddr, vip: Ipv4Addr, form: GarpForm) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_LEN + ARP_LEN];
    let (op, target_mac): (ArpOperation, MacAddr) = match form {
        GarpForm::Request => (ArpOperations::Request, MacAddr::zero()),
        GarpForm::Reply => (ArpOperations::Reply, mac),
    };
    if let Some(mut eth) = MutableEthernetPacket::new(&mut buf) {
        eth.set_destination(MacAddr::broadcast());
        eth.set_source(mac);
        eth.set_ethertype(EtherTypes::Arp);
        if let Some(mut arp) = MutableArpPacket::new(eth.payload_mut()) {
            arp.set_hardware_type(ArpHardwareTypes::Ethernet);
            arp.set_protocol_type(EtherTypes::Ipv4);
            arp.set_hw_addr_len(6);
            arp.set_proto_addr_len(4);
            arp.set_operation(op);
            arp.set_sender_hw_addr(mac);
            arp.set_sender_proto_addr(vip);
            arp.set_target_hw_addr(target_mac);
            arp.set_target_proto_addr(vip);
        }
    }
    buf
}

/// The Ethernet frame of an unsolicited neighbour advertisement for `vip` from `mac`: to
/// `ff02::1` (MAC 33:33:00:00:00:01), source `vip`, hop limit 255, Override set, Solicited and
/// Router clear, with the target link-layer address option and the ICMPv6 checksum.
pub fn na_frame(mac: MacAddr, vip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![0u8; NA_LEN];
    if let Some(mut na) = MutableNeighborAdvertPacket::new(&mut icmp) {
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Codes::NoCode);
        na.set_flags(NeighborAdvertFlags::Override);
        na.set_target_addr(vip);
        na.set_options(&[NdpOption {
            option_type: NdpOptionTypes::TargetLLAddr,
            length: 1,
            data: mac.octets().to_vec(),
        }]);
    }
    let sum = Icmpv6Packet::new(&icmp).map(|p| checksum(&p, &vip, &all_nodes));
    if let (Some(mut na), Some(sum)) = (MutableNeighborAdvertPacket::new(&mut icmp), sum) {
        na.set_checksum(sum);
    }
    let mut buf = vec![0u8; ETH_LEN + IPV6_LEN + NA_LEN];
    if let Some(mut eth) = MutableEthernetPacket::new(&mut buf) {
        eth.set_destination(MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
        eth.set_source(mac);
        eth.set_ethertype(EtherTypes::Ipv6);
        if let Some(mut ip) = MutableIpv6Packet::new(eth.payload_mut()) {
            ip.set_version(6);
            ip.set_payload_length(NA_LEN as u16);
            ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
            ip.set_hop_limit(255);
            ip.set_source(vip);
            ip.set_destination(all_nodes);
            ip.set_payload(&icmp);
        }
    }
    buf
}

/// The frames of one announcement of `vip`: both gratuitous ARP forms, or one unsolicited NA.
pub fn announcement_frames(mac: MacAddr, vip: IpAddr) -> Vec<Vec<u8>> {
    match vip {
        IpAddr::V4(v4) => vec![
            garp_frame(mac, v4, GarpForm::Request),
            garp_frame(mac, v4, GarpForm::Reply),
        ],
        IpAddr::V6(v6) => vec![na_frame(mac, v6)],
    }
}

/// Sends `frames` on interface `name` through a fresh `AF_PACKET` socket (needs CAP_NET_RAW).
pub fn send_frames(name: &str, frames: &[Vec<u8>]) -> Result<(), ShellError> {
    let iface = interface(name)?;
    let config = Config {
        promiscuous: false,
        ..Config::default()
    };
    let err = |source| ShellError::Datalink {
        interface: name.to_string(),
        source,
    };
    let mut tx = match pnet_datalink::channel(&iface, config).map_err(err)? {
        Channel::Ethernet(tx, _rx) => tx,
        _ => {
            return Err(err(std::io::Error::other("not an Ethernet channel")));
        }
    };
    for frame in frames {
        match tx.send_to(frame, None) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(err(e)),
            None => return Err(err(std::io::Error::other("frame did not fit the write buffer"))),
        }
    }
    Ok(())
}

/// Sends one announcement of `vip` on interface `name` (gratuitous ARP in both forms, or an
/// unsolicited NA). Returns the MAC it announced.
pub fn send_announcement(name: &str, vip: IpAddr) -> Result<MacAddr, ShellError> {
    let mac = interface(name)?
        .mac
        .filter(|m| !m.is_zero())
        .ok_or_else(|| ShellError::NoMac {
            interface: name.to_string(),
        })?;
    send_frames(name, &announcement_frames(mac, vip))?;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use pnet_packet::Packet;
    use pnet_packet::arp::ArpPacket;
    use pnet_packet::ethernet::EthernetPacket;
    use pnet_packet::icmpv6::ndp::NeighborAdvertPacket;
    use pnet_packet::ipv6::Ipv6Packet;

    use super::*;

    const MAC: MacAddr = MacAddr(2, 0, 0, 0, 0, 7);

    #[test]
    fn garp_request_and_reply() {
        let vip = Ipv4Addr::new(10, 0, 0, 9);
        for (form, op, tha) in [
            (GarpForm::Request, ArpOperations::Request, MacAddr::zero()),
            (GarpForm::Reply, ArpOperations::Reply, MAC),
        ] {
            let f = garp_frame(MAC, vip, form);
            let eth = EthernetPacket::new(&f).unwrap();
            assert_eq!(eth.get_destination(), MacAddr::broadcast());
            assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
            let arp = ArpPacket::new(eth.payload()).unwrap();
            assert_eq!(arp.get_operation(), op);
            assert_eq!(arp.get_sender_proto_addr(), vip);
            assert_eq!(arp.get_target_proto_addr(), vip);
            assert_eq!(arp.get_sender_hw_addr(), MAC);
            assert_eq!(arp.get_target_hw_addr(), tha);
        }
    }

    #[test]
    fn unsolicited_na() {
        let vip: Ipv6Addr = "fd00::9".parse().unwrap();
        let f = na_frame(MAC, vip);
        let eth = EthernetPacket::new(&f).unwrap();
        assert_eq!(eth.get_destination(), MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
        let ip = Ipv6Packet::new(eth.payload()).unwrap();
        assert_eq!(ip.get_hop_limit(), 255);
        assert_eq!(ip.get_destination(), "ff02::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(usize::from(ip.get_payload_length()), NA_LEN);
        let na = NeighborAdvertPacket::new(ip.payload()).unwrap();
        assert_eq!(na.get_icmpv6_type(), Icmpv6Types::NeighborAdvert);
        assert_eq!(na.get_flags(), NeighborAdvertFlags::Override);
        assert_eq!(na.get_target_addr(), vip);
        let opts = na.get_options();
        assert_eq!(opts.len(), 1);
        assert_eq!(opts[0].option_type, NdpOptionTypes::TargetLLAddr);
        assert_eq!(opts[0].data, MAC.octets().to_vec());
        let icmp = Icmpv6Packet::new(ip.payload()).unwrap();
        assert_eq!(checksum(&icmp, &vip, &ip.get_destination()), na.get_checksum());
        assert_ne!(na.get_checksum(), 0);
    }
}
