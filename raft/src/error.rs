//! Errors of the raft crate.

/// What can go wrong in the Raft group, as seen by the application.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("raft storage: {0}")]
    Storage(String),
    #[error("peer TLS: {0}")]
    Tls(String),
    #[error("certificate generation: {0}")]
    Cert(String),
    #[error("peer {addr}: {message}")]
    Peer { addr: String, message: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader is known yet; try again once the group has elected one")]
    NoLeader,
    #[error("refused: {0}")]
    Refused(String),
    #[error("listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}
