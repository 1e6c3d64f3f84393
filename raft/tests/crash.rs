//! kill -9 of real child processes amid continuous writes and votes: no committed entry or acknowledged vote is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// How it works: this test binary re-runs itself as a child process that executes one of the
// `#[ignore]`d `*_child` tests below (they do nothing unless `MODE` names them). The child writes
// forever and reports on stdout every write that came back acknowledged; the parent reads those
// lines, kills the child with SIGKILL at a varying point, and checks what the disk kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use openraft::Vote;
use openraft::storage::RaftLogStorage;
use raftgate_raft::store::{self, LogStore, StateMachine};
use raftgate_raft::{Change, Error, NodeId, RaftNode, Settings, StateEvent};
use tokio::sync::mpsc::UnboundedReceiver;

type V = String;

const MODE: &str = "RAFTGATE_CRASH_CHILD";
const DIR: &str = "RAFTGATE_CRASH_DIR";
const ROUND: &str = "RAFTGATE_CRASH_ROUND";

/// How long the parent waits for the child's next line, and anyone waits for sled's file lock
/// or for leadership. Generous: they only run out when something is wrong.
const PATIENCE: Duration = Duration::from_secs(20);

/// After how many acknowledged writes each round's child is killed (all rounds share one dir);
/// 0 kills it as soon as it has recovered, with its first batch barely proposed.
const WRITE_ROUNDS: [usize; 10] = [30, 75, 0, 5, 120, 1, 50, 12, 200, 3];
/// After how many acknowledged votes each round's child is killed (all rounds share one dir);
/// 0 kills it as soon as it has read the vote on disk.
const VOTE_ROUNDS: [usize; 8] = [40, 3, 90, 1, 0, 17, 60, 8];

fn key(i: u64) -> String {
    format!("k{i}")
}

fn value(i: u64) -> String {
    format!("value of batch {i}")
}

/// Whom the voter child votes for in `term` during `round`: it differs from one round to the
/// next, so a vote replayed after a restart would be a second, different vote in that term.
fn candidate(term: u64, round: u64) -> NodeId {
    (term + round) % 3 + 1
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn settings(dir: &Path) -> Settings {
    let mut s = Settings::new(1, free_addr(), dir.to_path_buf());
    s.heartbeat = Duration::from_millis(50);
    s.election_timeout_min = Duration::from_millis(150);
    s.election_timeout_max = Duration::from_millis(300);
    // Snapshot and purge often, so kills also land in the middle of those.
    s.snapshot_every = 16;
    s.logs_to_keep = 4;
    s
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn is_lock_error(e: &Error) -> bool {
    matches!(e, Error::Storage(msg) if msg.contains("lock"))
}

/// Start the single member on `dir`. A killed process's sled lock goes with it, but one this
/// process held is let go only when sled's background flusher notices, so retry while it is held.
async fn start_node(dir: &Path) -> (RaftNode<V>, UnboundedReceiver<StateEvent<V>>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match RaftNode::<V>::start(settings(dir)).await {
            Ok(started) => return started,
            Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("start a member on {}: {e}", dir.display()),
        }
    }
}

/// Open the storage on `dir` directly, retrying while sled's lock is held (see [`start_node`]).
async fn open_store(dir: &Path) -> (LogStore<V>, StateMachine<V>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match store::open::<V>(dir) {
            Ok(opened) => return opened,
            Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("open the store on {}: {e}", dir.display()),
        }
    }
}

/// Become the leader of the (already or newly initialized) one-member group and wait until
/// everything committed is applied. Returns whether `bootstrap` initialized the group.
async fn lead(node: &RaftNode<V>) -> bool {
    let initialized = node.bootstrap().await.unwrap();
    let mut leading = node.leadership();
    tokio::time::timeout(PATIENCE, leading.wait_for(|l| *l))
        .await
        .expect("no leadership in time")
        .unwrap();
    node.raft().ensure_linearizable().await.unwrap();
    initialized
}

