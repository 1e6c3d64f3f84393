//! `l4load`: the echo upstreams and the load generator of bench/l4.sh (see bench/README.md).
//!
//! ```text
//! l4load tcp-echo ADDR                 TCP echo server (echoes until the client's EOF)
//! l4load udp-echo ADDR                 UDP echo server (each datagram back to its sender)
//! l4load tcp-conn TARGET [options]     new connection per operation: connect, send SIZE
//!                                      bytes, read the echo, close
//!     --concurrency N (64) --duration SECS (10) --size BYTES (16)
//! l4load probe-tcp TARGET              exit 0 if TARGET echoes 5 bytes within 1 s
//! l4load probe-udp TARGET              exit 0 if TARGET echoes a datagram within 1 s
//! l4load udp TARGET [options]          N client sockets (N client addresses), each with
//!                                      WINDOW datagrams in flight; a reply sends the next
//!     --clients N (64) --window W (2) --duration SECS (10) --size BYTES (64)
//!     --timeout-ms MS (200): no reply for this long counts as a loss; the client sends a
//!     fresh window and ignores late replies to the old one
//! ```
//!
//! Everything runs on one thread (a current-thread tokio runtime), so `taskset -c N`
//! keeps it on one core. The load commands print one line
//! `RESULT ops=.. secs=.. rate=.. p50_us=.. p99_us=.. errors=.. detail=..` last, where
//! `ops` are operations completed within the duration (connections for tcp-conn, replies
//! for udp) and `errors` counts failed operations (udp: timeouts).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tokio::net::UdpSocket;

/// Time allowed for one TCP operation (connect, write, read the echo).
const OP_TIMEOUT: Duration = Duration::from_secs(5);

fn usage() -> ExitCode {
    eprintln!(
        "usage: l4load tcp-echo ADDR | udp-echo ADDR\n\
         \x20      l4load probe-tcp TARGET | probe-udp TARGET\n\
         \x20      l4load tcp-conn TARGET [--concurrency N] [--duration SECS] [--size BYTES]\n\
         \x20      l4load udp TARGET [--clients N] [--window W] [--duration SECS] [--size BYTES] [--timeout-ms MS]"
    );
    ExitCode::from(2)
}

/// `--name value` options after the positional address.
struct Opts(BTreeMap<String, u64>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut m = BTreeMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let name = k
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {k:?}"))?;
            let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
            let n = v
                .parse::<u64>()
                .map_err(|_| format!("{k}: not a whole number: {v:?}"))?;
            m.insert(name.to_string(), n);
        }
        Ok(Opts(m))
    }

    fn get(&mut self, name: &str, default: u64) -> u64 {
        self.0.remove(name).unwrap_or(default)
    }

    fn finish(self) -> Result<(), String> {
        match self.0.keys().next() {
            Some(k) => Err(format!("unknown option --{k}")),
            None => Ok(()),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return usage();
    }
    let addr: SocketAddr = match args[1].parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("l4load: {:?} is not an address like 127.0.0.1:18100", args[1]);
            return usage();
        }
    };
    let mut opts = match Opts::parse(&args[2..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("l4load: {e}");
            return usage();
        }
    };
    let result = match args[0].as_str() {
        "tcp-echo" => opts.finish().map(|()| tcp_echo(addr)),
        "udp-echo" => opts.finish().map(|()| udp_echo(addr)),
        "probe-tcp" => opts.finish().map(|()| probe_tcp(addr)),
        "probe-udp" => opts.finish().map(|()| probe_udp(addr)),
        "tcp-conn" => {
            let c = opts.get("concurrency", 64);
            let d = opts.get("duration", 10);
            let s = opts.get("size", 16);
            opts.finish().map(|()| tcp_conn(addr, c, d, s))
        }
        "udp" => {
            let c = opts.get("clients", 64);
            let w = opts.get("window", 2);
            let d = opts.get("duration", 10);
            let s = opts.get("size", 64);
            let t = opts.get("timeout-ms", 200);
            opts.finish().map(|()| udp_load(addr, c, w, d, s, t))
        }
        _ => return usage(),
    };
    let fut = match result {
        Ok(f) => f,
        Err(e) => {
            eprintln!("l4load: {e}");
            return usage();
        }
    };
    match fut.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("l4load: {e}");
            ExitCode::FAILURE
        }
    }
}

