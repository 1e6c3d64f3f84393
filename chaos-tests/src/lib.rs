//! Harness for raftgate's fault tests: an in-process test Kubernetes API server with fault injection.
//!
//! - `browser`: headless Chromium over the DevTools pipe, for the status page tests.
//! - `timeline`: the observations of a chaos run (ARP, probes, statuses, faults), rendered as a readable timeline.
//! - `schedule`: seeded fault schedules (a SplitMix64 PRNG) that keep a quorum, heal between faults and end quiet.
//! - `invariants`: one pure checker per chaos invariant (owners, settling, config, stability, availability, source, healing).
//! - `delay`: the delay line of `raftgate-test-delay` (packet delay and reordering without netem).
//! - `summary`: the Markdown table of many runs (violations, failover percentiles, failed requests).

pub mod apiserver;
pub mod browser;
pub mod cli;
pub mod delay;
pub mod invariants;
pub mod netns;
pub mod schedule;
pub mod summary;
pub mod timeline;
