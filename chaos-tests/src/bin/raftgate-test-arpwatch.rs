//! `raftgate-test-arpwatch`: asks "who has VIP?" every interval (ARP, or IPv6 neighbour solicitation) and prints every answer and announcement for the VIPs, for chaos tests.

use std::io::Write;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use pnet_datalink::Channel;
use pnet_datalink::MacAddr;
use pnet_packet::MutablePacket;
use pnet_packet::Packet;
use pnet_packet::arp::ArpHardwareTypes;
use pnet_packet::arp::ArpOperations;
use pnet_packet::arp::ArpPacket;
use pnet_packet::arp::MutableArpPacket;
use pnet_packet::ethernet::EtherTypes;
use pnet_packet::ethernet::EthernetPacket;
use pnet_packet::ethernet::MutableEthernetPacket;
use raftgate_chaos_tests::cli;
use raftgate_chaos_tests::cli::Flags;

const USAGE: &str = "usage: raftgate-test-arpwatch --interface IF --vip ADDR [--vip ADDR ...] [--interval-ms 20]

Every interval, asks \"who has VIP?\" for each VIP from IF's own address: a broadcast ARP
request for an IPv4 VIP, a neighbour solicitation to its solicited-node multicast group for
an IPv6 one. Prints, for every ARP packet whose sender address is a VIP and every neighbour
advertisement whose target is one:
  <ms> whohas <vip>            (a request this program sent)
  <ms> reply <vip> <mac>       (an answer: an ARP reply, a solicited advertisement)
  <ms> announce <vip> <mac>    (unasked: a gratuitous ARP, an unsolicited advertisement)
<ms> is milliseconds since the Unix epoch, so that several observers share one clock. Runs
until killed. Needs CAP_NET_RAW.
";

#[derive(Debug)]
struct Args {
    interface: String,
    vips: Vec<IpAddr>,
    interval: Duration,
}

