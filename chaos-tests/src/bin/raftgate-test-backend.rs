//! `raftgate-test-backend`: an HTTP/1.1 server answering every request 200 with its name, for fault tests.

use raftgate_chaos_tests::cli::Flags;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::Response;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const USAGE: &str = "usage: raftgate-test-backend --listen ADDR [--name NAME]

Serves HTTP/1.1 on ADDR until killed, answering every request 200 with the body `NAME\\n`
(default name: backend). Prints `listening on ADDR` on stdout once bound.
";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    name: String,
}

fn parse_args() -> Result<Option<Args>, String> {
    let (mut listen, mut name) = (None, "backend".to_string());
    let mut flags = Flags::from_env();
    while let Some(mut flag) = flags.next_flag() {
        match flag.name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => listen = Some(flag.parsed(&mut flags)?),
            "--name" => name = flag.value(&mut flags)?,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or(format!("--listen is required\n{USAGE}"))?;
    Ok(Some(Args { listen, name }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftgate-test-backend: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let Some(args) = parse_args()? else {
        return std::io::stdout().write_all(USAGE.as_bytes()).map_err(|e| e.to_string());
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    let body = Bytes::from(format!("{}\n", args.name));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors and the like: report and go on accepting.
                eprintln!("raftgate-test-backend: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    let mut resp = Response::new(Full::new(body));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
