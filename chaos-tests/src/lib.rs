//! Harness for multi-node failover drills in network namespaces. Not built yet.
