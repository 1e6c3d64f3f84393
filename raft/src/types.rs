//! The type configuration of the Raft group: members, commands and responses, generic over the value type.

use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A member's id: unique in the cluster, chosen by the operator and never reused.
pub type NodeId = u64;

/// What the replicated state stores under each key. Anything that round-trips through serde.
pub trait Value: Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static {}
impl<T> Value for T where T: Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static {}

/// A member of the group, as stored in the Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where peers reach its Raft gRPC endpoint (`host:port`).
    pub addr: String,
    /// Its admin HTTP endpoint (`host:port`), shown by `ctl status`; may be empty.
    #[serde(default)]
    pub admin: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// One keyed change: `value: None` deletes the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "V: Value")]
pub struct Change<V> {
    pub key: String,
    pub value: Option<V>,
}

/// The only command of the state machine: a batch of keyed changes applied atomically. Every
/// applied batch raises the config version by one, so versions only grow, whoever proposes.
///
/// A batch with `expect` is conditional: it applies only if every key named there holds exactly
/// the value given (`None`: absent) when the batch's turn comes in the log; otherwise it changes
/// nothing, not even the version, on every member alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "V: Value")]
pub struct Batch<V> {
    pub changes: Vec<Change<V>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<Change<V>>,
}

impl<V> Batch<V> {
    /// An unconditional batch.
    pub fn new(changes: Vec<Change<V>>) -> Self {
        Self {
            changes,
            expect: Vec::new(),
        }
    }
}

/// What applying a log entry returns: the config version after it, and whether a conditional
/// batch's expectations failed (then nothing changed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub version: u64,
    #[serde(default)]
    pub rejected: bool,
}

/// openraft's type configuration for values of type `V`. A zero-sized marker.
pub struct TypeConfig<V>(PhantomData<fn() -> V>);

impl<V> Clone for TypeConfig<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for TypeConfig<V> {}
impl<V> Default for TypeConfig<V> {
    fn default() -> Self {
        Self(PhantomData)
    }
}
impl<V> PartialEq for TypeConfig<V> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<V> Eq for TypeConfig<V> {}
impl<V> PartialOrd for TypeConfig<V> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<V> Ord for TypeConfig<V> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}
impl<V> fmt::Debug for TypeConfig<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}

impl<V: Value> openraft::RaftTypeConfig for TypeConfig<V> {
    type D = Batch<V>;
    type R = Applied;
    type NodeId = NodeId;
    type Node = Member;
    type Entry = openraft::Entry<Self>;
    /// A snapshot travels and rests as one serialized document (see `store`).
    type SnapshotData = Vec<u8>;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<Self>;
}

/// The handle of a running group member.
pub type Raft<V> = openraft::Raft<TypeConfig<V>>;
