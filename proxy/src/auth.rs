//! HTTP basic authentication against an htpasswd file (ingress-nginx `auth-type: basic`).
//!
//! The file is the `auth` key of the Secret named by `auth-secret`: one `user:hash` per
//! line, as written by Apache's `htpasswd`. Supported hashes:
//!
//! | scheme     | prefix                  | made by          |
//! | ---------- | ----------------------- | ---------------- |
//! | bcrypt     | `$2y$`, `$2a$`, `$2b$`  | `htpasswd -B`    |
//! | Apache MD5 | `$apr1$`                | `htpasswd -m`    |
//! | SHA-1      | `{SHA}`                 | `htpasswd -s`    |
//!
//! Plain-text passwords, crypt(3) DES and every other scheme are refused when the file is
//! parsed, with the line number (never the hash) in the error.
//!
//! bcrypt is slow on purpose (milliseconds at htpasswd's default cost 5, and each step of
//! cost doubles it), and a browser sends the same credentials on every request. So each
//! [`Htpasswd`] keeps a small cache of recent *successful* bcrypt checks: an HMAC-SHA256
//! tag of `(user, password)` under a random key that never leaves the process, at most
//! [`CACHE_CAPACITY`] of them, oldest evicted first. The password itself is never stored.
//! Failures are never cached, so guessing still pays bcrypt every time. The cache lives
//! and dies with its [`Htpasswd`]: a changed Secret is parsed into a new one, with an
//! empty cache.
//!
//! [`Htpasswd::verify`] can block for as long as one bcrypt check takes; an async caller
//! with high-cost hashes should run it on a blocking thread.

use std::collections::HashMap;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::sync::PoisonError;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::GeneralPurpose;
use base64::engine::GeneralPurposeConfig;
use md5::Digest;
use md5::Md5;
use ring::digest;
use ring::hmac;
use subtle::ConstantTimeEq;

/// How many successful bcrypt checks each [`Htpasswd`] remembers (32-byte tags, so a few
/// tens of KiB at most).
pub const CACHE_CAPACITY: usize = 1024;

/// Why an htpasswd file was refused. Lines are numbered from 1.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("htpasswd line {line}: expected `user:hash`")]
    Malformed { line: usize },
    #[error("htpasswd line {line}: plain-text passwords are not supported; hash it with `htpasswd -B`")]
    PlainText { line: usize },
    #[error(
        "htpasswd line {line}: crypt(3) DES hashes are not supported (they only use 8 characters \
         of the password); hash it with `htpasswd -B`"
    )]
    Des { line: usize },
    #[error("htpasswd line {line}: unsupported hash scheme `{scheme}`; use bcrypt, $apr1$ or {{SHA}}")]
    UnsupportedScheme { line: usize, scheme: String },
    #[error("htpasswd line {line}: malformed {scheme} hash")]
    InvalidHash { line: usize, scheme: &'static str },
}

/// A parsed htpasswd file: users and their password hashes.
pub struct Htpasswd {
    users: HashMap<String, Hash>,
    cache: VerifyCache,
}

/// One stored hash, decoded once at parse time.
enum Hash {
    Bcrypt {
        cost: u32,
        salt: [u8; 16],
        digest: [u8; 23],
    },
    Apr1 {
        salt: String,
        /// The 22 crypt-base64 characters after the salt.
        encoded: [u8; 22],
    },
    Sha1([u8; 20]),
}

