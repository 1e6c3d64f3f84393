//! Request ids: 32 random hex digits, like nginx's `$request_id`.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
}

fn next() -> u64 {
    STATE.with(|s| {
        // xorshift64*, seeded per thread from the OS-randomised hasher keys.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A random 64-bit number (xorshift64*, seeded per thread from the OS): not for secrets.
pub(crate) fn random() -> u64 {
    next()
}

/// A fresh request id, as a header value.
pub(crate) fn request_id() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (half, x) in [next(), next()].into_iter().enumerate() {
        for i in 0..16 {
            buf[half * 16 + i] = HEX[((x >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    // Always valid: 32 ASCII hex digits.
    http::HeaderValue::from_bytes(&buf).unwrap_or_else(|_| http::HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let a = super::request_id();
        let b = super::request_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
