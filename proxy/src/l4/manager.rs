//! The L4 manager: follows the served table and opens or closes one listener per `l4`
//! entry, touching only the ports that changed.
//!
//! Which listeners to stop and start is decided by the pure [`plan`]; the shell binds,
//! logs and publishes each key's [`ListenerStatus`] on a watch. A port that cannot be
//! bound (in use, no permission) is logged, reported as `Failed`, and retried on every
//! table change and every [`BIND_RETRY`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Ctx;
use super::L4Settings;
use super::metrics::L4Metrics;
use super::tcp;
use super::udp;
use crate::dataplane::Dataplane;
use crate::model::L4Protocol;
use crate::model::L4Service;
use crate::server::draining;

/// How often ports that failed to bind are tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// The state of one `l4` key's listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerStatus {
    /// Listening on this address.
    Bound(SocketAddr),
    /// The bind failed with this error; retried later.
    Failed(String),
}

/// What a listener is: its protocol and port.
type Identity = (L4Protocol, u16);

/// The keys to stop and the keys to start to go from `running` to `desired`. A key whose
/// protocol or port changed is in both.
pub(super) fn plan(
    running: &BTreeMap<String, Identity>,
    desired: &BTreeMap<String, Identity>,
) -> (Vec<String>, Vec<String>) {
    let stop = running
        .iter()
        .filter(|(k, id)| desired.get(*k) != Some(id))
        .map(|(k, _)| k.clone())
        .collect();
    let start = desired
        .iter()
        .filter(|(k, id)| running.get(*k) != Some(id))
        .map(|(k, _)| k.clone())
        .collect();
    (stop, start)
}

/// A handle on the L4 listeners of a node.
#[derive(Debug)]
pub struct Manager {
    ctx: Arc<Ctx>,
    status: watch::Receiver<BTreeMap<String, ListenerStatus>>,
    task: JoinHandle<()>,
}

impl Manager {
    /// Starts following `dataplane`'s table: binds `settings.bind_ip:port` for each `l4`
    /// entry (at once for the table already served) and closes listeners whose entry
    /// goes. When `drain` flips to `true` every listener closes and UDP sessions end; open
    /// TCP connections go on until [`Manager::drained`].
    pub fn spawn(dataplane: Arc<Dataplane>, settings: L4Settings, drain: watch::Receiver<bool>) -> Manager {
        let ctx = Arc::new(Ctx {
            dataplane,
            connections: Arc::new(Semaphore::new(settings.max_tcp_connections)),
            settings,
            metrics: Arc::new(L4Metrics::default()),
            active: watch::channel(0).0,
            kill: watch::channel(false).0,
        });
        let (status_tx, status) = watch::channel(BTreeMap::new());
        let task = tokio::spawn(run(ctx.clone(), drain, status_tx));
        Manager { ctx, status, task }
    }

    /// Each `l4` key's listener, updated after every change. Tests and the admin API
    /// wait on it (`wait_for`) to know when a port is up or gone.
    pub fn status(&self) -> watch::Receiver<BTreeMap<String, ListenerStatus>> {
        self.status.clone()
    }

    /// The address `key` is bound on now, if it is.
    pub fn bound(&self, key: &str) -> Option<SocketAddr> {
        match self.status.borrow().get(key) {
            Some(ListenerStatus::Bound(a)) => Some(*a),
            _ => None,
        }
    }

    /// The L4 counters, for the metrics endpoint.
    pub fn metrics(&self) -> &Arc<L4Metrics> {
        &self.ctx.metrics
    }

    /// TCP connections open now.
    pub fn active_connections(&self) -> usize {
        *self.ctx.active.borrow()
    }

    /// Waits until every TCP connection has closed, or `grace` has passed; then cuts the
    /// ones left and returns how many there were. Call it after the drain has started.
    pub async fn drained(&self, grace: Duration) -> usize {
        let mut active = self.ctx.active.subscribe();
        if tokio::time::timeout(grace, active.wait_for(|n| *n == 0)).await.is_ok() {
            return 0;
        }
        let left = *active.borrow();
        self.ctx.kill.send_replace(true);
        left
    }

    /// Waits for the manager to stop, which it does once draining has closed every
    /// listener.
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "L4 manager task failed");
        }
    }
}

/// A running listener.
#[derive(Debug)]
struct Running {
    id: Identity,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting and waits until the socket is closed.
    async fn stop(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "L4 listener task failed");
        }
    }
}

