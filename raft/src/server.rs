//! The gRPC server side of peer RPC: one tonic service dispatching on the method path.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use openraft::Snapshot;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tokio::sync::watch;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::codec::BytesCodec;
use crate::error::Error;
use crate::network::{self, SnapshotHeader};
use crate::node::Inner;
use crate::tls::PeerTls;
use crate::types::{TypeConfig, Value};

/// Serve peer RPC on `listener` until `shutdown` turns true.
pub(crate) fn spawn<V: Value>(
    inner: Arc<Inner<V>>,
    listener: tokio::net::TcpListener,
    tls: Option<PeerTls>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(|e| Error::Tls(format!("peer server TLS: {e}")))?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let svc = RaftService { inner };
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = builder.serve_with_incoming_shutdown(svc, incoming, stop).await {
            tracing::error!(error = %e, "raft peer server stopped");
        }
    });
    Ok(())
}

struct RaftService<V: Value> {
    inner: Arc<Inner<V>>,
}

impl<V: Value> Clone for RaftService<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V: Value> NamedService for RaftService<V> {
    const NAME: &'static str = network::SERVICE;
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<V: Value> Service<http::Request<tonic::body::Body>> for RaftService<V> {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        let path: Option<&'static str> = match req.uri().path() {
            network::APPEND => Some(network::APPEND),
            network::VOTE => Some(network::VOTE),
            network::JOIN => Some(network::JOIN),
            network::REMOVE => Some(network::REMOVE),
            network::WRITE => Some(network::WRITE),
            network::HEALTH => Some(network::HEALTH),
            network::LEADER_CALL => Some(network::LEADER_CALL),
            network::CAMPAIGN => Some(network::CAMPAIGN),
            network::PRE_VOTE => Some(network::PRE_VOTE),
            network::SNAPSHOT => {
                return Box::pin(async move {
                    let mut grpc = Grpc::new(BytesCodec)
                        .max_decoding_message_size(network::MAX_MESSAGE)
                        .max_encoding_message_size(network::MAX_MESSAGE);
                    Ok(grpc.client_streaming(SnapshotMethod { inner }, req).await)
                });
            }
            _ => None,
        };
        match path {
            Some(path) => Box::pin(async move {
                let mut grpc = Grpc::new(BytesCodec)
                    .max_decoding_message_size(network::MAX_MESSAGE)
                    .max_encoding_message_size(network::MAX_MESSAGE);
                Ok(grpc.unary(UnaryMethod { inner, path }, req).await)
            }),
            None => {
                let msg = format!("no method {}", req.uri().path());
                Box::pin(async move { Ok(Status::unimplemented(msg).into_http()) })
            }
        }
    }
}

struct UnaryMethod<V: Value> {
    inner: Arc<Inner<V>>,
    path: &'static str,
}

impl<V: Value> Service<Request<Bytes>> for UnaryMethod<V> {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let inner = self.inner.clone();
        let path = self.path;
        Box::pin(async move {
            let forwarded = req.metadata().contains_key(network::FORWARDED);
            let body = req.into_inner();
            let reply = match path {
                network::APPEND => {
                    let rpc: AppendEntriesRequest<TypeConfig<V>> = network::decode(&body)?;
                    let r = inner.raft.append_entries(rpc).await;
                    // Contact with a leader this member follows; a deposed leader's call (answered
                    // with the higher vote) is none.
                    if r.as_ref()
                        .is_ok_and(|resp| !matches!(resp, AppendEntriesResponse::HigherVote(_)))
                        && let Ok(mut t) = inner.last_append.lock()
                    {
                        *t = Some(Instant::now());
                    }
                    network::encode(&r)?
                }
                network::VOTE => {
                    let rpc = network::decode(&body)?;
                    network::encode(&inner.raft.vote(rpc).await)?
                }
                network::HEALTH => network::encode(&inner.status())?,
                network::PRE_VOTE => network::encode(&inner.grant_pre_vote(&network::decode(&body)?))?,
                network::LEADER_CALL => inner.leader_call(body).await?,
                network::CAMPAIGN => {
                    tracing::info!("the leader is leaving and asks this member to stand for election");
                    inner
                        .raft
                        .trigger()
                        .elect()
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    bytes::Bytes::new()
                }
                _ => inner.handle_app(path, body, forwarded).await?,
            };
            Ok(Response::new(reply))
        })
    }
}

struct SnapshotMethod<V: Value> {
    inner: Arc<Inner<V>>,
}

impl<V: Value> Service<Request<Streaming<Bytes>>> for SnapshotMethod<V> {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut stream = req.into_inner();
            let header: SnapshotHeader = match stream.next().await {
                Some(first) => network::decode(&first?)?,
                None => return Err(Status::invalid_argument("empty snapshot stream")),
            };
            let mut data = Vec::new();
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk?);
            }
            tracing::info!(bytes = data.len(), meta = %header.meta, "received a snapshot");
            let snapshot = Snapshot {
                meta: header.meta,
                snapshot: Box::new(data),
            };
            let r = inner.raft.install_full_snapshot(header.vote, snapshot).await;
            if r.is_ok()
                && let Ok(mut t) = inner.last_append.lock()
            {
                *t = Some(Instant::now());
            }
            Ok(Response::new(network::encode(&r)?))
        })
    }
}
