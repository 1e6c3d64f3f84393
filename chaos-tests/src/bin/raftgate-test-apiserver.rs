//! `raftgate-test-apiserver`: runs the test Kubernetes API server until interrupted, for scripts and benchmarks.

use raftgate_chaos_tests::cli::Flags;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use raftgate_chaos_tests::apiserver::ApiServer;
use raftgate_chaos_tests::apiserver::ApiServerConfig;

const USAGE: &str = "usage: raftgate-test-apiserver [--listen ADDR] [--control-listen ADDR] [--kubeconfig-out PATH]
                               [--bookmark-interval-ms N] [--watch-timeout-s N] [--max-history N]
                               [--load FILE]

Serves a test Kubernetes API over plain HTTP (default --listen 127.0.0.1:0) until SIGINT/SIGTERM.
--load creates the objects of FILE (a JSON array of objects) before the kubeconfig is written.
Prints `listening on http://ADDR` and `control on http://ADDR` on stdout. Faults are driven with
POST /_faults/{refuse-connections,stall}?enabled=BOOL, /_faults/close-watches, /_faults/expire-next-watches?n=N,
/_faults/fail-watches-410?enabled=BOOL, /_faults/compact[?rv=N], /_faults/pause, /_faults/resume,
/_faults/reset, /_faults/bookmark-interval?ms=N; GET /_faults/stats and /_faults/requests
(on either listener; the control listener is never faulted).
";

#[derive(Debug)]
struct Args {
    config: ApiServerConfig,
    kubeconfig_out: Option<std::path::PathBuf>,
    load: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let default_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = ApiServerConfig::new(default_listen);
    config.max_history = Some(100_000);
    let mut kubeconfig_out = None;
    let mut load = None;
    let mut flags = Flags::from_env();
    while let Some(mut flag) = flags.next_flag() {
        match flag.name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => config.listen = flag.parsed(&mut flags)?,
            "--control-listen" => config.control_listen = Some(flag.parsed(&mut flags)?),
            "--kubeconfig-out" => kubeconfig_out = Some(flag.value(&mut flags)?.into()),
            "--load" => load = Some(flag.value(&mut flags)?.into()),
            "--bookmark-interval-ms" => config.bookmark_interval = Duration::from_millis(flag.number(&mut flags)?),
            "--watch-timeout-s" => config.default_watch_timeout = Duration::from_secs(flag.number(&mut flags)?),
            "--max-history" => {
                let n = flag.number(&mut flags)?;
                config.max_history = (n > 0).then_some(n as usize);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Args {
        config,
        kubeconfig_out,
        load,
    }))
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftgate-test-apiserver: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let Some(args) = parse_args()? else {
        std::io::stdout()
            .write_all(USAGE.as_bytes())
            .map_err(|e| e.to_string())?;
        return Ok(());
    };
    let server = ApiServer::start_with(args.config).await.map_err(|e| e.to_string())?;
    if let Some(path) = &args.load {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let objects: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| format!("{}: not a JSON array of objects: {e}", path.display()))?;
        for obj in &objects {
            server
                .create(obj)
                .map_err(|e| format!("{}: creating {obj}: {e}", path.display()))?;
        }
    }
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, server.kubeconfig_yaml()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", server.url()).map_err(|e| e.to_string())?;
    writeln!(out, "control on {}", server.control_url()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    wait_for_signal().await.map_err(|e| e.to_string())?;
    server.shutdown();
    Ok(())
}
