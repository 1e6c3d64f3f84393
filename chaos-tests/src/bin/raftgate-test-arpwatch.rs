//! `raftgate-test-arpwatch`: asks "who has VIP?" every interval and prints every ARP answer and announcement for the VIPs, for chaos tests.

use std::io::Write;
use std::net::Ipv4Addr;
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
use raftgate_chaos_tests::cli::Flags;

const USAGE: &str = "usage: raftgate-test-arpwatch --interface IF --vip IPv4 [--vip IPv4 ...] [--interval-ms 20]

Every interval, broadcasts an ARP request \"who has VIP?\" for each VIP from IF's own address,
and prints, for every ARP packet on IF whose sender address is a VIP:
  <ms> whohas <vip>            (a request this program sent)
  <ms> reply <vip> <mac>       (an answer: an ARP reply to a request)
  <ms> announce <vip> <mac>    (gratuitous: a request or broadcast reply about the sender itself)
<ms> is milliseconds since the Unix epoch, so that several observers share one clock. Runs
until killed. Needs CAP_NET_RAW. IPv4 only.
";

#[derive(Debug)]
struct Args {
    interface: String,
    vips: Vec<Ipv4Addr>,
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
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("raftgate-test-arpwatch: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftgate-test-arpwatch: {e}");
            ExitCode::FAILURE
        }
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
    let own = iface
        .ips
        .iter()
        .find_map(|n| match n.ip() {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        })
        .ok_or(format!("{} has no IPv4 address", args.interface))?;
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
    let requests: Vec<(Ipv4Addr, [u8; 42])> = args.vips.iter().map(|v| (*v, who_has(mac, own, *v))).collect();
    let (sender_out, interval) = (out.clone(), args.interval);
    std::thread::spawn(move || -> Result<(), String> {
        let mut next = Instant::now();
        loop {
            for (vip, frame) in &requests {
                match tx.send_to(frame, None) {
                    Some(Ok(())) => say(&sender_out, &format!("{} whohas {vip}", now_ms()))?,
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
        if eth.get_ethertype() != EtherTypes::Arp {
            continue;
        }
        let Some(arp) = ArpPacket::new(eth.payload()) else {
            continue;
        };
        let sender = arp.get_sender_proto_addr();
        if !args.vips.contains(&sender) {
            continue;
        }
        let gratuitous = arp.get_target_proto_addr() == sender || eth.get_destination() == MacAddr::broadcast();
        let kind = match arp.get_operation() {
            ArpOperations::Reply if !gratuitous => "reply",
            ArpOperations::Reply | ArpOperations::Request if gratuitous => "announce",
            _ => continue,
        };
        say(&out, &format!("{at} {kind} {sender} {}", arp.get_sender_hw_addr()))?;
    }
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