fn parse_args() -> Result<Option<Args>, String> {
    let (mut interface, mut vips, mut interval) = (None, Vec::new(), 20u64);
    let mut flags = Flags::from_env();
    while let Some(mut flag) = flags.next_flag() {
        match flag.name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--interface" => interface = Some(flag.value(&mut flags)?),
            "--vip" => {
                let v = flag.value(&mut flags)?;
                vips.push(v.parse().map_err(|e| format!("--vip {v:?}: {e}"))?);
            }
            "--interval-ms" => interval = flag.number(&mut flags)?,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let interface = interface.ok_or(format!("--interface is required\n{USAGE}"))?;
    if vips.is_empty() || interval == 0 {
        return Err(format!("at least one --vip, and --interval-ms above 0\n{USAGE}"));
    }
    Ok(Some(Args {
        interface,
        vips,
        interval: Duration::from_millis(interval),
    }))
}

fn main() -> ExitCode {
    match cli::args_or_exit("raftgate-test-arpwatch", USAGE, parse_args()) {
        Ok(args) => cli::exit("raftgate-test-arpwatch", run(&args)),
        Err(code) => code,
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// One line on stdout, flushed, from either thread.
fn say(out: &Mutex<std::io::Stdout>, line: &str) -> Result<(), String> {
    let out = out.lock().map_err(|_| "stdout lock poisoned".to_string())?;
    let mut out = out.lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

fn run(args: &Args) -> Result<(), String> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == args.interface)
        .ok_or(format!("no interface {}", args.interface))?;
    let mac = iface.mac.ok_or(format!("{} has no MAC address", args.interface))?;
    let own4 = iface.ips.iter().find_map(|n| match n.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    // A global address if it has one (the test segment's `fd99::/64`), else its link-local one.
    let own6 = iface
        .ips
        .iter()
        .filter_map(|n| match n.ip() {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        })
        .min_by_key(|a| a.segments()[0] == 0xfe80);
    let mut requests: Vec<(IpAddr, Vec<u8>)> = Vec::new();
    for vip in &args.vips {
        let frame = match (vip, own4, own6) {
            (IpAddr::V4(v), Some(own), _) => who_has(mac, own, *v).to_vec(),
            (IpAddr::V6(v), _, Some(own)) => neighbour_solicitation(mac, own, *v),
            _ => return Err(format!("{} has no address of {vip}'s family", args.interface)),
        };
        requests.push((*vip, frame));
    }
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let (mut tx, mut rx) = match pnet_datalink::channel(&iface, config) {
        Ok(Channel::Ethernet(tx, rx)) => (tx, rx),
        Ok(_) => return Err("not an Ethernet channel".into()),
        Err(e) => return Err(format!("open {}: {e}", args.interface)),
    };
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let (sender_out, interval) = (out.clone(), args.interval);
    std::thread::spawn(move || -> Result<(), String> {
        let mut next = Instant::now();
        loop {
            for (vip, frame) in &requests {
                // Stamped before it is sent: a reply, stamped by the other thread as it comes in,
                // must never seem to precede its request.
                let at = now_ms();
                match tx.send_to(frame, None) {
                    Some(Ok(())) => say(&sender_out, &format!("{at} whohas {vip}"))?,
                    Some(Err(e)) => eprintln!("raftgate-test-arpwatch: send: {e}"),
                    None => return Err("the channel cannot send".into()),
                }
            }
            next += interval;
            // A missed tick is skipped, not caught up.
            let now = Instant::now();
            if next <= now {
                next = now + interval;
            }
            pace(next - now);
        }
    });
    loop {
        let frame = match rx.next() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(format!("receive: {e}")),
        };
        let at = now_ms();
        let Some(eth) = EthernetPacket::new(frame) else {
            continue;
        };
        let seen = match eth.get_ethertype() {
            EtherTypes::Arp => arp_seen(&eth),
            EtherTypes::Ipv6 => neighbour_advertisement(eth.payload()).map(|na| {
                let mac = na.mac.unwrap_or_else(|| eth.get_source());
                let kind = if na.solicited { "reply" } else { "announce" };
                (kind, IpAddr::V6(na.target), mac)
            }),
            _ => None,
        };
        if let Some((kind, vip, mac)) = seen
            && args.vips.contains(&vip)
        {
            say(&out, &format!("{at} {kind} {vip} {mac}"))?;
        }
    }
}

/// What an ARP frame says about its sender: `reply` to a request, or `announce` (gratuitous).
fn arp_seen(eth: &EthernetPacket<'_>) -> Option<(&'static str, IpAddr, MacAddr)> {
    let arp = ArpPacket::new(eth.payload())?;
    let sender = arp.get_sender_proto_addr();
    let gratuitous = arp.get_target_proto_addr() == sender || eth.get_destination() == MacAddr::broadcast();
    let kind = match arp.get_operation() {
        ArpOperations::Reply if !gratuitous => "reply",
        ArpOperations::Reply | ArpOperations::Request if gratuitous => "announce",
        _ => return None,
    };
    Some((kind, IpAddr::V4(sender), arp.get_sender_hw_addr()))
}

/// ICMPv6's next-header number.
const ICMPV6: u8 = 58;
/// The neighbour solicitation and advertisement message types.
const NS: u8 = 135;
const NA: u8 = 136;

/// A neighbour advertisement: its target, whether it answers a solicitation, and the link-layer
/// address its target option gives.
#[derive(Debug, PartialEq, Eq)]
struct Advertisement {
    target: Ipv6Addr,
    solicited: bool,
    mac: Option<MacAddr>,
}

/// Reads an IPv6 packet (no extension headers, as neighbour discovery sends them) that carries a
/// neighbour advertisement.
fn neighbour_advertisement(ip: &[u8]) -> Option<Advertisement> {
    if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != ICMPV6 {
        return None;
    }
    let icmp = &ip[40..];
    if icmp.len() < 24 || icmp[0] != NA || icmp[1] != 0 {
        return None;
    }
    let target: [u8; 16] = icmp[8..24].try_into().ok()?;
    let mut mac = None;
    let mut options = &icmp[24..];
    // Options: type, length in units of 8 bytes (0 is malformed), data.
    while options.len() >= 8 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            break;
        }
        if options[0] == 2 && len == 8 {
            mac = Some(MacAddr::new(
                options[2], options[3], options[4], options[5], options[6], options[7],
            ));
        }
        options = &options[len..];
    }
    Some(Advertisement {
        target: Ipv6Addr::from(target),
        solicited: icmp[4] & 0x40 != 0,
        mac,
    })
}

/// A neighbour solicitation for `vip` from `mac`/`own`, to `vip`'s solicited-node multicast group.
fn neighbour_solicitation(mac: MacAddr, own: Ipv6Addr, vip: Ipv6Addr) -> Vec<u8> {
    let v = vip.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(v[13]),
        u16::from_be_bytes([v[14], v[15]]),
    );
    // ICMPv6: type, code, checksum, reserved, target, source link-layer address option.
    let mut icmp = vec![NS, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&v);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&mac.octets());
    let sum = icmpv6_checksum(own, group, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + 40 + icmp.len());
    frame.extend_from_slice(&[0x33, 0x33, 0xff, v[13], v[14], v[15]]);
    frame.extend_from_slice(&mac.octets());
    frame.extend_from_slice(&[0x86, 0xdd]);
    // IPv6: version 6, no traffic class or flow label, payload length, ICMPv6, hop limit 255.
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&u16::try_from(icmp.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&[ICMPV6, 255]);
    frame.extend_from_slice(&own.octets());
    frame.extend_from_slice(&group.octets());
    frame.extend_from_slice(&icmp);
    frame
}

/// The ICMPv6 checksum: the one's complement sum over the pseudo-header and the message.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Waits until the next request is due: this thread only paces a packet generator.
#[allow(clippy::disallowed_methods, reason = "pacing a packet generator's own thread")]
fn pace(d: Duration) {
    std::thread::sleep(d);
}

