//! Durable Raft storage on sled: the log, the vote and the committed id, the keyed state machine, and snapshots.
//!
//! # What reaches the disk, and when
//!
//! One sled database per member (`<data_dir>/raft`), with four trees:
//!
//! | tree | keys | written by | fsync (`sled::Db::flush`) |
//! |---|---|---|---|
//! | `log` | the entry index, 8 bytes big-endian → the entry as JSON | `append`, `truncate`, `purge` | before `append` reports the entries flushed, and before `truncate`/`purge` return |
//! | `meta` | `vote`, `committed`, `last_purged` | `save_vote`, `save_committed`, `purge` | before `save_vote` returns; `committed` rides on the next flush (it is only a hint for replay) |
//! | `sm` | `d/<key>` → value as JSON; `m/applied`, `m/membership`, `m/version` | `apply`, `install_snapshot` | on `apply` of any application batch, before the change is reported to the application (so a member restarted without a quorum serves at least what it served before), and on `install_snapshot`. Each apply call is one atomic sled batch, so data and its applied id never disagree; blank and membership entries ride on the next flush, and openraft re-applies the committed log from the last applied id on disk |
//! | `snapshot` | `meta`, `data` | `build_snapshot`, `install_snapshot` | before either returns, so a snapshot is on disk before openraft purges the log it covers |
//!
//! So a vote is never granted twice in a term (the vote is on disk before the reply leaves), and a log
//! entry is never counted towards a commit before it is on disk on that member.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::types::{Applied, Change, Member, NodeId, TypeConfig, Value};

type C<V> = TypeConfig<V>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, Member>);

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const VERSION: &[u8] = b"m/version";
const DATA_PREFIX: &[u8] = b"d/";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

/// Open (or create) the storage under `dir`. Both halves share one sled database.
pub fn open<V: Value>(dir: &Path) -> Result<(LogStore<V>, StateMachine<V>), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Storage(format!("create {}: {e}", dir.display())))?;
    let db = sled::Config::new()
        .path(dir.join("raft"))
        .open()
        .map_err(|e| Error::Storage(format!("open {}: {e}", dir.display())))?;
    let tree = |name: &str| {
        db.open_tree(name)
            .map_err(|e| Error::Storage(format!("open tree {name}: {e}")))
    };
    let log = LogStore {
        db: db.clone(),
        log: tree("log")?,
        meta: tree("meta")?,
        _v: PhantomData,
    };
    let sm = StateMachine {
        db: db.clone(),
        sm: tree("sm")?,
        snap: tree("snapshot")?,
        version: Arc::new(AtomicU64::new(0)),
        events: None,
        snapshot_seq: 0,
        _v: PhantomData,
    };
    sm.version.store(
        sm.read_u64(VERSION).map_err(|e| Error::Storage(e.to_string()))?,
        Ordering::Release,
    );
    Ok((log, sm))
}

fn any<E: std::error::Error + 'static>(e: E) -> AnyError {
    AnyError::new(&e)
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, AnyError> {
    match tree.get(key).map_err(any)? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(any),
        None => Ok(None),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    serde_json::to_vec(value).map_err(any)
}

/// The log, the vote and the committed id.
pub struct LogStore<V> {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    _v: PhantomData<fn() -> V>,
}

impl<V> Clone for LogStore<V> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            log: self.log.clone(),
            meta: self.meta.clone(),
            _v: PhantomData,
        }
    }
}

impl<V> Debug for LogStore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("entries", &self.log.len()).finish()
    }
}

impl<V: Value> LogStore<V> {
    async fn flush(&self) -> Result<(), AnyError> {
        self.db.flush_async().await.map(|_| ()).map_err(any)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, AnyError> {
        match self.log.last().map_err(any)? {
            Some((_, bytes)) => {
                let entry: Entry<C<V>> = serde_json::from_slice(&bytes).map_err(any)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

impl<V: Value> RaftLogReader<C<V>> for LogStore<V> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<C<V>>>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        let iter = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => self.log.range(log_key(start)..log_key(end)),
            None => self.log.range(log_key(start)..),
        };
        let mut out = Vec::new();
        for item in iter {
            let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(any(e)))?;
            out.push(serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_logs(any(e)))?);
        }
        Ok(out)
    }
}

