//! The `raftgate` binary: parse the command line, set up logging, run.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use raftgate::Config;
use raftgate::Node;
use raftgate::config::LogFormat;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "raftgate",
    version,
    about = "A highly available ingress tier for bare-metal Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. Without --config, runs on built-in defaults with a demo route.
    Run {
        /// The YAML config file (see docs/config.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and the manifests it points at, then exit (1 if anything is rejected).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            init_logging(&cfg);
            let threads = match cfg.worker_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            let mut builder = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(threads);
                b
            };
            let rt = builder.enable_all().build().context("start the runtime")?;
            tracing::info!(worker_threads = threads, "runtime started");
            rt.block_on(run(cfg))
        }
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            let report = raftgate::app::check(&cfg);
            print_report(&report);
            if report.failed() {
                anyhow::bail!("some objects were rejected");
            }
            Ok(())
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let node = Node::start(cfg).await?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("install SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        r = tokio::signal::ctrl_c() => { r.context("wait for SIGINT")?; tracing::info!("SIGINT") }
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_report(r: &raftgate::app::CheckReport) {
    for e in &r.manifest_errors {
        println!("error: {e}");
    }
    for p in &r.problems {
        let level = match p.severity {
            raftgate::compiler::Severity::Rejected => "rejected",
            raftgate::compiler::Severity::Warning => "warning",
        };
        println!("{level}: {p}");
    }
    for l in &r.l4 {
        println!("l4: {l}");
    }
    println!("{} hosts, {} routes, {} L4 ports", r.hosts, r.routes, r.l4.len());
}

fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
