//! `raftgate-test-delay`: relays Ethernet frames between two interfaces through a delay line each way (packet delay and reordering for fault tests, where the kernel has no netem).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use pnet_datalink::Channel;
use pnet_datalink::DataLinkReceiver;
use pnet_datalink::DataLinkSender;
use pnet_datalink::MacAddr;
use raftgate_chaos_tests::cli;
use raftgate_chaos_tests::cli::Flags;
use raftgate_chaos_tests::delay::DelayLine;
use raftgate_chaos_tests::delay::Micros;

const USAGE: &str = "usage: raftgate-test-delay --node-side IFACE --switch-side IFACE --mac NODE_MAC
                           [--delay-ms 50] [--jitter-ms 0] [--seed 1]

Relays every Ethernet frame between the two interfaces, both ways, each leaving DELAY to
DELAY + JITTER ms after it came in (a seeded random draw per frame, so frames reorder when the
jitter exceeds their spacing). --node-side faces the node whose MAC is NODE_MAC (the frames it
sends come in there), --switch-side faces the bridge. Prints `relaying` once both are open, and
runs until killed.
";

/// Frames waiting in one direction at most (a full queue drops, as a real one does).
const CAPACITY: usize = 10_000;

#[derive(Debug)]
struct Args {
    node_side: String,
    switch_side: String,
    mac: MacAddr,
    delay_ms: u64,
    jitter_ms: u64,
    seed: u64,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut flags = Flags::from_env();
    let (mut node_side, mut switch_side, mut mac) = (None, None, None);
    let (mut delay_ms, mut jitter_ms, mut seed) = (50, 0, 1);
    while let Some(mut f) = flags.next_flag() {
        match f.name.as_str() {
            "--node-side" => node_side = Some(f.value(&mut flags)?),
            "--switch-side" => switch_side = Some(f.value(&mut flags)?),
            "--mac" => mac = Some(f.parsed::<MacAddr>(&mut flags)?),
            "--delay-ms" => delay_ms = f.number(&mut flags)?,
            "--jitter-ms" => jitter_ms = f.number(&mut flags)?,
            "--seed" => seed = f.number(&mut flags)?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Some(Args {
        node_side: node_side.ok_or("--node-side is required")?,
        switch_side: switch_side.ok_or("--switch-side is required")?,
        mac: mac.ok_or("--mac is required")?,
        delay_ms,
        jitter_ms,
        seed,
    }))
}

fn main() -> ExitCode {
    match cli::args_or_exit("raftgate-test-delay", USAGE, parse_args()) {
        Ok(args) => cli::exit("raftgate-test-delay", run(&args)),
        Err(code) => code,
    }
}

/// One interface's sending and receiving ends.
type Ends = (Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>);

fn open(name: &str) -> Result<Ends, String> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or(format!("no interface {name}"))?;
    let config = pnet_datalink::Config {
        promiscuous: true,
        ..Default::default()
    };
    match pnet_datalink::channel(&iface, config) {
        Ok(Channel::Ethernet(tx, rx)) => Ok((tx, rx)),
        Ok(_) => Err(format!("{name}: not an Ethernet channel")),
        Err(e) => Err(format!("open {name}: {e}")),
    }
}

/// One direction's delay line and the condition its sender waits on.
struct Line {
    line: Mutex<DelayLine>,
    ready: Condvar,
}

fn run(args: &Args) -> Result<(), String> {
    let (node_tx, node_rx) = open(&args.node_side)?;
    let (switch_tx, switch_rx) = open(&args.switch_side)?;
    let origin = Instant::now();
    let now = move || -> Micros { u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX) };
    let new_line = |seed: u64| {
        Arc::new(Line {
            line: Mutex::new(DelayLine::new(
                args.delay_ms * 1_000,
                args.jitter_ms * 1_000,
                CAPACITY,
                seed,
            )),
            ready: Condvar::new(),
        })
    };
    // Frames the node sent (its MAC as the source) go from the node side to the switch side;
    // every other frame seen on the switch side goes to the node. An AF_PACKET socket also sees
    // the frames this relay itself sends on an interface: the source MAC tells them apart.
    let mac = args.mac.octets();
    let from_node = move |f: &[u8]| f.get(6..12) == Some(&mac[..]);
    let up = new_line(args.seed);
    let down = new_line(args.seed.wrapping_add(1));
    let threads = vec![
        receive(node_rx, up.clone(), now, from_node),
        receive(switch_rx, down.clone(), now, move |f| !from_node(f)),
        send(switch_tx, up, now),
        send(node_tx, down, now),
    ];
    let mut out = std::io::stdout().lock();
    writeln!(out, "relaying {} <-> {}", args.node_side, args.switch_side)
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    drop(out);
    // The threads end only on an error; the first one ends the relay.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for t in threads {
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let result = t.join().unwrap_or_else(|_| Err("a relay thread panicked".into()));
            let _ = done.send(result);
        });
    }
    done_rx
        .recv()
        .unwrap_or_else(|_| Err("every relay thread ended".into()))
}

type Thread = std::thread::JoinHandle<Result<(), String>>;

fn receive(
    mut rx: Box<dyn DataLinkReceiver>,
    line: Arc<Line>,
    now: impl Fn() -> Micros + Send + 'static,
    wanted: impl Fn(&[u8]) -> bool + Send + 'static,
) -> Thread {
    std::thread::spawn(move || {
        loop {
            let frame = rx.next().map_err(|e| format!("receive: {e}"))?;
            if !wanted(frame) {
                continue;
            }
            let frame = frame.to_vec();
            let mut l = line.line.lock().map_err(|_| "delay line lock poisoned".to_string())?;
            l.push(frame, now());
            line.ready.notify_one();
        }
    })
}

fn send(mut tx: Box<dyn DataLinkSender>, line: Arc<Line>, now: impl Fn() -> Micros + Send + 'static) -> Thread {
    std::thread::spawn(move || {
        let mut l = line.line.lock().map_err(|_| "delay line lock poisoned".to_string())?;
        loop {
            while let Some(frame) = l.pop_due(now()) {
                // A frame the interface refuses (it went down for a moment) is lost, as on a wire.
                let _ = tx.send_to(&frame, None);
            }
            let wait = l.next_due().map_or(Duration::from_millis(100), |due| {
                Duration::from_micros(due.saturating_sub(now()))
            });
            l = line
                .ready
                .wait_timeout(l, wait)
                .map_err(|_| "delay line lock poisoned".to_string())?
                .0;
        }
    })
}