impl<V: Value> RaftLogStorage<C<V>> for LogStore<V> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<C<V>>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            read_json(&self.meta, LAST_PURGED).map_err(StorageIOError::read_logs)?;
        let last = self.last_entry_id().map_err(StorageIOError::read_logs)?;
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let bytes = to_json(vote).map_err(StorageIOError::write_vote)?;
        self.meta
            .insert(VOTE, bytes)
            .map_err(|e| StorageIOError::write_vote(any(e)))?;
        // The vote must be on disk before anyone hears of it: otherwise a restart could vote again.
        self.flush().await.map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(read_json(&self.meta, VOTE).map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let bytes = to_json(&committed).map_err(StorageIOError::write)?;
        self.meta
            .insert(COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(any(e)))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> =
            read_json(&self.meta, COMMITTED).map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C<V>>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<C<V>>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = to_json(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, e))?;
            batch.insert(&log_key(entry.log_id.index), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        // Acknowledge only once the entries are on disk: openraft counts this member towards a
        // commit from that moment.
        match self.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(log_key(log_id.index)..) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(any(e)))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.flush().await.map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: a crash between the two steps leaves extra entries
        // below it, which are harmless, never a gap.
        let bytes = to_json(&Some(log_id)).map_err(StorageIOError::write_logs)?;
        self.meta
            .insert(LAST_PURGED, bytes)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.flush().await.map_err(StorageIOError::write_logs)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=log_key(log_id.index)) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(any(e)))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.flush().await.map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}

/// A change of the applied state, in apply order. The application folds these into what it serves.
#[derive(Clone, Debug, PartialEq)]
pub enum StateEvent<V> {
    /// Replace everything: sent on subscription and after a snapshot is installed.
    Reset { version: u64, entries: BTreeMap<String, V> },
    /// A batch was applied and the version is now `version`.
    Changed { version: u64, changes: Vec<Change<V>> },
}

impl<V> StateEvent<V> {
    pub fn version(&self) -> u64 {
        match self {
            StateEvent::Reset { version, .. } | StateEvent::Changed { version, .. } => *version,
        }
    }
}

/// The snapshot document: the config version and every entry.
#[derive(Serialize, Deserialize)]
#[serde(bound = "V: Value")]
struct SnapshotBody<V> {
    version: u64,
    entries: BTreeMap<String, V>,
}

/// The applied state: keyed values and their config version.
pub struct StateMachine<V> {
    db: sled::Db,
    sm: sled::Tree,
    snap: sled::Tree,
    version: Arc<AtomicU64>,
    events: Option<mpsc::UnboundedSender<StateEvent<V>>>,
    snapshot_seq: u64,
    _v: PhantomData<fn() -> V>,
}

impl<V> Debug for StateMachine<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("version", &self.version.load(Ordering::Relaxed))
            .finish()
    }
}

impl<V: Value> StateMachine<V> {
    /// The config version applied so far, kept current as entries apply.
    pub fn version_handle(&self) -> Arc<AtomicU64> {
        self.version.clone()
    }