impl Htpasswd {
    /// Parses htpasswd text. Blank lines and lines starting with `#` are skipped; text after
    /// a second `:` is a comment, as nginx allows. If a user appears twice the first line
    /// wins, as in nginx. A file with no users parses, and then denies everyone.
    pub fn parse(text: &str) -> Result<Htpasswd, AuthError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let Some((user, rest)) = content.split_once(':') else {
                return Err(AuthError::Malformed { line });
            };
            let hash = rest.split(':').next().unwrap_or_default().trim();
            if user.is_empty() || hash.is_empty() {
                return Err(AuthError::Malformed { line });
            }
            let hash = Hash::parse(hash, line)?;
            users.entry(user.to_string()).or_insert(hash);
        }
        Ok(Htpasswd {
            users,
            cache: VerifyCache::new(CACHE_CAPACITY),
        })
    }

    /// Whether `password` is `user`'s. Digests are compared in constant time.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.check(user, password) != Verdict::Denied
    }

    /// How many users the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn check(&self, user: &str, password: &str) -> Verdict {
        let Some(hash) = self.users.get(user) else {
            return Verdict::Denied;
        };
        let Hash::Bcrypt { cost, salt, digest } = hash else {
            if hash.matches(password) {
                return Verdict::Verified;
            }
            return Verdict::Denied;
        };
        let tag = self.cache.tag(user, password);
        if tag.is_some_and(|tag| self.cache.contains(&tag)) {
            return Verdict::Cached;
        }
        if !bcrypt_matches(*cost, *salt, digest, password) {
            return Verdict::Denied;
        }
        if let Some(tag) = tag {
            self.cache.insert(tag);
        }
        Verdict::Verified
    }
}

impl fmt::Debug for Htpasswd {
    // Hashes stay out of logs: only the user names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("Htpasswd").field("users", &users).finish()
    }
}

/// The outcome of one check, with whether the cache answered (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Denied,
    Verified,
    Cached,
}

impl Hash {
    fn parse(hash: &str, line: usize) -> Result<Hash, AuthError> {
        if let Some(rest) = hash
            .strip_prefix("$2y$")
            .or_else(|| hash.strip_prefix("$2a$"))
            .or_else(|| hash.strip_prefix("$2b$"))
        {
            return parse_bcrypt(rest).ok_or(AuthError::InvalidHash { line, scheme: "bcrypt" });
        }
        if let Some(rest) = hash.strip_prefix("$apr1$") {
            return parse_apr1(rest).ok_or(AuthError::InvalidHash { line, scheme: "$apr1$" });
        }
        if let Some(rest) = hash.strip_prefix("{SHA}") {
            return parse_sha1(rest).ok_or(AuthError::InvalidHash { line, scheme: "{SHA}" });
        }
        Err(refusal(hash, line))
    }

    /// Checks the fast schemes; bcrypt goes through [`bcrypt_matches`] and the cache.
    fn matches(&self, password: &str) -> bool {
        match self {
            Hash::Bcrypt { cost, salt, digest } => bcrypt_matches(*cost, *salt, digest, password),
            Hash::Apr1 { salt, encoded } => apr1(password.as_bytes(), salt.as_bytes()).ct_eq(encoded).into(),
            Hash::Sha1(expected) => digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes())
                .as_ref()
                .ct_eq(expected)
                .into(),
        }
    }
}

/// The error for a hash no supported scheme claims. It names the scheme's prefix at most,
/// never the hash.
fn refusal(hash: &str, line: usize) -> AuthError {
    let prefix = match hash.as_bytes().first() {
        Some(b'$') => hash
            .get(1..)
            .and_then(|rest| rest.split_once('$'))
            .map(|(id, _)| format!("${id}$")),
        Some(b'{') => hash.split_once('}').map(|(id, _)| format!("{id}}}")),
        _ => None,
    };
    match prefix {
        Some(p) if p == "{PLAIN}" => AuthError::PlainText { line },
        Some(p) if p.len() <= 16 && p.bytes().all(|b| b.is_ascii_graphic()) => {
            AuthError::UnsupportedScheme { line, scheme: p }
        }
        Some(_) => AuthError::UnsupportedScheme {
            line,
            scheme: "unknown".to_string(),
        },
        // Classic crypt(3): two salt characters and eleven of hash, all from its alphabet.
        None if hash.len() == 13 && hash.bytes().all(is_crypt_char) => AuthError::Des { line },
        None => AuthError::PlainText { line },
    }
}

