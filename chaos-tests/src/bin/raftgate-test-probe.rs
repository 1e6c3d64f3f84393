//! `raftgate-test-probe`: one new HTTP/1.1 connection per interval, one result line per attempt, for fault tests.

use raftgate_chaos_tests::cli;
use raftgate_chaos_tests::cli::Flags;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

const USAGE: &str = "usage: raftgate-test-probe --url http://IP:PORT/PATH [--host HOST] [--interval-ms 20]
                           [--timeout-ms 200] [--count N] [--epoch] [--end-time] [--serial] [--json]

Every interval, starts an attempt on a NEW TCP connection (attempts overlap when one takes longer
than the interval): `GET PATH HTTP/1.1` with `Host: HOST` (default: the URL's IP:PORT) and
`Connection: close`, read until the server closes. Prints one line per attempt on stdout, flushed,
as it ends:
  <ms> ok <status> <first body line>
  <ms> err <reason>
where <ms> is when the attempt started, in milliseconds since the probe started (with --epoch:
since the Unix epoch, so that several observers share one clock; lines of overlapping attempts
may come out of order). With --end-time, <ms> is when the attempt ended instead: what a status
poller wants, since an answer tells the state when it was given, not when it was asked for (a
stopped server answers, once continued, requests sent long before). With --serial, an attempt
starts only once the one before has ended (ticks missed meanwhile are skipped): every answer was
given after the previous one was received, so two answers are never in doubt about their order
(a status poller, whose versions must not seem to go back). With --json the body is read as JSON and printed whole on its line,
compact (a status poller). The whole attempt must end within the timeout. Runs until killed,
or until N attempts have ended.
";

/// Responses larger than this are cut (only the status line and the first body line matter).
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    interval: Duration,
    timeout: Duration,
    count: Option<u64>,
    epoch: bool,
    end_time: bool,
    serial: bool,
    json: bool,
}

fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or(format!("--url {url:?}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .map_err(|e| format!("--url {url:?}: {authority:?} is not IP:PORT ([IPv6]:PORT): {e}"))?;
    Ok((addr, authority.to_string(), path.to_string()))
}

fn parse_args() -> Result<Option<Args>, String> {
    let (mut url, mut host, mut interval, mut timeout, mut count) = (None, None, 20, 200, None);
    let (mut epoch, mut end_time, mut serial, mut json) = (false, false, false, false);
    let mut flags = Flags::from_env();
    while let Some(mut flag) = flags.next_flag() {
        match flag.name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => url = Some(flag.value(&mut flags)?),
            "--host" => host = Some(flag.value(&mut flags)?),
            "--interval-ms" => interval = flag.number(&mut flags)?,
            "--timeout-ms" => timeout = flag.number(&mut flags)?,
            "--count" => count = Some(flag.number(&mut flags)?),
            "--epoch" => epoch = true,
            "--end-time" => end_time = true,
            "--serial" => serial = true,
            "--json" => json = true,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or(format!("--url is required\n{USAGE}"))?;
    let (addr, authority, path) = parse_url(&url)?;
    if interval == 0 || timeout == 0 {
        return Err("--interval-ms and --timeout-ms must be above 0".into());
    }
    Ok(Some(Args {
        addr,
        host: host.unwrap_or(authority),
        path,
        interval: Duration::from_millis(interval),
        timeout: Duration::from_millis(timeout),
        count,
        epoch,
        end_time,
        serial,
        json,
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match cli::args_or_exit("raftgate-test-probe", USAGE, parse_args()) {
        Ok(args) => cli::exit("raftgate-test-probe", run(args).await),
        Err(code) => code,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let start = Instant::now();
    let origin_ms = if args.epoch {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    } else {
        0
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let printer = tokio::task::spawn_blocking(move || {
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.blocking_recv() {
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| format!("stdout: {e}"))?;
        }
        Ok::<(), String>(())
    });
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: raftgate-test-probe\r\nConnection: close\r\n\r\n",
        args.path, args.host
    );
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut started = 0u64;
    while args.count.is_none_or(|n| started < n) {
        let tick = ticks.tick().await;
        if tx.is_closed() {
            break; // stdout is gone
        }
        let at_ms = origin_ms + tick.saturating_duration_since(start).as_millis();
        let (tx, request, addr, deadline) = (tx.clone(), request.clone(), args.addr, tick + args.timeout);
        let (json, end_time) = (args.json, args.end_time);
        let one = async move {
            let result = attempt(addr, &request, deadline, json).await;
            let at_ms = if end_time {
                origin_ms + start.elapsed().as_millis()
            } else {
                at_ms
            };
            let line = match result {
                Ok((status, body)) => format!("{at_ms} ok {status} {body}"),
                Err(reason) => format!("{at_ms} err {reason}"),
            };
            let _ = tx.send(line);
        };
        if args.serial {
            one.await;
        } else {
            tokio::spawn(one);
        }
        started += 1;
    }
    // The printer ends once every attempt has sent its line and dropped its sender.
    drop(tx);
    printer.await.map_err(|e| e.to_string())?
}

/// One attempt: connect, send, read until the server closes; all before `deadline`.
async fn attempt(addr: SocketAddr, request: &str, deadline: Instant, json: bool) -> Result<(u16, String), String> {
    let timed_out = |phase: &str| format!("timeout ({phase})");
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connect"))?
        .map_err(|e| format!("connect: {e}"))?;
    tokio::time::timeout_at(deadline, stream.write_all(request.as_bytes()))
        .await
        .map_err(|_| timed_out("write"))?
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .map_err(|_| {
                if response.is_empty() {
                    timed_out("waiting for the response")
                } else {
                    timed_out("reading the response")
                }
            })?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.len() >= MAX_RESPONSE {
            break;
        }
    }
    parse_response(&response, json)
}

/// The status and the first line of the body of a whole HTTP/1.1 response (with `json`, the
/// whole body as compact JSON when it is JSON).
fn parse_response(response: &[u8], json: bool) -> Result<(u16, String), String> {
    if response.is_empty() {
        return Err("closed without a response".into());
    }
    let text = String::from_utf8_lossy(response);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {:?}", status_line.chars().take(80).collect::<String>()))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    // A chunked body starts with the first chunk's size line; the data follows it.
    let body = if chunked {
        body.split_once("\r\n").map_or("", |(_, rest)| rest)
    } else {
        body
    };
    if json && let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        return Ok((status, v.to_string()));
    }
    let first = body.lines().next().unwrap_or_default();
    Ok((status, first.chars().filter(|c| !c.is_control()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let (addr, authority, path) = parse_url("http://10.99.0.100:8080/").unwrap();
        assert_eq!(
            (addr.to_string(), authority.as_str(), path.as_str()),
            ("10.99.0.100:8080".into(), "10.99.0.100:8080", "/")
        );
        let (addr, _, path) = parse_url("http://[fd99::100]:8080/a/b?c").unwrap();
        assert_eq!((addr.to_string(), path.as_str()), ("[fd99::100]:8080".into(), "/a/b?c"));
        assert_eq!(parse_url("http://[fd99::100]:8080").unwrap().2, "/");
        assert!(parse_url("https://10.0.0.1:1/").is_err());
        assert!(parse_url("http://name:80/").is_err());
    }

    #[test]
    fn responses_parse() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nbackend\n";
        assert_eq!(parse_response(plain, false), Ok((200, "backend".into())));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nno route\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false), Ok((503, "no route".into())));
        assert_eq!(
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok((204, String::new()))
        );
        assert!(parse_response(b"", false).is_err());
        assert!(parse_response(b"garbage", false).is_err());
        let status = b"HTTP/1.1 200 OK\r\ncontent-length: 21\r\n\r\n{\n  \"ready\": true\n}\n";
        assert_eq!(parse_response(status, true), Ok((200, r#"{"ready":true}"#.into())));
        assert_eq!(parse_response(status, false), Ok((200, "{".into())));
    }
}
