//! openraft's storage test suite against the sled store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use raftgate_raft::store::{self, LogStore, StateMachine};
use raftgate_raft::{NodeId, TypeConfig};

type V = String;

struct Builder;

impl StoreBuilder<TypeConfig<V>, LogStore<V>, StateMachine<V>, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore<V>, StateMachine<V>), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        let (log, sm) = store::open::<V>(dir.path())
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::error(e.to_string())))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_suite() {
    Suite::test_all(Builder).unwrap();
}
