//! Harness for raftgate's fault tests: an in-process test Kubernetes API server with fault injection.

pub mod apiserver;
pub mod browser;
pub mod cli;
pub mod netns;
