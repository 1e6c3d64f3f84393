//! Fuzzes the PROXY protocol parser: it must never panic, never claim more bytes than it
//! was given, and decide a header by its own bytes alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftgate_proxy::proxy_protocol::MAX_LEN;
use raftgate_proxy::proxy_protocol::Parsed;
use raftgate_proxy::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Header(h)) => {
            assert!(h.len <= data.len() && h.len <= MAX_LEN);
            assert_eq!(h.source.is_some(), h.destination.is_some());
            assert_eq!(parse(&data[..h.len]), Ok(Parsed::Header(h)));
        }
        Ok(Parsed::Incomplete) => assert!(data.len() < MAX_LEN),
        Err(_) => {}
    }
});
