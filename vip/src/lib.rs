//! Floating IP ownership: a pure lease core and a netlink/ARP shell. Not built yet.