/// A broadcast ARP request for `vip` from `mac`/`own`.
fn who_has(mac: MacAddr, own: Ipv4Addr, vip: Ipv4Addr) -> [u8; 42] {
    let mut buf = [0u8; 42];
    if let Some(mut eth) = MutableEthernetPacket::new(&mut buf) {
        eth.set_destination(MacAddr::broadcast());
        eth.set_source(mac);
        eth.set_ethertype(EtherTypes::Arp);
        if let Some(mut arp) = MutableArpPacket::new(eth.payload_mut()) {
            arp.set_hardware_type(ArpHardwareTypes::Ethernet);
            arp.set_protocol_type(EtherTypes::Ipv4);
            arp.set_hw_addr_len(6);
            arp.set_proto_addr_len(4);
            arp.set_operation(ArpOperations::Request);
            arp.set_sender_hw_addr(mac);
            arp.set_sender_proto_addr(own);
            arp.set_target_hw_addr(MacAddr::zero());
            arp.set_target_proto_addr(vip);
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbour_solicitation_pnet_reads_with_a_valid_checksum() {
        use pnet_packet::icmpv6::Icmpv6Packet;
        use pnet_packet::icmpv6::ndp::NeighborSolicitPacket;
        use pnet_packet::ipv6::Ipv6Packet;
        let mac = MacAddr::new(2, 0, 0, 0, 0, 9);
        let (own, vip): (Ipv6Addr, Ipv6Addr) = ("fd99::201".parse().unwrap(), "fd99::100".parse().unwrap());
        let frame = neighbour_solicitation(mac, own, vip);
        let eth = EthernetPacket::new(&frame).unwrap();
        assert_eq!(eth.get_destination(), MacAddr::new(0x33, 0x33, 0xff, 0, 1, 0));
        assert_eq!(eth.get_ethertype(), EtherTypes::Ipv6);
        let ip = Ipv6Packet::new(eth.payload()).unwrap();
        assert_eq!(ip.get_destination(), "ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.get_hop_limit(), 255);
        assert_eq!(usize::from(ip.get_payload_length()), ip.payload().len());
        let icmp = Icmpv6Packet::new(ip.payload()).unwrap();
        assert_eq!(
            icmp.get_checksum(),
            pnet_packet::icmpv6::checksum(&icmp, &own, &ip.get_destination())
        );
        let ns = NeighborSolicitPacket::new(ip.payload()).unwrap();
        assert_eq!(ns.get_target_addr(), vip);
    }

    #[test]
    fn neighbour_advertisements_give_target_kind_and_mac() {
        let na = |flags: u8, options: &[u8]| {
            let mut ip = vec![0x60, 0, 0, 0, 0, 0, ICMPV6, 255];
            ip.extend_from_slice(&[0; 32]);
            ip.extend_from_slice(&[NA, 0, 0, 0, flags, 0, 0, 0]);
            ip.extend_from_slice(&"fd99::100".parse::<Ipv6Addr>().unwrap().octets());
            ip.extend_from_slice(options);
            neighbour_advertisement(&ip)
        };
        let mac = [2, 1, 2, 3, 4, 5];
        let option = [&[2u8, 1][..], &mac[..]].concat();
        let solicited = na(0x40 | 0x20, &option).unwrap();
        assert_eq!(solicited.target, "fd99::100".parse::<Ipv6Addr>().unwrap());
        assert!(solicited.solicited);
        assert_eq!(solicited.mac, Some(MacAddr::new(2, 1, 2, 3, 4, 5)));
        let unsolicited = na(0x20, &option).unwrap();
        assert!(!unsolicited.solicited);
        assert_eq!(na(0x40, &[]).unwrap().mac, None);
        // A zero-length option ends the reading rather than looping.
        assert_eq!(na(0x40, &[2, 0, 0, 0, 0, 0, 0, 0]).unwrap().mac, None);
        assert_eq!(neighbour_advertisement(&[0x60; 20]), None);
    }

    #[test]
    fn who_has_is_a_broadcast_arp_request_for_the_vip() {
        let mac = MacAddr::new(2, 0, 0, 0, 0, 9);
        let frame = who_has(mac, Ipv4Addr::new(10, 99, 0, 201), Ipv4Addr::new(10, 99, 0, 100));
        let eth = EthernetPacket::new(&frame).unwrap();
        assert_eq!(eth.get_destination(), MacAddr::broadcast());
        assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
        let arp = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(arp.get_operation(), ArpOperations::Request);
        assert_eq!(arp.get_sender_hw_addr(), mac);
        assert_eq!(arp.get_sender_proto_addr(), Ipv4Addr::new(10, 99, 0, 201));
        assert_eq!(arp.get_target_proto_addr(), Ipv4Addr::new(10, 99, 0, 100));
    }
}