/// The alphabet of crypt(3), MD5-crypt and bcrypt's own base64.
const CRYPT_ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn is_crypt_char(b: u8) -> bool {
    CRYPT_ALPHABET.contains(&b)
}

/// `NN$` + 22 characters of salt + 31 of digest, after the `$2y$` prefix.
fn parse_bcrypt(rest: &str) -> Option<Hash> {
    let (cost, rest) = rest.split_once('$')?;
    if cost.len() != 2 || !cost.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cost: u32 = cost.parse().ok()?;
    if !(4..=31).contains(&cost) || rest.len() != 53 || !rest.is_ascii() {
        return None;
    }
    let (salt_b64, digest_b64) = rest.split_at(22);
    let mut salt = [0u8; 16];
    let mut digest = [0u8; 23];
    let salt_len = bcrypt::BASE_64.decode_slice(salt_b64, &mut salt).ok()?;
    let digest_len = bcrypt::BASE_64.decode_slice(digest_b64, &mut digest).ok()?;
    (salt_len == 16 && digest_len == 23).then_some(Hash::Bcrypt { cost, salt, digest })
}

fn bcrypt_matches(cost: u32, salt: [u8; 16], expected: &[u8; 23], password: &str) -> bool {
    // As every bcrypt: the password is NUL-terminated and cut at 72 bytes, so the slice
    // below holds 1..=72 bytes, which `bcrypt::bcrypt` requires (it asserts), and `cost`
    // is at most 31 (checked by `parse_bcrypt`), which it also asserts.
    let password = password.as_bytes();
    let len = password.len().min(72);
    let mut key = [0u8; 72];
    key[..len].copy_from_slice(&password[..len]);
    let used = (len + 1).min(72);
    let output = bcrypt::bcrypt(cost, salt, &key[..used]);
    output[..23].ct_eq(expected).into()
}

/// `salt$` + 22 characters, after the `$apr1$` prefix. The salt is at most 8 characters.
fn parse_apr1(rest: &str) -> Option<Hash> {
    let (salt, encoded) = rest.split_once('$')?;
    if salt.len() > 8 || salt.contains(['$', ':']) {
        return None;
    }
    let encoded: [u8; 22] = encoded.as_bytes().try_into().ok()?;
    encoded.iter().all(|&b| is_crypt_char(b)).then(|| Hash::Apr1 {
        salt: salt.to_string(),
        encoded,
    })
}

/// Apache's MD5-crypt (`$apr1$`): Poul-Henning Kamp's FreeBSD MD5-crypt with Apache's
/// magic string, as `apr_md5_encode` in APR. Returns the 22 characters after the salt.
fn apr1(password: &[u8], salt: &[u8]) -> [u8; 22] {
    const MAGIC: &[u8] = b"$apr1$";

    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt: [u8; 16] = alt.finalize().into();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alt[..chunk.len()]);
    }
    // One byte per bit of the length: a NUL for a set bit, else the first password byte
    // (which exists whenever the loop runs at all).
    let mut bits = password.len();
    while bits > 0 {
        match bits & 1 {
            1 => ctx.update([0u8]),
            _ => ctx.update(&password[..1]),
        }
        bits >>= 1;
    }
    let mut sum: [u8; 16] = ctx.finalize().into();

    for round in 0..1000 {
        let mut ctx = Md5::new();
        match round % 2 {
            1 => ctx.update(password),
            _ => ctx.update(sum),
        }
        if round % 3 != 0 {
            ctx.update(salt);
        }
        if round % 7 != 0 {
            ctx.update(password);
        }
        match round % 2 {
            1 => ctx.update(sum),
            _ => ctx.update(password),
        }
        sum = ctx.finalize().into();
    }

    // The digest's bytes, in MD5-crypt's order, as little-endian groups of 6 bits.
    let groups = [
        (u32::from(sum[0]) << 16) | (u32::from(sum[6]) << 8) | u32::from(sum[12]),
        (u32::from(sum[1]) << 16) | (u32::from(sum[7]) << 8) | u32::from(sum[13]),
        (u32::from(sum[2]) << 16) | (u32::from(sum[8]) << 8) | u32::from(sum[14]),
        (u32::from(sum[3]) << 16) | (u32::from(sum[9]) << 8) | u32::from(sum[15]),
        (u32::from(sum[4]) << 16) | (u32::from(sum[10]) << 8) | u32::from(sum[5]),
    ];
    let mut out = [0u8; 22];
    let mut at = 0;
    let mut emit = |mut value: u32, chars: usize| {
        for _ in 0..chars {
            out[at] = CRYPT_ALPHABET[(value & 0x3f) as usize];
            value >>= 6;
            at += 1;
        }
    };
    for group in groups {
        emit(group, 4);
    }
    emit(u32::from(sum[11]), 2);
    out
}