    /// Everything applied so far as a [`StateEvent::Reset`], and from now on every change, in
    /// order. Call before handing the state machine to openraft. A member serves this state
    /// at once, before it hears from any peer.
    pub fn subscribe(&mut self) -> Result<mpsc::UnboundedReceiver<StateEvent<V>>, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (version, entries) = self.read_all().map_err(|e| Error::Storage(e.to_string()))?;
        let _ = tx.send(StateEvent::Reset { version, entries });
        self.events = Some(tx);
        Ok(rx)
    }

    fn emit(&mut self, event: StateEvent<V>) {
        if let Some(tx) = &self.events
            && tx.send(event).is_err()
        {
            self.events = None;
        }
    }

    fn read_u64(&self, key: &[u8]) -> Result<u64, AnyError> {
        Ok(read_json::<u64>(&self.sm, key)?.unwrap_or(0))
    }

    fn read_all(&self) -> Result<(u64, BTreeMap<String, V>), AnyError> {
        let version = self.read_u64(VERSION)?;
        let mut entries = BTreeMap::new();
        for item in self.sm.scan_prefix(DATA_PREFIX) {
            let (key, bytes) = item.map_err(any)?;
            let key = String::from_utf8_lossy(&key[DATA_PREFIX.len()..]).into_owned();
            entries.insert(key, serde_json::from_slice(&bytes).map_err(any)?);
        }
        Ok((version, entries))
    }

    fn applied(&self) -> Result<AppliedState, AnyError> {
        let applied: Option<LogId<NodeId>> = read_json(&self.sm, APPLIED)?;
        let membership = read_json(&self.sm, MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    fn data_key(key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(DATA_PREFIX.len() + key.len());
        k.extend_from_slice(DATA_PREFIX);
        k.extend_from_slice(key.as_bytes());
        k
    }
}

impl<V: Value> RaftStateMachine<C<V>> for StateMachine<V> {
    type SnapshotBuilder = SnapshotBuilder<V>;

    async fn applied_state(&mut self) -> StorageResult<AppliedState> {
        Ok(self.applied().map_err(StorageIOError::read_state_machine)?)
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<C<V>>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut version = self.version.load(Ordering::Acquire);
        let mut batch = sled::Batch::default();
        let mut replies = Vec::new();
        let mut changed = Vec::new();
        let mut last = None;
        let mut membership = None;
        // What this call wrote so far, for the expectations of later batches in it.
        let mut pending: HashMap<Vec<u8>, Option<V>> = HashMap::new();
        for entry in entries {
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => {
                    let log_id = entry.log_id;
                    let mut met = true;
                    for e in &cmd.expect {
                        let key = Self::data_key(&e.key);
                        let current: Option<V> = match pending.get(&key) {
                            Some(v) => v.clone(),
                            None => read_json(&self.sm, &key).map_err(|err| StorageIOError::apply(log_id, err))?,
                        };
                        if current != e.value {
                            met = false;
                            break;
                        }
                    }
                    if !met {
                        replies.push(Applied {
                            version,
                            rejected: true,
                        });
                        continue;
                    }
                    version += 1;
                    for change in &cmd.changes {
                        let key = Self::data_key(&change.key);
                        match &change.value {
                            Some(v) => {
                                batch.insert(key.clone(), to_json(v).map_err(|e| StorageIOError::apply(log_id, e))?)
                            }
                            None => batch.remove(key.clone()),
                        }
                        pending.insert(key, change.value.clone());
                    }
                    changed.push((version, cmd.changes));
                }
                EntryPayload::Membership(m) => membership = Some(StoredMembership::new(Some(entry.log_id), m)),
            }
            replies.push(Applied {
                version,
                rejected: false,
            });
        }
        let Some(last) = last else { return Ok(replies) };
        let w = |e| StorageIOError::write_state_machine(e);
        batch.insert(APPLIED, to_json(&Some(last)).map_err(w)?);
        batch.insert(VERSION, to_json(&version).map_err(w)?);
        if let Some(m) = &membership {
            batch.insert(MEMBERSHIP, to_json(m).map_err(w)?);
        }
        self.sm.apply_batch(batch).map_err(|e| w(any(e)))?;
        // On disk before anyone serves it: a member restarted without a quorum comes back with
        // at least the version it served before (versions never go backwards on a member).
        if !changed.is_empty() {
            self.db.flush_async().await.map_err(|e| w(any(e)))?;
        }
        self.version.store(version, Ordering::Release);
        for (version, changes) in changed {
            self.emit(StateEvent::Changed { version, changes });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        // Read the state now: openraft builds the snapshot in another task while entries keep
        // applying, and the snapshot must be of one applied id.
        let state = self
            .read_all()
            .and_then(|(version, entries)| Ok((self.applied()?, version, entries)));
        SnapshotBuilder {
            state: Some(state),
            db: self.db.clone(),
            snap: self.snap.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Vec<u8>>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Vec<u8>>,
    ) -> StorageResult<()> {
        let sig = Some(meta.signature());
        let werr = |e| StorageIOError::write_snapshot(sig.clone(), e);
        let body: SnapshotBody<V> = serde_json::from_slice(&snapshot).map_err(|e| werr(any(e)))?;
        // One atomic batch: every old key goes, every new key comes, with the applied id.
        let mut batch = sled::Batch::default();
        for item in self.sm.iter() {
            let (key, _) = item.map_err(|e| werr(any(e)))?;
            batch.remove(key);
        }
        for (key, value) in &body.entries {
            batch.insert(Self::data_key(key), to_json(value).map_err(werr)?);
        }
        batch.insert(APPLIED, to_json(&meta.last_log_id).map_err(werr)?);
        batch.insert(MEMBERSHIP, to_json(&meta.last_membership).map_err(werr)?);
        batch.insert(VERSION, to_json(&body.version).map_err(werr)?);
        self.sm.apply_batch(batch).map_err(|e| werr(any(e)))?;
        let mut snap = sled::Batch::default();
        snap.insert(SNAP_META, to_json(meta).map_err(werr)?);
        snap.insert(SNAP_DATA, snapshot.as_slice());
        self.snap.apply_batch(snap).map_err(|e| werr(any(e)))?;
        self.db.flush_async().await.map_err(|e| werr(any(e)))?;
        self.version.store(body.version, Ordering::Release);
        self.emit(StateEvent::Reset {
            version: body.version,
            entries: body.entries,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<C<V>>>> {
        let rerr = |e| StorageIOError::read_snapshot(None, e);
        let meta: Option<SnapshotMeta<NodeId, Member>> = read_json(&self.snap, SNAP_META).map_err(rerr)?;
        let Some(meta) = meta else { return Ok(None) };
        let data = self.snap.get(SNAP_DATA).map_err(|e| rerr(any(e)))?.unwrap_or_default();
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data.to_vec()),
        }))
    }
}

type ReadState<V> = Result<(AppliedState, u64, BTreeMap<String, V>), AnyError>;

/// Serializes the state read when openraft asked for a builder, and stores it as the current snapshot.
pub struct SnapshotBuilder<V> {
    state: Option<ReadState<V>>,
    db: sled::Db,
    snap: sled::Tree,
    seq: u64,
}

impl<V> Debug for SnapshotBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBuilder").field("seq", &self.seq).finish()
    }
}

impl<V: Value> RaftSnapshotBuilder<C<V>> for SnapshotBuilder<V> {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<C<V>>> {
        let werr = |e| StorageIOError::write_snapshot(None, e);
        let state = self
            .state
            .take()
            .unwrap_or_else(|| Err(AnyError::error("snapshot builder used twice")));
        let ((last_log_id, last_membership), version, entries) = state.map_err(StorageIOError::read_state_machine)?;
        let data = to_json(&SnapshotBody { version, entries }).map_err(werr)?;
        let snapshot_id = match &last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let mut snap = sled::Batch::default();
        snap.insert(SNAP_META, to_json(&meta).map_err(werr)?);
        snap.insert(SNAP_DATA, data.as_slice());
        self.snap.apply_batch(snap).map_err(|e| werr(any(e)))?;
        self.db.flush_async().await.map_err(|e| werr(any(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}
