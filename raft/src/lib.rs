//! raftgate's Raft group: a replicated, versioned key-value state generic over its values (openraft, sled, tonic).
//!
//! The crate knows nothing of routing. The application proposes [`Batch`]es of keyed changes on
//! the leader; every member applies them in log order, raises the config version by one per
//! batch, and reports each change through [`StateEvent`]s, starting with everything already on
//! disk so a member serves its last state before it hears from any peer.

pub mod codec;
pub mod error;
pub mod network;
pub mod node;
mod server;
pub mod stats;
pub mod store;
pub mod tls;
pub mod types;

pub use error::Error;
pub use node::{LeaderHandler, MemberView, NodeStatus, RaftNode, Settings};
pub use store::{LogStore, StateEvent, StateMachine};
pub use tls::PeerTls;
pub use types::{Applied, Batch, Change, Member, NodeId, Raft, TypeConfig, Value};
