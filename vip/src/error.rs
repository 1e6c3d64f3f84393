//! The crate's errors: configuration that cannot work, an interface that cannot be chosen, a stale table.

use std::net::IpAddr;

use thiserror::Error;

/// A VIP pool or timing that must be refused before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("VIP {addr}: prefix /{prefix} is longer than the address ({max} bits)")]
    Prefix { addr: IpAddr, prefix: u8, max: u8 },
    #[error("VIP {addr}: not a unicast host address (unspecified, loopback, multicast or broadcast)")]
    NotUnicast { addr: IpAddr },
    #[error("VIP {addr}: interface name {name:?} is not a valid Linux interface name")]
    InterfaceName { addr: IpAddr, name: String },
    #[error("VIP {addr} is listed twice")]
    Duplicate { addr: IpAddr },
    #[error("timing: {0}")]
    Timing(String),
}

/// Why no interface could be chosen for a VIP that names none.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InterfaceError {
    #[error("VIP {addr}: no interface has an address in a subnet containing it; name one with `interface`")]
    NoSubnet { addr: IpAddr },
    #[error(
        "VIP {addr}: interfaces {first} and {second} both have a /{prefix} subnet containing it; name one with `interface`"
    )]
    Ambiguous {
        addr: IpAddr,
        prefix: u8,
        first: String,
        second: String,
    },
}

/// A proposed table that does not follow the applied one: it is ignored by every member alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("VIP table revision {proposed} does not follow the applied revision {applied}; ignored")]
pub struct StaleTable {
    pub applied: u64,
    pub proposed: u64,
}
