//! A Raft group in one process over real loopback gRPC with mutual TLS: replication, joins,
//! snapshots, restarts, membership refusals, and peers without the cluster's certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use raftgate_raft::tls::{self, PeerTls};
use raftgate_raft::{Change, Error, RaftNode, Settings, StateEvent};
use tokio::sync::mpsc::UnboundedReceiver;

type V = String;

struct Pki {
    dir: tempfile::TempDir,
    ca_key: String,
}

impl Pki {
    fn new(cluster: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls::generate_ca(cluster).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
        Self {
            dir,
            ca_key: ca.key_pem,
        }
    }

    fn node(&self, cluster: &str, name: &str) -> PeerTls {
        let n = tls::generate_node(cluster, &self.ca_key, name, &["127.0.0.1".into()]).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, n.cert_pem).unwrap();
        std::fs::write(&k, n.key_pem).unwrap();
        PeerTls::load(&self.dir.path().join("ca.crt"), &c, &k).unwrap()
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn settings(id: u64, listen: SocketAddr, dir: &Path, tls: Option<PeerTls>) -> Settings {
    let mut s = Settings::new(id, listen, dir.join(format!("n{id}")));
    s.tls = tls;
    s.heartbeat = Duration::from_millis(50);
    s.election_timeout_min = Duration::from_millis(300);
    s.election_timeout_max = Duration::from_millis(600);
    s
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Folds state events into a map, as the application does.
fn fold(rx: &mut UnboundedReceiver<StateEvent<V>>, state: &mut BTreeMap<String, V>) -> u64 {
    let mut version = 0;
    while let Ok(ev) = rx.try_recv() {
        version = ev.version();
        match ev {
            StateEvent::Reset { entries, .. } => *state = entries,
            StateEvent::Changed { changes, .. } => {
                for c in changes {
                    match c.value {
                        Some(v) => state.insert(c.key, v),
                        None => state.remove(&c.key),
                    };
                }
            }
        }
    }
    version
}

fn put(k: &str, v: &str) -> Change<V> {
    Change {
        key: k.into(),
        value: Some(v.into()),
    }
}

async fn three(pki: &Pki, dir: &Path) -> Vec<(RaftNode<V>, UnboundedReceiver<StateEvent<V>>, SocketAddr)> {
    let mut out = Vec::new();
    for id in 1..=3u64 {
        let addr = free_addr();
        let (node, rx) = RaftNode::<V>::start(settings(id, addr, dir, Some(pki.node("t", &format!("n{id}")))))
            .await
            .unwrap();
        out.push((node, rx, addr));
    }
    assert!(out[0].0.bootstrap().await.unwrap());
    let seed = vec![out[0].2.to_string()];
    out[1].0.join(&seed, false).await.unwrap();
    out[2].0.join(&seed, false).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_over_mutual_tls() {
    let pki = Pki::new("t");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three(&pki, dir.path()).await;
    let status = nodes[0].0.status();
    assert_eq!(status.voters, vec![1, 2, 3]);
    assert_eq!(status.role, "leader");
    let leading = nodes[0].0.leadership();
    wait_for("leader lease", Duration::from_secs(5), || *leading.borrow()).await;

    nodes[0].0.propose(vec![put("a", "1"), put("b", "2")]).await.unwrap();
    let applied = nodes[0]
        .0
        .propose(vec![Change {
            key: "a".into(),
            value: None,
        }])
        .await
        .unwrap();
    assert_eq!(applied.version, 2);
    for (node, _, _) in &nodes {
        wait_for("convergence", Duration::from_secs(5), || node.version() == 2).await;
    }
    for (_, rx, _) in &mut nodes {
        let mut state = BTreeMap::new();
        assert_eq!(fold(rx, &mut state), 2);
        assert_eq!(state, BTreeMap::from([("b".to_string(), "2".to_string())]));
    }
    // Conditional batches: applied only when the expected values hold when their turn comes.
    let stale = nodes[0]
        .0
        .propose_if(vec![put("b", "1")], vec![put("b", "9")])
        .await
        .unwrap();
    assert!(stale.rejected);
    assert_eq!(stale.version, 2, "a rejected batch does not raise the version");
    let absent = Change {
        key: "a".into(),
        value: None,
    };
    let ok = nodes[0]
        .0
        .propose_if(vec![put("b", "2"), absent], vec![put("b", "3")])
        .await
        .unwrap();
    assert!(!ok.rejected);
    let back = nodes[0]
        .0
        .propose_if(vec![put("b", "3")], vec![put("b", "2")])
        .await
        .unwrap();
    assert!(!back.rejected);
    assert_eq!(back.version, 4);
    // A follower forwards a write to the leader.
    let applied = nodes[2].0.write(vec![put("c", "3")]).await.unwrap();
    assert_eq!(applied.version, 5);
    let cluster = nodes[1].0.cluster().await;
    assert_eq!(cluster.len(), 3);
    assert!(cluster.iter().all(|m| m.status.is_some() && m.voter), "{cluster:?}");

    // Leader calls: answered by the leader's handler only, straight from a follower or locally.
    for (n, _, _) in &nodes {
        let id = n.id();
        n.set_leader_handler(std::sync::Arc::new(move |body: bytes::Bytes| {
            Box::pin(async move {
                if body.is_empty() {
                    return Err("empty".to_string());
                }
                Ok(bytes::Bytes::from(format!("{id}:{}", String::from_utf8_lossy(&body))))
            })
        }));
    }
    let ttl = Duration::from_secs(2);
    let answer = nodes[2]
        .0
        .ask_leader(bytes::Bytes::from_static(b"hi"), ttl)
        .await
        .unwrap();
    assert_eq!(&answer[..], b"1:hi");
    let answer = nodes[0]
        .0
        .ask_leader(bytes::Bytes::from_static(b"me"), ttl)
        .await
        .unwrap();
    assert_eq!(&answer[..], b"1:me");
    let refused = nodes[1].0.ask_leader(bytes::Bytes::new(), ttl).await;
    assert!(
        matches!(&refused, Err(Error::Raft(m)) if m.contains("empty")),
        "{refused:?}"
    );
    assert!(nodes[0].0.quorum_ack().is_some());
    assert!(nodes[1].0.quorum_ack().is_none());

    // A leaving leader hands its leadership to a caught-up voter without an election timeout.
    // (It must have led for election_timeout_max, 600 ms here, for its vote to be free.)
    assert_eq!(
        nodes[1].0.hand_off_leadership(ttl).await.unwrap(),
        None,
        "not the leader"
    );
    tokio::time::sleep(Duration::from_millis(650)).await;
    let started = std::time::Instant::now();
    let new_leader = nodes[0].0.hand_off_leadership(ttl).await.unwrap().unwrap();
    let took = started.elapsed();
    assert_ne!(new_leader, 1);
    let n = &nodes[usize::try_from(new_leader).unwrap() - 1].0;
    wait_for("the new leader's role", Duration::from_secs(2), || {
        n.status().role == "leader"
    })
    .await;
    // Less than the 600 ms + 300..600 ms an election after a silent leader needs (the hand-off
    // itself takes a few ms; the rest is room for a busy machine).
    assert!(took < Duration::from_millis(850), "hand-off took {took:?}");
    for (n, _, _) in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_member_catches_up_from_a_snapshot_and_a_restart_recovers_from_disk() {
    let pki = Pki::new("t");
    let dir = tempfile::tempdir().unwrap();
    let a1 = free_addr();
    let mut s1 = settings(1, a1, dir.path(), Some(pki.node("t", "n1")));
    s1.snapshot_every = 5;
    s1.logs_to_keep = 0;
    let (n1, _rx1) = RaftNode::<V>::start(s1.clone()).await.unwrap();
    n1.bootstrap().await.unwrap();
    let leading = n1.leadership();
    wait_for("leadership", Duration::from_secs(5), || *leading.borrow()).await;
    for i in 0..20 {
        n1.propose(vec![put(&format!("k{i}"), &i.to_string())]).await.unwrap();
    }
    wait_for("a snapshot and purge", Duration::from_secs(5), || {
        n1.raft().metrics().borrow().purged.is_some()
    })
    .await;

    let a2 = free_addr();
    let (n2, mut rx2) = RaftNode::<V>::start(settings(2, a2, dir.path(), Some(pki.node("t", "n2"))))
        .await
        .unwrap();
    n2.join(&[a1.to_string()], false).await.unwrap();
    wait_for("catch-up", Duration::from_secs(5), || n2.version() == 20).await;
    assert!(
        n2.status().snapshot_index.is_some(),
        "the new member must have installed a snapshot"
    );
    let mut state = BTreeMap::new();
    assert_eq!(fold(&mut rx2, &mut state), 20);
    assert_eq!(state.len(), 20);
    assert_eq!(state["k7"], "7");

    // Restart member 1 alone: its state comes back from disk before any peer answers.
    n1.shutdown().await;
    drop(n1);
    // sled lets go of its file lock once its background flusher notices the last handle is
    // gone (a process restart does not wait for that), so retry until the lock is free.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (n1, mut rx1) = loop {
        match RaftNode::<V>::start(s1.clone()).await {
            Ok(started) => break started,
            Err(Error::Storage(msg)) if msg.contains("lock") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("restart: {e}"),
        }
    };
    assert!(!n1.bootstrap().await.unwrap(), "a restart never re-initializes");
    let mut state = BTreeMap::new();
    assert_eq!(fold(&mut rx1, &mut state), 20);
    assert_eq!(state.len(), 20);
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_would_lose_quorum_are_refused() {
    let pki = Pki::new("t");
    let dir = tempfile::tempdir().unwrap();
    let nodes = three(&pki, dir.path()).await;
    nodes[2].0.shutdown().await;
    // Voters {1, 3} with 3 down: no quorum.
    match nodes[0].0.remove_member(2, false).await {
        Err(Error::Refused(msg)) => assert!(msg.contains("quorum"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A dead member goes only with force.
    match nodes[1].0.remove_member(3, false).await {
        Err(Error::Refused(msg)) => assert!(msg.contains("force"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    nodes[1].0.remove_member(3, true).await.unwrap();
    wait_for("membership", Duration::from_secs(5), || {
        nodes[0].0.status().voters == vec![1, 2]
    })
    .await;
    match nodes[0].0.remove_member(9, true).await {
        Err(Error::Refused(msg)) => assert!(msg.contains("not a member"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    nodes[0].0.shutdown().await;
    nodes[1].0.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_certificate_from_the_cluster_ca_are_refused() {
    let pki = Pki::new("t");
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (node, _rx) = RaftNode::<V>::start(settings(1, addr, dir.path(), Some(pki.node("t", "n1"))))
        .await
        .unwrap();
    let a = addr.to_string();
    let ok = raftgate_raft::network::probe(&a, Some(pki.node("t", "client")))
        .await
        .unwrap();
    assert_eq!(ok.id, 1);

    // Signed by another CA that even has the same name.
    let other = Pki::new("t");
    let mut forged = other.node("t", "intruder");
    forged.ca_pem = std::fs::read(pki.dir.path().join("ca.crt")).unwrap();
    let err = raftgate_raft::network::probe(&a, Some(forged)).await.unwrap_err();
    assert!(matches!(err, Error::Peer { .. }), "{err}");

    // Plain text.
    let err = raftgate_raft::network::probe(&a, None).await.unwrap_err();
    assert!(matches!(err, Error::Peer { .. }), "{err}");

    // TLS that trusts the server but shows no client certificate.
    let ca = std::fs::read(pki.dir.path().join("ca.crt")).unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{a}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name(tls::PEER_NAME),
        )
        .unwrap()
        .connect_lazy();
    let mut grpc = tonic::client::Grpc::new(ch);
    let result = async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        grpc.unary(
            tonic::Request::new(bytes::Bytes::new()),
            http::uri::PathAndQuery::from_static(raftgate_raft::network::HEALTH),
            raftgate_raft::codec::BytesCodec,
        )
        .await
    }
    .await;
    assert!(result.is_err(), "a peer without a client certificate was served");
    node.shutdown().await;
}