type Job = std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>>>>;

// ---------------------------------------------------------------------------------------------
// Upstreams

fn tcp_echo(addr: SocketAddr) -> Job {
    Box::pin(async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        eprintln!("l4load: TCP echo on {addr}");
        loop {
            let (mut s, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("l4load: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

fn udp_echo(addr: SocketAddr) -> Job {
    Box::pin(async move {
        let socket = UdpSocket::bind(addr).await?;
        eprintln!("l4load: UDP echo on {addr}");
        let mut buf = vec![0u8; 65_535];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    let _ = socket.send_to(&buf[..n], from).await;
                }
                // ICMP errors from earlier sends to clients that have gone.
                Err(_) => continue,
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Readiness probes: one echo through whatever listens on the address.

const PROBE: &[u8] = b"probe";

fn probe_tcp(target: SocketAddr) -> Job {
    Box::pin(async move {
        let op = async {
            let mut s = TcpStream::connect(target).await?;
            s.write_all(PROBE).await?;
            let mut buf = [0u8; PROBE.len()];
            s.read_exact(&mut buf).await?;
            if buf != PROBE {
                return Err(io::Error::other("wrong echo"));
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(1), op)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo within 1 s"))?
    })
}

fn probe_udp(target: SocketAddr) -> Job {
    Box::pin(async move {
        let s = UdpSocket::bind("127.0.0.1:0").await?;
        s.connect(target).await?;
        s.send(PROBE).await?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), s.recv(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo within 1 s"))??;
        if &buf[..n] != PROBE {
            return Err(io::Error::other("wrong echo"));
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Load

/// What one task measured.
#[derive(Default)]
struct Stats {
    ops: u64,
    /// Latency of each completed operation, in microseconds.
    lat_us: Vec<u32>,
    /// Failed operations by kind.
    errors: BTreeMap<String, u64>,
    /// udp: datagrams sent, late replies (to a window given up on).
    sent: u64,
    late: u64,
}

impl Stats {
    fn error(&mut self, what: &str, e: &io::Error) {
        *self.errors.entry(format!("{what}:{:?}", e.kind())).or_default() += 1;
    }

    fn merge(&mut self, o: Stats) {
        self.ops += o.ops;
        self.lat_us.extend(o.lat_us);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.sent += o.sent;
        self.late += o.late;
    }

    fn report(mut self, secs: f64, extra: &str) {
        self.lat_us.sort_unstable();
        let pct = |p: f64| -> u32 {
            if self.lat_us.is_empty() {
                return 0;
            }
            let i = ((self.lat_us.len() as f64 * p).ceil() as usize).clamp(1, self.lat_us.len());
            self.lat_us[i - 1]
        };
        let errors: u64 = self.errors.values().sum();
        let detail = if self.errors.is_empty() {
            "-".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "RESULT ops={} secs={secs:.3} rate={:.0} p50_us={} p99_us={} errors={errors} detail={detail}{extra}",
            self.ops,
            self.ops as f64 / secs,
            pct(0.50),
            pct(0.99),
        );
    }
}

fn tcp_conn(target: SocketAddr, concurrency: u64, duration: u64, size: u64) -> Job {
    Box::pin(async move {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(duration);
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            tasks.push(tokio::spawn(conn_worker(target, size as usize, deadline)));
        }
        let mut total = Stats::default();
        for t in tasks {
            total.merge(t.await.map_err(io::Error::other)?);
        }
        eprintln!("l4load: tcp-conn {target}: {concurrency} clients, {size}-byte echo, {duration}s");
        total.report(duration as f64, "");
        Ok(())
    })
}

async fn conn_worker(target: SocketAddr, size: usize, deadline: Instant) -> Stats {
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut buf = vec![0u8; size];
    let mut st = Stats::default();
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let op = async {
            let mut s = TcpStream::connect(target).await.map_err(|e| ("connect", e))?;
            let _ = s.set_nodelay(true);
            s.write_all(&payload).await.map_err(|e| ("write", e))?;
            s.read_exact(&mut buf).await.map_err(|e| ("read", e))?;
            Ok::<(), (&str, io::Error)>(())
        };
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(())) => {
                let done = Instant::now();
                if buf != payload {
                    *st.errors.entry("mismatch".into()).or_default() += 1;
                } else if done <= deadline {
                    st.ops += 1;
                    st.lat_us.push(done.duration_since(t0).as_micros() as u32);
                }
            }
            Ok(Err((what, e))) => {
                st.error(what, &e);
                // Do not spin on a refused port.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => *st.errors.entry("timeout".into()).or_default() += 1,
        }
    }
    st
}

fn udp_load(target: SocketAddr, clients: u64, window: u64, duration: u64, size: u64, timeout_ms: u64) -> Job {
    Box::pin(async move {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(duration);
        let timeout = Duration::from_millis(timeout_ms.max(1));
        let mut tasks = Vec::new();
        for _ in 0..clients.max(1) {
            let sock = UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(target).await?;
            tasks.push(tokio::spawn(udp_worker(
                sock,
                start,
                deadline,
                window.max(1),
                size.max(12) as usize,
                timeout,
            )));
        }
        let mut total = Stats::default();
        for t in tasks {
            total.merge(t.await.map_err(io::Error::other)?);
        }
        eprintln!("l4load: udp {target}: {clients} clients x {window} in flight, {size}-byte datagrams, {duration}s");
        let extra = format!(" sent={} late={}", total.sent, total.late);
        total.report(duration as f64, &extra);
        Ok(())
    })
}

/// One client address. Each datagram carries the window's epoch (4 bytes) and its send
/// time (8 bytes, ns since `start`); a reply of the current epoch is counted and answered
/// with the next datagram, one of an older epoch (given up on after a timeout) is late.
async fn udp_worker(
    sock: UdpSocket,
    start: Instant,
    deadline: Instant,
    window: u64,
    size: usize,
    timeout: Duration,
) -> Stats {
    let mut st = Stats::default();
    let mut out = vec![0u8; size];
    let mut buf = vec![0u8; 65_535];
    let mut epoch: u32 = 0;
    let mut send = async |epoch: u32, st: &mut Stats| {
        out[..4].copy_from_slice(&epoch.to_le_bytes());
        let ns = start.elapsed().as_nanos() as u64;
        out[4..12].copy_from_slice(&ns.to_le_bytes());
        match sock.send(&out).await {
            Ok(_) => st.sent += 1,
            Err(e) => st.error("send", &e),
        }
    };
    'outer: while Instant::now() < deadline {
        for _ in 0..window {
            send(epoch, &mut st).await;
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                break 'outer;
            }
            let wait = timeout.min(deadline - now);
            match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
                Ok(Ok(n)) if n >= 12 => {
                    let e = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    if e != epoch {
                        st.late += 1;
                        continue;
                    }
                    let mut ns = [0u8; 8];
                    ns.copy_from_slice(&buf[4..12]);
                    let sent_at = Duration::from_nanos(u64::from_le_bytes(ns));
                    let now = start.elapsed();
                    if start + now <= deadline {
                        st.ops += 1;
                        st.lat_us.push(now.saturating_sub(sent_at).as_micros() as u32);
                    }
                    send(epoch, &mut st).await;
                }
                Ok(Ok(_)) => *st.errors.entry("short-reply".into()).or_default() += 1,
                Ok(Err(e)) => {
                    // ECONNREFUSED from an ICMP error: nobody listens (yet). Start over.
                    st.error("recv", &e);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    epoch = epoch.wrapping_add(1);
                    continue 'outer;
                }
                Err(_) if Instant::now() >= deadline => break 'outer,
                Err(_) => {
                    *st.errors.entry("timeout".into()).or_default() += 1;
                    epoch = epoch.wrapping_add(1);
                    continue 'outer;
                }
            }
        }
    }
    st
}
