//! Config sources: where the objects the compiler reads come from.

pub mod kubernetes;
pub mod manifests;
