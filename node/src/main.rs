//! The `raftgate` binary: parse the command line, set up logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

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
        /// Watch the Kubernetes API with this kubeconfig (sets `source.kind: kubernetes`
        /// when the config names no source of its own).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Validate a config file and the manifests it points at, then exit (1 if anything is rejected).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create a cluster CA (unless OUT already has one) and a certificate per node for peer mutual TLS.
    Cert {
        /// Where to write ca.crt, ca.key and <node>.crt/.key.
        #[arg(long, default_value = "raftgate-certs")]
        out: PathBuf,
        /// The cluster's name, written into the CA.
        #[arg(long, default_value = "raftgate")]
        cluster: String,
        /// A node: `name` or `name=host,10.0.0.1` with extra DNS names or IPs. Repeat per node.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
    },
    /// Remove every address of the config's VIP pool from this host (systemd `ExecStopPost`, after a crash).
    ReleaseVips {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Internal: the VIP guard a node starts for itself (reads its pipe on stdin).
    #[command(hide = true)]
    GuardVips {
        /// The pool, as JSON.
        #[arg(long)]
        pool: String,
    },
    /// Talk to a running node through its admin API.
    Ctl {
        /// The node's admin address.
        #[arg(long, default_value = "127.0.0.1:10254")]
        admin: std::net::SocketAddr,
        #[command(subcommand)]
        command: Ctl,
    },
    /// Remove the node at --admin from its Raft group (through the leader).
    Leave {
        #[arg(long, default_value = "127.0.0.1:10254")]
        admin: std::net::SocketAddr,
    },
    /// List what raftgate does with manifests written for ingress-nginx: every
    /// nginx.ingress.kubernetes.io annotation, controller ConfigMap key and tcp/udp-services
    /// entry, as supported, supported with a difference, or unsupported, with file:line.
    #[command(after_help = "Exit status:\n  \
        0  everything is supported (differences allowed)\n  \
        1  something is unsupported, or a value, entry or document is invalid\n  \
        2  the input could not be read (a PATH is missing or unreadable, or a directory holds no manifests)")]
    MigrateCheck {
        /// Manifest files, or directories searched recursively for .yaml, .yml and .json files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Ctl {
    /// Every member: id, address, role, term, last applied, config version, reachable; and the leader.
    Status {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove members.
    #[command(subcommand)]
    Members(Members),
    /// Each VIP: owner (or handover), reason for its last move, how this node holds it, when it last announced.
    Vips {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Hand member ID's VIPs to others (make-before-break) and give it none until `undrain`.
    Drain { id: u64 },
    /// Let member ID hold VIPs again (it gets VIPs back only by rebalancing, after the preemption delay).
    Undrain { id: u64 },
    /// The routing table the node serves: HOST, PATH, MATCH, BACKEND, SOURCE, and the default backend.
    /// With --host URL: which rule that URL hits and why, and what then happens to it.
    #[command(
        after_help = "Exit codes: 0 listed, or the URL hits a route; 1 the URL hits no route \
        (default backend or 404); 2 the node could not be asked or the URL is bad."
    )]
    Routes {
        /// A URL to explain, e.g. https://shop.example.com/api/v1/x?q=1 (http:// when no scheme).
        #[arg(long, value_name = "URL")]
        host: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The configuration's problems: SEVERITY, OBJECT, PROBLEM and a FIX for each. With --manifests,
    /// compiles that directory offline; otherwise asks the node (its Raft leader, which compiles).
    #[command(after_help = "Exit codes: 0 no problems; 1 something is rejected (or unreadable); \
        2 the check could not run (node unreachable, bad config); 3 warnings only.")]
    Check {
        /// A directory of manifests to compile offline, instead of asking the node.
        #[arg(long, value_name = "DIR")]
        manifests: Option<PathBuf>,
        /// The node config whose compiler options (ingress class, defaults, ConfigMaps) apply with
        /// --manifests; built-in defaults without it.
        #[arg(long, short, value_name = "FILE", requires = "manifests")]
        config: Option<PathBuf>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Members {
    /// Add a member (learner first, then voter).
    Add {
        id: u64,
        /// Its Raft address, host:port.
        addr: String,
        /// Its admin address, shown in status.
        #[arg(long, default_value = "")]
        admin_addr: String,
        /// Keep it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member. One that does not answer needs --force.
    Remove {
        id: u64,
        #[arg(long)]
        force: bool,
    },
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    match Cli::parse().command {
        Command::Ctl { admin, command } => ctl_main(admin, command),
        Command::MigrateCheck { paths, json } => migrate_check(&paths, json),
        other => run_command(other).map(|()| std::process::ExitCode::SUCCESS),
    }
}

/// `raftgate ctl`: `routes` and `check` answer with an exit code, and their failure to run is 2;
/// the other subcommands fail as any command does.
fn ctl_main(admin: std::net::SocketAddr, command: Ctl) -> anyhow::Result<std::process::ExitCode> {
    let coded = matches!(command, Ctl::Routes { .. } | Ctl::Check { .. });
    match ctl_runtime().and_then(|rt| rt.block_on(ctl(admin, command))) {
        Ok(code) => Ok(std::process::ExitCode::from(code)),
        Err(e) if coded => {
            complain(&format!("error: {e:#}"));
            Ok(std::process::ExitCode::from(2))
        }
        Err(e) => Err(e),
    }
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config, kubeconfig } => {
            let mut cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            if let Some(kc) = kubeconfig {
                cfg.source = match cfg.source {
                    raftgate::config::Source::Kubernetes(mut k) => {
                        k.kubeconfig = Some(kc);
                        raftgate::config::Source::Kubernetes(k)
                    }
                    raftgate::config::Source::Manifests { path: None, .. } => {
                        raftgate::config::Source::Kubernetes(raftgate::config::KubeSource {
                            kubeconfig: Some(kc),
                            ..Default::default()
                        })
                    }
                    raftgate::config::Source::Manifests { path: Some(p), .. } => anyhow::bail!(
                        "--kubeconfig given, but the config's source is the manifests directory {}",
                        p.display()
                    ),
                };
            }
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
        Command::Cert { out, cluster, nodes } => {
            let written = raftgate::ctl::make_certs(&out, &cluster, &nodes)?;
            for p in written {
                say(&format!("wrote {}", p.display()));
            }
            Ok(())
        }
        Command::Ctl { admin, command } => ctl_main(admin, command).map(|_| ()),
        Command::GuardVips { pool } => {
            init_logging(&Config::default());
            let specs: Vec<raftgate_vip::VipSpec> = serde_json::from_str(&pool).context("--pool")?;
            let pool = raftgate_vip::Pool::new(specs)?;
            raftgate_vip::shell::guard::run(&pool, std::io::stdin())?;
            Ok(())
        }
        Command::ReleaseVips { config } => {
            let cfg = Config::load(&config)?;
            let Some(vip) = cfg.vip.as_ref() else {
                say("no vip section: nothing to release");
                return Ok(());
            };
            let removed = raftgate_vip::shell::remove_all(&vip.pool()?)?;
            say(&format!("removed {removed} VIP address(es)"));
            Ok(())
        }
        Command::Leave { admin } => ctl_runtime()?.block_on(async move {
            let status = raftgate::ctl::request(admin, http::Method::GET, "/api/v1/status", None).await?;
            let id = status["raft"]["member"]["id"]
                .as_u64()
                .context("this node runs without a raft group")?;
            raftgate::ctl::request(admin, http::Method::DELETE, &format!("/api/v1/members/{id}"), None).await?;
            say(&format!("member {id} left the group"));
            Ok(())
        }),
        Command::MigrateCheck { paths, json } => migrate_check(&paths, json).map(|_| ()),
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

/// `raftgate migrate-check`: exit 0 when everything is supported, 1 when something is
/// unsupported or invalid, 2 when the input cannot be read.
fn migrate_check(paths: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let inputs = match read_manifests(paths) {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("raftgate migrate-check: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = raftgate::migrate::check(&inputs);
    if json {
        say(&serde_json::to_string_pretty(&report)?);
    } else {
        say(report.render().trim_end());
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// The manifests under `paths`: files as named, directories searched recursively (sorted,
/// hidden entries skipped) for .yaml, .yml and .json files. Text that is not UTF-8 is read
/// lossily, so the YAML parser reports it where it breaks.
fn read_manifests(paths: &[PathBuf]) -> Result<Vec<(String, String)>, raftgate::migrate::MigrateError> {
    use raftgate::migrate::MigrateError;
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<(), MigrateError> {
        let read = |source| MigrateError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(read)?;
        entries.sort();
        for p in entries {
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if p.is_dir() {
                walk(&p, out)?;
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| MigrateError::Read {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            let before = files.len();
            walk(p, &mut files)?;
            if files.len() == before {
                return Err(MigrateError::NoManifests { path: p.clone() });
            }
        } else {
            files.push(p.clone());
        }
    }
    files
        .into_iter()
        .map(|path| match std::fs::read(&path) {
            Ok(bytes) => Ok((path.display().to_string(), String::from_utf8_lossy(&bytes).into_owned())),
            Err(source) => Err(MigrateError::Read { path, source }),
        })
        .collect()
}

fn ctl_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")
}

#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("{line}");
}

#[allow(clippy::print_stderr)]
fn complain(line: &str) {
    eprintln!("{line}");
}

/// Runs a `ctl` command; the exit code it asks for (0 unless `routes` or `check` found something).
async fn ctl(admin: std::net::SocketAddr, command: Ctl) -> anyhow::Result<u8> {
    use raftgate::ctl::request;
    match command {
        Ctl::Routes { host: None, json } => {
            let view = request(admin, http::Method::GET, "/api/v1/routes", None).await?;
            if json {
                say(&serde_json::to_string_pretty(&view)?);
            } else {
                say(raftgate::ctl::routes_table(&view)?.trim_end());
            }
        }
        Ctl::Routes { host: Some(url), json } => {
            let path = format!("/api/v1/routes/explain?url={}", raftgate::ctl::encode_query_value(&url));
            let x = request(admin, http::Method::GET, &path, None).await?;
            if json {
                say(&serde_json::to_string_pretty(&x)?);
            } else {
                say(raftgate::ctl::explain_text(&x)?.trim_end());
            }
            return Ok(if raftgate::ctl::explained_route(&x) { 0 } else { 1 });
        }
        Ctl::Check {
            manifests: Some(dir),
            config,
            json,
        } => {
            let mut cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            anyhow::ensure!(dir.is_dir(), "--manifests {}: not a directory", dir.display());
            cfg.source = match cfg.source {
                raftgate::config::Source::Manifests { poll_interval, .. } => raftgate::config::Source::Manifests {
                    path: Some(dir),
                    poll_interval,
                },
                raftgate::config::Source::Kubernetes(_) => raftgate::config::Source::Manifests {
                    path: Some(dir),
                    poll_interval: std::time::Duration::from_secs(1),
                },
            };
            let report = raftgate::app::check(&cfg);
            let problems: Vec<serde_json::Value> = report
                .problems
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            if json {
                let v = serde_json::json!({
                    "problems": problems,
                    "manifest_errors": report.manifest_errors,
                    "hosts": report.hosts,
                    "routes": report.routes,
                });
                say(&serde_json::to_string_pretty(&v)?);
            } else {
                say(raftgate::ctl::check_table(&problems, &report.manifest_errors).trim_end());
                say(&format!("{} hosts, {} routes", report.hosts, report.routes));
            }
            return Ok(raftgate::ctl::check_exit_code(&problems, &report.manifest_errors));
        }
        Ctl::Check {
            manifests: None, json, ..
        } => {
            let (asked, status) = raftgate::ctl::live_problems(admin).await?;
            let problems = status["problems"].as_array().cloned().unwrap_or_default();
            let errors: Vec<String> = status["source_errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect();
            if json {
                let v = serde_json::json!({"asked": asked, "problems": problems, "source_errors": errors});
                say(&serde_json::to_string_pretty(&v)?);
            } else {
                say(&format!("asked: {asked}"));
                say(raftgate::ctl::check_table(&problems, &errors).trim_end());
            }
            return Ok(raftgate::ctl::check_exit_code(&problems, &errors));
        }
        Ctl::Status { json } => {
            let cluster = request(admin, http::Method::GET, "/api/v1/cluster", None).await?;
            if json {
                say(&serde_json::to_string_pretty(&cluster)?);
            } else {
                say(raftgate::ctl::status_table(&cluster)?.trim_end());
            }
        }
        Ctl::Members(Members::Add {
            id,
            addr,
            admin_addr,
            learner,
        }) => {
            let body = serde_json::json!({"id": id, "addr": addr, "admin": admin_addr, "learner": learner});
            request(admin, http::Method::POST, "/api/v1/members", Some(body)).await?;
            say(&format!("member {id} added"));
        }
        Ctl::Vips { json } => {
            let view = request(admin, http::Method::GET, "/api/v1/vips", None).await?;
            if json {
                say(&serde_json::to_string_pretty(&view)?);
            } else {
                say(raftgate::ctl::vips_table(&view)?.trim_end());
            }
        }
        Ctl::Drain { id } => {
            request(admin, http::Method::POST, &format!("/api/v1/vips/drain/{id}"), None).await?;
            say(&format!("member {id} drained: its VIPs move to other members"));
        }
        Ctl::Undrain { id } => {
            request(admin, http::Method::DELETE, &format!("/api/v1/vips/drain/{id}"), None).await?;
            say(&format!("member {id} may hold VIPs again"));
        }
        Ctl::Members(Members::Remove { id, force }) => {
            let q = if force { "?force=true" } else { "" };
            request(admin, http::Method::DELETE, &format!("/api/v1/members/{id}{q}"), None).await?;
            say(&format!("member {id} removed"));
        }
    }
    Ok(0)
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let data_dir = cfg.raft.as_ref().map(|r| r.data_dir.display().to_string());
    let node = Node::start(cfg).await?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("install SIGTERM handler")?;
    let failure = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM"); None }
        r = tokio::signal::ctrl_c() => { r.context("wait for SIGINT")?; tracing::info!("SIGINT"); None }
        // Raft cannot go on (its data directory is full or read-only, say): the member gives its
        // VIPs up as one cut off from the group, drains, and exits non-zero so that systemd or the
        // kubelet starts it again, which recovers from the same directory once it is writable.
        reason = node.raft_failed() => {
            tracing::error!(%reason, data_dir = data_dir.as_deref().unwrap_or_default(), "raft stopped on an error; stopping");
            Some(reason)
        }
    };
    node.shutdown().await;
    match failure {
        Some(reason) => Err(anyhow::anyhow!(
            "raft stopped on an error (data directory {}): {reason}",
            data_dir.as_deref().unwrap_or("?")
        )),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
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
        println!("  fix: {}", p.fix);
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
