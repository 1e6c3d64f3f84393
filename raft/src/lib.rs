//! raftgate's Raft group: replicated, generic application state (openraft, sled, tonic). Not built yet.