/// Fold every state event received so far, as the application does, checking that the first is
/// the state on disk and that each batch raises the version by exactly one.
fn fold(rx: &mut UnboundedReceiver<StateEvent<V>>) -> (u64, BTreeMap<String, V>) {
    let (mut version, mut state) = match rx.try_recv() {
        Ok(StateEvent::Reset { version, entries }) => (version, entries),
        other => panic!("the first state event must be the state on disk, got {other:?}"),
    };
    while let Ok(ev) = rx.try_recv() {
        match ev {
            StateEvent::Reset { .. } => panic!("a lone member never installs a snapshot: {ev:?}"),
            StateEvent::Changed { version: v, changes } => {
                assert_eq!(v, version + 1, "versions go up by one per applied batch");
                version = v;
                for c in changes {
                    match c.value {
                        Some(val) => state.insert(c.key, val),
                        None => state.remove(&c.key),
                    };
                }
            }
        }
    }
    (version, state)
}

/// The writer puts `k<i>` in batch `i`, so after `version` batches the state is exactly `k0..k<version-1>`.
fn assert_state(version: u64, state: &BTreeMap<String, V>) {
    let missing: Vec<u64> = (0..version)
        .filter(|i| state.get(&key(*i)) != Some(&value(*i)))
        .collect();
    let expected: std::collections::BTreeSet<String> = (0..version).map(key).collect();
    let extra: Vec<&String> = state.keys().filter(|k| !expected.contains(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "at version {version}: batches missing or wrong: {missing:?}; keys no batch wrote: {extra:?}"
    );
}

/// One line of the child's protocol.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Msg {
    /// Writer: the member recovered at this version; whether it initialized a new group; the
    /// version it served from disk at start, before any election.
    Recovered { version: u64, initialized: bool, disk: u64 },
    /// Writer: batch `i` is committed and applied at `version`.
    Ack { i: u64, version: u64 },
    /// Voter: the vote it found on disk (`0 0` for none).
    Found { term: u64, node: NodeId },
    /// Voter: this vote is saved.
    Voted { term: u64, node: NodeId },
}

impl Msg {
    fn parse(line: &str) -> Option<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        Some(match *words.first()? {
            "RECOVERED" => Self::Recovered {
                version: num(1)?,
                initialized: words.get(2)?.parse().ok()?,
                disk: num(3)?,
            },
            "ACK" => Self::Ack {
                i: num(1)?,
                version: num(2)?,
            },
            "FOUND" => Self::Found {
                term: num(1)?,
                node: num(2)?,
            },
            "VOTED" => Self::Voted {
                term: num(1)?,
                node: num(2)?,
            },
            _ => return None,
        })
    }

    /// Write the line and push it out at once: from here on, it counts as acknowledged.
    fn emit(self) {
        let line = match self {
            Self::Recovered {
                version,
                initialized,
                disk,
            } => format!("RECOVERED {version} {initialized} {disk}"),
            Self::Ack { i, version } => format!("ACK {i} {version}"),
            Self::Found { term, node } => format!("FOUND {term} {node}"),
            Self::Voted { term, node } => format!("VOTED {term} {node}"),
        };
        // The leading newline ends libtest's `test <name> ... ` so the parent sees whole lines.
        let mut out = std::io::stdout().lock();
        out.write_all(format!("\n{line}\n").as_bytes()).unwrap();
        out.flush().unwrap();
    }
}

/// A child process running one of the `*_child` tests, its stdout read line by line.
struct Run {
    what: String,
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: PathBuf,
}

