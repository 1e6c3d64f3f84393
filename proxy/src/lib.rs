//! raftgate's data plane: the routing model, its compiled lookup, and the L7 proxy.
//!
//! * [`model`]: the routing table as plain, versioned data with a [`model::diff`].
//! * [`router`]: the table compiled for lookups (Kubernetes host and path rules).
//! * [`dataplane`]: the live snapshot, swapped atomically.
//! * [`server`] and [`handler`]: listeners and the request path.
//! * [`upstream`] and [`pool`]: endpoint selection, passive health and connections.
//! * [`select`]: per-request choices: canary, affinity cookie, hash-by key.
//! * [`tls`]: SNI certificate selection.

pub mod access;
pub mod auth;
pub mod dataplane;
pub mod edge;
pub mod error;
pub mod handler;
mod id;
pub mod l4;
pub mod limit;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod proxy_protocol;
pub mod router;
pub mod select;
pub mod server;
pub mod tls;
pub mod upstream;

pub use dataplane::Dataplane;
pub use model::RoutingTable;
