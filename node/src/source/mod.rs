//! Config sources: where the objects the compiler reads come from.

pub mod kubernetes;
pub mod manifests;

use std::fmt::Write;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// What this node's config source did, for `/metrics`. Only the node running the source
/// counts: every node alone, the leader in Raft mode (a former leader keeps its counts).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Compilations handed to the data plane or the Raft group.
    pub compilations: AtomicU64,
    /// Compilations the Raft group did not commit (retried).
    pub commit_failures: AtomicU64,
    /// Manifest files or objects that could not be read; failed Kubernetes connects, watches
    /// and Secret reads.
    pub errors: AtomicU64,
    /// When a compilation was last taken, in milliseconds since the Unix epoch (0: never).
    pub last_publish_unix_ms: AtomicU64,
}

impl SourceStats {
    pub(crate) fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus lines.
    pub fn render(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, v) in [
            (
                "raftgate_source_compilations_total",
                "Compilations of the config source's objects this node published.",
                load(&self.compilations),
            ),
            (
                "raftgate_source_commit_failures_total",
                "Compilations the Raft group did not commit (retried).",
                load(&self.commit_failures),
            ),
            (
                "raftgate_source_errors_total",
                "Manifests or objects the source could not read; failed Kubernetes API connects, watches and Secret reads.",
                load(&self.errors),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP raftgate_source_last_publish_timestamp_seconds When this node's source last published a compilation (Unix time; 0: never).\n# TYPE raftgate_source_last_publish_timestamp_seconds gauge\nraftgate_source_last_publish_timestamp_seconds {}",
            load(&self.last_publish_unix_ms) as f64 / 1e3
        );
    }
}
