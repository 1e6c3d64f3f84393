//! Config sources: where the objects the compiler reads come from.

pub mod manifests;
pub mod kubernetes;
