//! Proxy errors, tagged with the side that failed and whether a retry is safe.

use crate::pool::ConnectError;

/// Which side of the proxy an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSide {
    Client,
    Upstream,
}

/// Why a request could not be proxied. Each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no ready endpoints")]
    NoEndpoints,
    #[error("upstream timed out")]
    Timeout,
    #[error("request body larger than allowed")]
    BodyTooLarge,
    #[error("malformed request")]
    BadRequest,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream switched protocols without being asked to")]
    UnexpectedUpgrade,
    #[error("upstream: {0}")]
    Upstream(#[source] hyper::Error),
}

impl ProxyError {
    /// The side at fault, for metrics and logs.
    pub fn side(&self) -> ErrorSide {
        match self {
            ProxyError::BodyTooLarge | ProxyError::BadRequest => ErrorSide::Client,
            _ => ErrorSide::Upstream,
        }
    }

    /// Whether the request is known not to have reached any upstream, so that sending it
    /// elsewhere cannot apply it twice.
    pub fn retry_safe(&self) -> bool {
        matches!(self, ProxyError::NoEndpoints | ProxyError::Connect(_))
    }
}
