//! The raftgate node: config, config sources, the Ingress compiler, the admin API, and wiring.

pub mod admin;
pub mod app;
pub mod cluster;
pub mod compiler;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod events;
pub mod migrate;
pub mod objects;
pub mod replicated;
pub mod source;
pub mod vips;

pub use app::Node;
pub use config::Config;