impl Run {
    fn spawn(mode: &str, dir: &Path, round: usize) -> Self {
        let test = format!("{mode}_child");
        let stderr = dir.join(format!("{mode}-{round}.stderr"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &test, "--nocapture", "--include-ignored", "--test-threads=1"])
            .env(MODE, mode)
            .env(DIR, dir)
            .env(ROUND, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut line = String::new();
            loop {
                line.clear();
                match out.read_line(&mut line) {
                    // Only whole lines count: a line cut short by the kill was never acknowledged.
                    Ok(_) if line.ends_with('\n') => {
                        if tx.send(line.trim_end().to_string()).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
        Self {
            what: format!("{mode} child of round {round} (pid {})", child.id()),
            child,
            lines,
            reader: Some(reader),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The child's next protocol line, skipping libtest's own output.
    fn next(&mut self) -> Msg {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    if let Some(msg) = Msg::parse(&line) {
                        return msg;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{}: silent for {PATIENCE:?}; stderr:\n{}", self.what, self.stderr())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "{}: ended by itself ({status:?}); stderr:\n{}",
                        self.what,
                        self.stderr()
                    )
                }
            }
        }
    }

    /// SIGKILL the child, reap it, and return what it still acknowledged before it died.
    fn kill(mut self) -> Vec<Msg> {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{}: not killed by SIGKILL ({status:?}); stderr:\n{}",
            self.what,
            self.stderr()
        );
        self.reader.take().unwrap().join().unwrap();
        self.lines.try_iter().filter_map(|l| Msg::parse(&l)).collect()
    }
}

impl Drop for Run {
    /// A parent that fails an assertion must not leave its child writing forever.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a child test was started for, if this process is that child.
fn child_env(mode: &str) -> Option<(PathBuf, u64)> {
    if std::env::var(MODE).ok()? != mode {
        return None;
    }
    let dir = PathBuf::from(std::env::var(DIR).expect("child without a data dir"));
    let round = std::env::var(ROUND).expect("child without a round").parse().unwrap();
    Some((dir, round))
}

/// Child: recover the member on the data dir, then commit one batch after another forever,
/// acknowledging each on stdout once `propose` returned it applied.
#[test]
#[ignore = "a child process of a_kill_during_writes_never_loses_a_committed_entry"]
fn writer_child() {
    let Some((dir, _)) = child_env("writer") else { return };
    runtime().block_on(async move {
        let (node, mut rx) = start_node(&dir).await;
        let disk = node.version();
        let initialized = lead(&node).await;
        let (version, state) = fold(&mut rx);
        assert_state(version, &state);
        Msg::Recovered {
            version,
            initialized,
            disk,
        }
        .emit();
        for i in version.. {
            let applied = node
                .propose(vec![Change {
                    key: key(i),
                    value: Some(value(i)),
                }])
                .await
                .unwrap();
            Msg::Ack {
                i,
                version: applied.version,
            }
            .emit();
        }
    });
}

/// Child: save a vote for a later term than the one on disk, one term after another forever,
/// acknowledging each on stdout once `save_vote` returned. A member replies to a vote request
/// only after that, so an acknowledged vote is one the candidate may have counted.
#[test]
#[ignore = "a child process of a_kill_never_makes_a_member_vote_twice_in_a_term"]
fn voter_child() {
    let Some((dir, round)) = child_env("voter") else { return };
    runtime().block_on(async move {
        let (mut log, _sm) = open_store(&dir).await;
        let found = log.read_vote().await.unwrap().unwrap_or_default();
        let (term, node) = (found.leader_id().term, found.leader_id().node_id);
        Msg::Found { term, node }.emit();
        for term in term + 1.. {
            let node = candidate(term, round);
            log.save_vote(&Vote::new(term, node)).await.unwrap();
            Msg::Voted { term, node }.emit();
        }
    });
}

#[test]
fn a_kill_during_writes_never_loses_a_committed_entry() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // The version the last child was known to have committed: what it recovered at, raised by
    // each batch it acknowledged. `None` before the first child.
    let mut known: Option<u64> = None;
    // Per round: the version it recovered at and how many batches it acknowledged.
    let mut rounds = Vec::new();
    for (round, kill_after) in WRITE_ROUNDS.into_iter().enumerate() {
        let mut run = Run::spawn("writer", dir.path(), round);
        let Msg::Recovered {
            version,
            initialized,
            disk,
        } = run.next()
        else {
            panic!("{}: expected RECOVERED first", run.what)
        };
        // What a member serves from its disk before it reaches any quorum is never less than
        // what it acknowledged (and served) before the kill.
        assert!(
            known.is_none_or(|k| disk >= k),
            "restart {round}: served version {disk} from disk, below the {known:?} acknowledged before the kill"
        );
        assert_eq!(initialized, round == 0, "only the first start initializes the group");
        assert_recovered(version, known, &format!("restart {round}"));
        // Batches are proposed one at a time, so they are acknowledged in order, each one
        // version up; the recovered version says where the numbering resumes.
        let mut next = version;
        let mut check = |msg: Msg| {
            assert_eq!(
                msg,
                Msg::Ack {
                    i: next,
                    version: next + 1
                },
                "round {round}"
            );
            next += 1;
        };
        for _ in 0..kill_after {
            check(run.next());
        }
        for msg in run.kill() {
            check(msg);
        }
        rounds.push((version, next - version));
        known = Some(next);
    }

    // Recover once more, here, and read everything back.
    runtime().block_on(async {
        let (node, mut rx) = start_node(dir.path()).await;
        assert!(!lead(&node).await, "a restart never re-initializes");
        let (version, state) = fold(&mut rx);
        assert_state(version, &state);
        assert_recovered(version, known, "the final restart");
        assert_eq!(node.version(), version);
        let m = node.raft().metrics().borrow().clone();
        assert!(
            m.snapshot.is_some() && m.purged.is_some(),
            "the writes must have gone through snapshots and log purges too: {m:?}"
        );
        node.shutdown().await;
        rounds.push((version, 0));
    });
    eprintln!(
        "writes: (recovered at version, batches acknowledged) per round: {rounds:?}, in {:?}",
        started.elapsed()
    );
}

/// After a kill, everything the killed child knew committed is there (the batches it recovered
/// and every batch it acknowledged), and at most the one batch it had in flight besides.
fn assert_recovered(version: u64, known: Option<u64>, when: &str) {
    let Some(known) = known else {
        assert_eq!(version, 0, "{when}: nothing was written yet");
        return;
    };
    assert!(
        version >= known,
        "{when}: recovered at version {version}, but the killed child had seen version {known} committed: a committed entry was lost"
    );
    assert!(
        version <= known + 1,
        "{when}: recovered at version {version}, but the killed child had seen version {known} committed and had one more batch in flight at most"
    );
}

#[test]
fn a_kill_never_makes_a_member_vote_twice_in_a_term() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    // Every vote known to have been on disk, term -> candidate.
    let mut granted: BTreeMap<u64, NodeId> = BTreeMap::new();
    let mut on_disk = (0, 0);
    // Per round: the last acknowledged vote and the vote on disk after the kill.
    let mut rounds = Vec::new();
    for (round, kill_after) in VOTE_ROUNDS.into_iter().enumerate() {
        let mut run = Run::spawn("voter", dir.path(), round);
        let Msg::Found { term, node } = run.next() else {
            panic!("{}: expected FOUND first", run.what)
        };
        assert_eq!(
            (term, node),
            on_disk,
            "round {round}: the child reads the vote the parent read"
        );
        let mut last = on_disk;
        let mut record = |msg: Msg| {
            let Msg::Voted { term, node } = msg else {
                panic!("round {round}: expected VOTED, got {msg:?}")
            };
            assert!(
                term > last.0,
                "round {round}: the child voted in term {term} after term {}",
                last.0
            );
            if let Some(before) = granted.insert(term, node) {
                panic!(
                    "round {round}: voted twice in term {term}: for {before}, and now for {node}; the first vote was lost"
                );
            }
            last = (term, node);
        };
        for _ in 0..kill_after {
            record(run.next());
        }
        for msg in run.kill() {
            record(msg);
        }

        let vote = rt.block_on(async {
            let (mut log, _sm) = open_store(dir.path()).await;
            log.read_vote().await.unwrap().unwrap_or_default()
        });
        let stored = (vote.leader_id().term, vote.leader_id().node_id);
        // The child may have saved one more vote than it got to acknowledge, never fewer.
        let one_more = (last.0 + 1, candidate(last.0 + 1, round as u64));
        assert!(
            stored == last || stored == one_more,
            "round {round}: the last acknowledged vote was {last:?}, but the disk has {stored:?}"
        );
        assert!(!vote.is_committed(), "the voter never saves a committed vote");
        granted.insert(stored.0, stored.1);
        on_disk = stored;
        rounds.push((last, stored));
    }
    eprintln!(
        "votes: (last acknowledged, on disk) per round: {rounds:?}, in {:?}",
        started.elapsed()
    );
}