/// Base64 of a 20-byte SHA-1 digest, after the `{SHA}` prefix.
fn parse_sha1(rest: &str) -> Option<Hash> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
    let digest: [u8; 20] = bytes.try_into().ok()?;
    Some(Hash::Sha1(digest))
}

/// Standard base64 that takes credentials with or without their `=` padding.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The user and password of an `Authorization: Basic base64(user:password)` header value.
/// The scheme is case-insensitive and spaces around the parts are ignored. `None` for any
/// other scheme, bad base64, a missing `:`, or credentials that are not UTF-8.
pub fn parse_basic_authorization(header: &str) -> Option<(String, String)> {
    let (scheme, credentials) = header.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASIC.decode(credentials.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Tags of recently verified `(user, password)` pairs; see the module docs.
struct VerifyCache {
    /// `None` if the system's random generator failed: then nothing is cached.
    key: Option<hmac::Key>,
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    tags: HashSet<[u8; 32]>,
    /// Insertion order, oldest first, for eviction.
    order: VecDeque<[u8; 32]>,
}

impl VerifyCache {
    fn new(capacity: usize) -> VerifyCache {
        let rng = ring::rand::SystemRandom::new();
        VerifyCache {
            key: hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok(),
            capacity,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The keyed tag of a pair. The user's length goes first, so that no two distinct
    /// pairs feed the MAC the same bytes.
    fn tag(&self, user: &str, password: &str) -> Option<[u8; 32]> {
        let key = self.key.as_ref()?;
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password.as_bytes());
        ctx.sign().as_ref().try_into().ok()
    }

    fn contains(&self, tag: &[u8; 32]) -> bool {
        // A panic elsewhere while holding the lock leaves the sets consistent enough
        // (at worst one entry short), so poisoning is ignored.
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.tags.contains(tag)
    }

    fn insert(&self, tag: [u8; 32]) {
        if self.capacity == 0 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !seen.tags.insert(tag) {
            return;
        }
        seen.order.push_back(tag);
        while seen.order.len() > self.capacity {
            if let Some(old) = seen.order.pop_front() {
                seen.tags.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with Apache `htpasswd` 2.4.x (apache2-utils 2.4.71, Debian 12):
    //   htpasswd -nbB alice 'correct horse'        (bcrypt, default cost 5)
    //   htpasswd -nbB -C 4 bob 's3cr3t'
    //   htpasswd -nbB carol "$(printf 'a%.0s' $(seq 1 72))"   (72 × 'a')
    //   htpasswd -nbB dave 'pässwörd'
    //   htpasswd -nbs erin 'hunter2'
    //   htpasswd -nbs frank ''
    //   htpasswd -nbm grace 'open sesame'
    //   htpasswd -nbm heidi 'a much longer password, past sixteen bytes'
    //   htpasswd -nbm ivan ''
    //   htpasswd -nbm judy 'pässwörd'
    const ALICE: &str = "alice:$2y$05$imJePb1wASgV7xAtCTTAZOlT4BBcwVg8A5x1GI.cAdNpm0YCX.z/C";
    const BOB: &str = "bob:$2y$04$NHrO78RnOwYv5Gq4jFVQxuKoji5kdn5X4ky35zLMGOvXQ92b1qltC";
    const CAROL: &str = "carol:$2y$05$5ApKCGKOMmpfW6XOmwqgzev5Z7fpflK3dL5N0LEsKMC8rz7WNChky";
    const DAVE: &str = "dave:$2y$05$ndrbl0A0BMXFAJT8LFXDBepV2KNHpZ92YVkjM8xYQ46oa3gh5.4CG";
    const ERIN: &str = "erin:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=";
    const FRANK: &str = "frank:{SHA}2jmj7l5rSw0yVb/vlWAYkK/YBwk=";
    const GRACE: &str = "grace:$apr1$fCMJMlke$0PMuWRZhgPQEthEUkvWqo/";
    const HEIDI: &str = "heidi:$apr1$CMb30oW7$DJ1BrVbYIelu8fJLIjv1m0";
    const IVAN: &str = "ivan:$apr1$S2gKrRW2$Q1fEaS.vY/pNsQUBYLaFD.";
    const JUDY: &str = "judy:$apr1$fkJmWzKk$SNQvm19o98u7etohF.mui/";
    // Also from `htpasswd` 2.4.x, for the schemes we refuse:
    //   htpasswd -nbp mallory plain;  htpasswd -nbd oscar crypt;
    //   htpasswd -nb2 peggy sha256;   htpasswd -nb5 trent sha512
    const MALLORY: &str = "mallory:plain";
    const OSCAR: &str = "oscar:5Ww3klcCLc5cc";
    const PEGGY: &str = "peggy:$5$RIEOr73/Ces7tGAf$tMiiLdo6a49AdDRiJzpncWYiTBHxUV0Qb.Sqn21hPX0";
    const TRENT: &str = "trent:$6$dzfMb0QV9mQYRAxl$EGq//B0R5Tg51ayoiEdQozq3wgIk/jBkxQ.o2JAa21hPagkQhziu.leqsllL7MebGbk2xgsjHgqCaMhQkC4rb.";

    fn file(lines: &[&str]) -> Htpasswd {
        Htpasswd::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn bcrypt_known_answers() {
        let h = file(&[ALICE, BOB, CAROL, DAVE]);
        assert!(h.verify("alice", "correct horse"));
        assert!(!h.verify("alice", "correct horse "));
        assert!(!h.verify("alice", "Correct horse"));
        assert!(!h.verify("alice", ""));
        assert!(h.verify("bob", "s3cr3t"));
        assert!(!h.verify("bob", "s3cr3"));
        assert!(h.verify("dave", "pässwörd"));
        assert!(!h.verify("dave", "passwort"));
        // bcrypt reads 72 bytes: `htpasswd -v` also accepts 80 × 'a' for carol.
        assert!(h.verify("carol", &"a".repeat(72)));
        assert!(h.verify("carol", &"a".repeat(80)));
        assert!(!h.verify("carol", &"a".repeat(71)));
    }

    #[test]
    fn bcrypt_prefixes_2a_and_2b() {
        // htpasswd writes only $2y$; for ASCII passwords $2a$ and $2b$ hash the same.
        for prefix in ["$2a$", "$2b$"] {
            let line = ALICE.replace("$2y$", prefix);
            let h = Htpasswd::parse(&line).unwrap();
            assert!(h.verify("alice", "correct horse"), "{prefix}");
            assert!(!h.verify("alice", "wrong"), "{prefix}");
        }
    }

    #[test]
    fn sha1_known_answers() {
        let h = file(&[ERIN, FRANK]);
        assert!(h.verify("erin", "hunter2"));
        assert!(!h.verify("erin", "hunter3"));
        assert!(h.verify("frank", ""));
        assert!(!h.verify("frank", " "));
    }

    #[test]
    fn apr1_known_answers() {
        let h = file(&[GRACE, HEIDI, IVAN, JUDY]);
        assert!(h.verify("grace", "open sesame"));
        assert!(!h.verify("grace", "open sesame!"));
        assert!(h.verify("heidi", "a much longer password, past sixteen bytes"));
        assert!(!h.verify("heidi", "a much longer password, past sixteen byte"));
        assert!(h.verify("ivan", ""));
        assert!(!h.verify("ivan", "x"));
        assert!(h.verify("judy", "pässwörd"));
        assert!(!h.verify("judy", "passwörd"));
    }

    #[test]
    fn unknown_users_and_cross_checks() {
        let h = file(&[ALICE, ERIN, GRACE]);
        assert_eq!(h.len(), 3);
        assert!(!h.verify("mallory", "correct horse"));
        assert!(!h.verify("", ""));
        assert!(!h.verify("Alice", "correct horse"));
        // One user's password is not another's.
        assert!(!h.verify("erin", "correct horse"));
        assert!(!h.verify("grace", "hunter2"));
    }

    #[test]
    fn comments_blank_lines_crlf_and_trailing_fields() {
        let text = format!("# made by htpasswd\r\n\r\n   \n{ERIN}\r\n  # indented comment\n{GRACE}:a comment\n");
        let h = Htpasswd::parse(&text).unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.verify("erin", "hunter2"));
        assert!(h.verify("grace", "open sesame"));
    }

    #[test]
    fn first_entry_for_a_user_wins() {
        let h = file(&[ERIN, "erin:{SHA}2jmj7l5rSw0yVb/vlWAYkK/YBwk="]);
        assert!(h.verify("erin", "hunter2"));
        assert!(!h.verify("erin", ""));
    }

    #[test]
    fn empty_file_denies_everyone() {
        let h = Htpasswd::parse("\n# nobody\n").unwrap();
        assert!(h.is_empty());
        assert!(!h.verify("alice", "correct horse"));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        for (text, want) in [
            ("no colon here", 1),
            (":{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=", 1),
            ("# ok\nerin:", 2),
            ("# ok\n\nerin:   ", 3),
        ] {
            match Htpasswd::parse(text) {
                Err(AuthError::Malformed { line }) => assert_eq!(line, want, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_hashes_are_invalid_and_never_echoed() {
        let cases = [
            // bcrypt: short, bad cost, cost out of range, bad alphabet
            "u:$2y$05$imJePb1wASgV7xAtCTTAZOlT4BBcwVg8A5x1GI.cAdNpm0YCX.z/",
            "u:$2y$5$imJePb1wASgV7xAtCTTAZOlT4BBcwVg8A5x1GI.cAdNpm0YCX.z/C",
            "u:$2y$32$imJePb1wASgV7xAtCTTAZOlT4BBcwVg8A5x1GI.cAdNpm0YCX.z/C",
            "u:$2y$03$imJePb1wASgV7xAtCTTAZOlT4BBcwVg8A5x1GI.cAdNpm0YCX.z/C",
            "u:$2y$05$imJePb1wASgV7xAtCTTAZOlT4BBcwVg8A5x1GI.cAdNpm0YCX.z/+",
            "u:$2y$05$imJePb1wASgV7xAtCTTAZOlT4BBcwVg8A5x1GI.cAdNpm0YCX.z/é",
            // apr1: salt too long, short digest, bad alphabet, no salt separator
            "u:$apr1$fCMJMlke9$0PMuWRZhgPQEthEUkvWqo/",
            "u:$apr1$fCMJMlke$0PMuWRZhgPQEthEUkvWqo",
            "u:$apr1$fCMJMlke$0PMuWRZhgPQEthEUkvWq+/",
            "u:$apr1$fCMJMlke0PMuWRZhgPQEthEUkvWqo/",
            // SHA: bad base64, wrong length
            "u:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0",
            "u:{SHA}*7u9ZqY9S/F0eUBXjsPQEDUw4h0=",
            "u:{SHA}2jmj7l5rSw0yVb/vlWAYkK/YBw==",
        ];
        for text in cases {
            let err = Htpasswd::parse(&format!("# header\n{text}")).unwrap_err();
            assert!(matches!(err, AuthError::InvalidHash { line: 2, .. }), "{text}: {err:?}");
            let hash = text.split_once(':').unwrap().1;
            let body = &hash[hash.len() - 10..];
            assert!(!err.to_string().contains(body), "{err} echoes {text}");
        }
    }

    #[test]
    fn refused_schemes_say_why() {
        let err = Htpasswd::parse(MALLORY).unwrap_err();
        assert!(matches!(err, AuthError::PlainText { line: 1 }), "{err:?}");
        assert!(err.to_string().contains("plain-text"));
        assert!(!err.to_string().contains("plain "), "{err}");

        let err = Htpasswd::parse("u:{PLAIN}secret").unwrap_err();
        assert!(matches!(err, AuthError::PlainText { line: 1 }), "{err:?}");
        assert!(!err.to_string().contains("secret"));

        let err = Htpasswd::parse(&format!("{ALICE}\n{OSCAR}")).unwrap_err();
        assert!(matches!(err, AuthError::Des { line: 2 }), "{err:?}");
        assert!(!err.to_string().contains("5Ww3klcCLc5cc"));

        for (text, scheme) in [
            (PEGGY, "$5$"),
            (TRENT, "$6$"),
            ("u:$1$abc$def", "$1$"),
            ("u:$2x$05$imJePb1wASgV7xAtCTTAZOlT4BBcwVg8A5x1GI.cAdNpm0YCX.z/C", "$2x$"),
            ("u:{SSHA}abcdef", "{SSHA}"),
        ] {
            match Htpasswd::parse(text) {
                Err(AuthError::UnsupportedScheme { line: 1, scheme: s }) => {
                    assert_eq!(s, scheme, "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // A long or odd "prefix" is not echoed either.
        match Htpasswd::parse("u:$verylongschemename-that-is-really-a-secret$x") {
            Err(AuthError::UnsupportedScheme { scheme, .. }) => assert_eq!(scheme, "unknown"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_shows_users_not_hashes() {
        let h = file(&[ALICE, ERIN]);
        let shown = format!("{h:?}");
        assert!(shown.contains("alice") && shown.contains("erin"), "{shown}");
        assert!(!shown.contains("87u9Z") && !shown.contains("imJeP"), "{shown}");
    }

    #[test]
    fn basic_header() {
        let parse = parse_basic_authorization;
        // "alice:correct horse"
        let ok = Some(("alice".to_string(), "correct horse".to_string()));
        assert_eq!(parse("Basic YWxpY2U6Y29ycmVjdCBob3JzZQ=="), ok);
        assert_eq!(parse("basic YWxpY2U6Y29ycmVjdCBob3JzZQ=="), ok);
        assert_eq!(parse("BASIC   YWxpY2U6Y29ycmVjdCBob3JzZQ==  "), ok);
        assert_eq!(parse("  Basic\tYWxpY2U6Y29ycmVjdCBob3JzZQ=="), ok);
        // Unpadded base64 is tolerated.
        assert_eq!(parse("Basic YWxpY2U6Y29ycmVjdCBob3JzZQ"), ok);
        // The password may hold colons and be empty; the user may be empty.
        assert_eq!(
            parse("Basic dTpwOnE6"), // "u:p:q:"
            Some(("u".to_string(), "p:q:".to_string()))
        );
        assert_eq!(
            parse("Basic dTo="), // "u:"
            Some(("u".to_string(), String::new()))
        );
        assert_eq!(
            parse("Basic OnA="), // ":p"
            Some((String::new(), "p".to_string()))
        );
        // UTF-8 credentials: "dave:pässwörd"
        assert_eq!(
            parse("Basic ZGF2ZTpww6Rzc3fDtnJk"),
            Some(("dave".to_string(), "pässwörd".to_string()))
        );
    }

    #[test]
    fn basic_header_garbage() {
        for header in [
            "",
            "   ",
            "Basic",
            "Basic ",
            "BasicYWxpY2U6eA==",
            "Bearer YWxpY2U6eA==",
            "Digest username=\"alice\"",
            "Basic !!!notbase64!!!",
            "Basic YWxpY2U6eA== extra",
            "Basic YWxpY2U=",      // "alice": no colon
            "Basic //79",          // not UTF-8
            "Basic YWxpY2U6eA===", // too much padding
            "Basic YW=xpY2U6eA==", // padding inside
            "Basic ====",
            "Basic \u{e9}\u{e9}",
        ] {
            assert_eq!(parse_basic_authorization(header), None, "{header:?}");
        }
    }

    #[test]
    fn cache_hits_after_a_success_only() {
        let h = file(&[ALICE, ERIN]);
        // A failure is not remembered.
        assert_eq!(h.check("alice", "nope"), Verdict::Denied);
        assert_eq!(h.check("alice", "nope"), Verdict::Denied);
        // The first success pays bcrypt, the second is a hit.
        assert_eq!(h.check("alice", "correct horse"), Verdict::Verified);
        assert_eq!(h.check("alice", "correct horse"), Verdict::Cached);
        assert!(h.verify("alice", "correct horse"));
        // A wrong password after a right one still fails.
        assert_eq!(h.check("alice", "correct horse!"), Verdict::Denied);
        assert!(!h.verify("alice", "wrong"));
        assert!(!h.verify("alice", ""));
        // The tag binds the user: the same password under another name is not a hit.
        assert_eq!(h.check("bob", "correct horse"), Verdict::Denied);
        // Fast schemes skip the cache.
        assert_eq!(h.check("erin", "hunter2"), Verdict::Verified);
        assert_eq!(h.check("erin", "hunter2"), Verdict::Verified);
        // Only tags are kept.
        let seen = h.cache.seen.lock().unwrap();
        assert_eq!(seen.tags.len(), 1);
        assert_eq!(seen.order.len(), 1);
    }

    #[test]
    fn cache_tags_do_not_collide_on_the_user_boundary() {
        let cache = VerifyCache::new(4);
        assert_ne!(cache.tag("ab", "c"), cache.tag("a", "bc"));
        // Each cache has its own key.
        assert_ne!(VerifyCache::new(4).tag("a", "b"), cache.tag("a", "b"));
    }

    #[test]
    fn cache_is_bounded() {
        let mut h = file(&[ALICE, BOB]);
        h.cache = VerifyCache::new(1);
        assert_eq!(h.check("alice", "correct horse"), Verdict::Verified);
        assert_eq!(h.check("alice", "correct horse"), Verdict::Cached);
        // Bob's success evicts Alice's.
        assert_eq!(h.check("bob", "s3cr3t"), Verdict::Verified);
        assert_eq!(h.check("bob", "s3cr3t"), Verdict::Cached);
        assert_eq!(h.check("alice", "correct horse"), Verdict::Verified);
        let seen = h.cache.seen.lock().unwrap();
        assert_eq!((seen.tags.len(), seen.order.len()), (1, 1));
        drop(seen);

        h.cache = VerifyCache::new(0);
        assert_eq!(h.check("alice", "correct horse"), Verdict::Verified);
        assert_eq!(h.check("alice", "correct horse"), Verdict::Verified);
    }
}