async fn run(ctx: Arc<Ctx>, mut drain: watch::Receiver<bool>, status: watch::Sender<BTreeMap<String, ListenerStatus>>) {
    let mut versions = ctx.dataplane.versions();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut retry = tokio::time::interval(BIND_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retry.tick().await;
    while !*drain.borrow() {
        reconcile(&ctx, &mut running, &mut failed).await;
        publish(&status, &running, &failed);
        tokio::select! {
            r = versions.changed() => if r.is_err() { break },
            _ = retry.tick(), if !failed.is_empty() => {}
            _ = draining(&mut drain) => break,
        }
    }
    let n = running.len();
    for (_, r) in std::mem::take(&mut running) {
        r.stop().await;
    }
    status.send_replace(BTreeMap::new());
    tracing::info!(listeners = n, "L4 listeners closed for the drain");
}

fn publish(
    status: &watch::Sender<BTreeMap<String, ListenerStatus>>,
    running: &BTreeMap<String, Running>,
    failed: &BTreeMap<String, String>,
) {
    let now: BTreeMap<String, ListenerStatus> = running
        .iter()
        .map(|(k, r)| (k.clone(), ListenerStatus::Bound(r.addr)))
        .chain(
            failed
                .iter()
                .map(|(k, e)| (k.clone(), ListenerStatus::Failed(e.clone()))),
        )
        .collect();
    status.send_if_modified(|s| {
        if *s == now {
            return false;
        }
        *s = now;
        true
    });
}

async fn reconcile(ctx: &Arc<Ctx>, running: &mut BTreeMap<String, Running>, failed: &mut BTreeMap<String, String>) {
    let snap = ctx.dataplane.snapshot();
    let wanted: BTreeMap<String, &L4Service> = snap.table.l4.iter().map(|(k, s)| (k.clone(), s)).collect();
    let desired: BTreeMap<String, Identity> = wanted.iter().map(|(k, s)| (k.clone(), (s.protocol, s.port))).collect();
    let current: BTreeMap<String, Identity> = running.iter().map(|(k, r)| (k.clone(), r.id)).collect();
    let (stop, start) = plan(&current, &desired);
    // Stop first, so a port that moves between keys is free again.
    for key in stop {
        if let Some(r) = running.remove(&key) {
            let addr = r.addr;
            r.stop().await;
            tracing::info!(service = %key, %addr, "L4 listener closed");
        }
    }
    failed.retain(|k, _| desired.contains_key(k));
    for key in start {
        let Some(svc) = wanted.get(&key) else {
            continue;
        };
        let addr = SocketAddr::new(ctx.settings.bind_ip, svc.port);
        match open(ctx, &key, svc, addr).await {
            Ok(r) => {
                if failed.remove(&key).is_some() {
                    tracing::info!(service = %key, addr = %r.addr, source = %svc.source, "L4 port bound after earlier failures");
                } else {
                    tracing::info!(service = %key, addr = %r.addr, upstream = %svc.upstream, source = %svc.source, "L4 listener bound");
                }
                running.insert(key, r);
            }
            Err(e) => {
                let msg = format!("bind {} {addr}: {e}", svc.protocol.as_str());
                if failed.get(&key) != Some(&msg) {
                    tracing::warn!(service = %key, source = %svc.source, error = %msg, "cannot open L4 port; retrying every {BIND_RETRY:?}");
                }
                failed.insert(key, msg);
            }
        }
    }
}

async fn open(ctx: &Arc<Ctx>, key: &str, svc: &L4Service, addr: SocketAddr) -> std::io::Result<Running> {
    let (stop, stop_rx) = watch::channel(false);
    let (bound, task) = match svc.protocol {
        L4Protocol::Tcp => {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            let listener = socket.listen(ctx.settings.backlog)?;
            let bound = listener.local_addr()?;
            let task = tokio::spawn(tcp::serve(listener, key.to_string(), ctx.clone(), stop_rx));
            (bound, task)
        }
        L4Protocol::Udp => {
            if svc.proxy_protocol_in || svc.proxy_protocol_out {
                tracing::warn!(service = %key, source = %svc.source, "PROXY protocol is not supported on UDP ports; ignored");
            }
            let socket = UdpSocket::bind(addr).await?;
            let bound = socket.local_addr()?;
            let task = tokio::spawn(udp::serve(socket, key.to_string(), ctx.clone(), stop_rx));
            (bound, task)
        }
    };
    Ok(Running {
        id: (svc.protocol, svc.port),
        addr: bound,
        stop,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(entries: &[(&str, L4Protocol, u16)]) -> BTreeMap<String, Identity> {
        entries.iter().map(|(k, p, n)| (k.to_string(), (*p, *n))).collect()
    }

    #[test]
    fn only_changed_ports_are_touched() {
        use L4Protocol::*;
        let running = ids(&[("tcp/1", Tcp, 1), ("tcp/2", Tcp, 2), ("udp/3", Udp, 3)]);
        let desired = ids(&[("tcp/2", Tcp, 2), ("udp/3", Tcp, 3), ("udp/4", Udp, 4)]);
        let (stop, start) = plan(&running, &desired);
        assert_eq!(stop, vec!["tcp/1", "udp/3"]);
        assert_eq!(start, vec!["udp/3", "udp/4"]);
        assert_eq!(plan(&desired, &desired), (vec![], vec![]));
    }
}
