//! PROXY protocol v1 (text) and v2 (binary) headers: a pure, bounded parser and encoders.
//!
//! [`parse`] looks at the bytes a client has sent so far and answers with
//! [`Parsed::Incomplete`] (read more, then call again with everything), a [`Header`]
//! telling how many leading bytes it took, or an error. It never reads past what it was
//! given, never asks for more than [`V1_MAX_LEN`] bytes for a v1 line or [`V2_MAX_LEN`]
//! bytes for a v2 block, and rejects garbage as soon as it can tell (a receiver configured
//! for the protocol must not guess whether a header is present).
//!
//! ```text
//! v1:  "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP sport SP dport CRLF    (≤ 107 bytes)
//!      "PROXY" SP "UNKNOWN" [anything] CRLF
//! v2:  \r\n\r\n\0\r\nQUIT\n | ver·cmd | family·transport | len (u16 BE) | addresses | TLVs
//! ```
//!
//! A `LOCAL` (v2) or `UNKNOWN` (v1) header carries no usable addresses: `source` and
//! `destination` are `None`, and the receiver uses the connection's own addresses. TLVs
//! are skipped.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;

/// The longest v1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses).
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted, the 16 fixed bytes included. The format allows up to
/// 65,551; addresses plus the TLVs real load balancers send stay far below this.
pub const V2_MAX_LEN: usize = 4096;
/// Enough bytes to hold any header this parser accepts.
pub const MAX_LEN: usize = V2_MAX_LEN;

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_FIXED: usize = 16;

/// Which version of the protocol a header used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The original client; `None` for v1 `UNKNOWN`, v2 `LOCAL`, and v2 `UNSPEC`/`UNIX`.
    pub source: Option<SocketAddr>,
    /// The address the original client connected to; `None` whenever `source` is.
    pub destination: Option<SocketAddr>,
    /// Bytes the header took; whatever follows them is the client's payload.
    pub len: usize,
}

/// What the bytes seen so far amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid start of a header: read more bytes and parse them all again.
    Incomplete,
    Header(Header),
}

/// Why the bytes are not a valid header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyProtocolError {
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    #[error("PROXY v1 line longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 version nibble {0:#x} is not 2")]
    V2Version(u8),
    #[error("PROXY v2 command {0:#x} is neither LOCAL nor PROXY")]
    V2Command(u8),
    #[error("PROXY v2 address family/transport byte {0:#04x} is not defined")]
    V2Family(u8),
    #[error("PROXY v2 header of {0} bytes exceeds the {V2_MAX_LEN}-byte limit")]
    V2TooLong(usize),
    #[error("PROXY v2 address block of {len} bytes is too short for family {family:#04x}")]
    V2ShortAddress { family: u8, len: usize },
}

/// Parses a header at the start of `buf`. See the module docs.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyProtocolError::NotProxyProtocol),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyProtocolError::NotProxyProtocol);
    }
    // Find the CRLF within the limit, refusing anything but printable ASCII before it.
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let mut end = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    end = Some(i);
                    break;
                }
                Some(_) => return Err(ProxyProtocolError::V1Malformed("CR without LF")),
                None if i + 1 == V1_MAX_LEN => return Err(ProxyProtocolError::V1TooLong),
                None => return Ok(Parsed::Incomplete),
            },
            0x20..=0x7e => {}
            _ => {
                return Err(ProxyProtocolError::V1Malformed("byte outside printable ASCII"));
            }
        }
    }
    let Some(end) = end else {
        return if window.len() >= V1_MAX_LEN {
            Err(ProxyProtocolError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    // Checked above: every byte before `end` is printable ASCII, so this cannot fail.
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyProtocolError::V1Malformed("not ASCII"))?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The receiver must ignore whatever else the line holds.
        return Ok(Parsed::Header(Header {
            version: Version::V1,
            source: None,
            destination: None,
            len,
        }));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyProtocolError::V1Malformed("unknown protocol family")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyProtocolError::V1Malformed("expected exactly four fields"));
    };
    let src = v1_ip(src, v6)?;
    let dst = v1_ip(dst, v6)?;
    let sport = v1_port(sport)?;
    let dport = v1_port(dport)?;
    Ok(Parsed::Header(Header {
        version: Version::V1,
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
        len,
    }))
}

fn v1_ip(s: &str, v6: bool) -> Result<IpAddr, ProxyProtocolError> {
    if v6 {
        s.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyProtocolError::V1Malformed("bad IPv6 address"))
    } else {
        // Rust's parser already refuses leading zeros (octal look-alikes), as the spec asks.
        s.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyProtocolError::V1Malformed("bad IPv4 address"))
    }
}

fn v1_port(s: &str) -> Result<u16, ProxyProtocolError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyProtocolError::V1Malformed("bad port"));
    }
    s.parse()
        .map_err(|_| ProxyProtocolError::V1Malformed("port out of range"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyProtocolError::NotProxyProtocol);
    }
    // Check each fixed byte as soon as it is there, so garbage fails early.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyProtocolError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(ProxyProtocolError::V2Command(c)),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // The address block's minimum size, or None for a family without usable addresses.
    let need = match family {
        0x00 => None,
        0x11 | 0x12 => Some(12),
        0x21 | 0x22 => Some(36),
        0x31 | 0x32 => Some(216),
        _ if local => None,
        f => return Err(ProxyProtocolError::V2Family(f)),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let body = usize::from(u16::from_be_bytes([hi, lo]));
    let len = V2_FIXED + body;
    if len > V2_MAX_LEN {
        return Err(ProxyProtocolError::V2TooLong(len));
    }
    if let Some(need) = need
        && body < need
    {
        return Err(ProxyProtocolError::V2ShortAddress { family, len: body });
    }
    let Some(block) = buf.get(V2_FIXED..len) else {
        return Ok(Parsed::Incomplete);
    };
    let (source, destination) = if local {
        (None, None)
    } else {
        match family {
            0x11 | 0x12 => {
                let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(block[o], block[o + 1], block[o + 2], block[o + 3]));
                let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
                (
                    Some(SocketAddr::new(ip(0), port(8))),
                    Some(SocketAddr::new(ip(4), port(10))),
                )
            }
            0x21 | 0x22 => {
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&block[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(a))
                };
                let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
                (
                    Some(SocketAddr::new(ip(0), port(32))),
                    Some(SocketAddr::new(ip(16), port(34))),
                )
            }
            // UNSPEC and UNIX sockets: nothing an IP proxy can use.
            _ => (None, None),
        }
    };
    Ok(Parsed::Header(Header {
        version: Version::V2,
        source,
        destination,
        len,
    }))
}

/// Both addresses in one family: IPv4 if both are, else IPv6 (an IPv4 one mapped).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (src, dst),
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            (v6(src), v6(dst))
        }
    }
}

/// A v1 line for a TCP connection from `src` to `dst`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 `PROXY` header for a TCP connection from `src` to `dst`, without TLVs.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out = Vec::with_capacity(V2_FIXED + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// A v2 `LOCAL` header (a health check from the proxy itself: no addresses).
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED);
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

/// Why a PROXY header could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Invalid(#[from] ProxyProtocolError),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(std::time::Duration),
    #[error("closed before sending a complete PROXY header")]
    Eof,
    #[error("reading a PROXY header: {0}")]
    Io(#[source] std::io::Error),
}

/// Reads a PROXY header (v1 or v2) from the start of `stream` within `timeout`. Returns it
/// and the bytes that arrived behind it, which belong to the payload.
pub async fn read_header<S>(stream: &mut S, timeout: std::time::Duration) -> Result<(Header, Vec<u8>), ReadError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buf = vec![0u8; MAX_LEN];
        let mut filled = 0;
        loop {
            let n = stream.read(&mut buf[filled..]).await.map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
            filled += n;
            match parse(&buf[..filled])? {
                Parsed::Header(h) => return Ok((h, buf[h.len..filled].to_vec())),
                // `parse` never waits for more than MAX_LEN bytes, so the buffer has room.
                Parsed::Incomplete if filled < buf.len() => {}
                Parsed::Incomplete => return Err(ProxyProtocolError::V2TooLong(filled).into()),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ReadError::Timeout(timeout))?
}

/// A stream that first yields bytes already read from it (those behind a PROXY header).
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { prefix, pos: 0, inner }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header(buf: &[u8]) -> Header {
        match parse(buf) {
            Ok(Parsed::Header(h)) => h,
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_spec_examples() {
        let h = header(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n");
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.source, Some(sa("192.168.0.1:56324")));
        assert_eq!(h.destination, Some(sa("192.168.0.11:443")));
        assert_eq!(h.len, 47);

        let h = header(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");
        assert_eq!(h.source, Some(sa("[2001:db8::1]:1")));
        assert_eq!(h.destination, Some(sa("[::1]:65535")));

        let h = header(b"PROXY UNKNOWN\r\n");
        assert_eq!((h.source, h.destination, h.len), (None, None, 15));
        let h = header(b"PROXY UNKNOWN whatever the sender liked\r\nxyz");
        assert_eq!(h.source, None);
        assert_eq!(h.len, 41);
    }

    #[test]
    fn v1_worst_cases_fit_and_one_more_byte_does_not() {
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
        assert!(header(tcp6.as_bytes()).source.is_some());
        let unknown = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        assert_eq!(header(unknown.as_bytes()).len, V1_MAX_LEN);
        let long = format!("PROXY UNKNOWN {f} {f} 65535 655355\r\n");
        assert_eq!(parse(long.as_bytes()), Err(ProxyProtocolError::V1TooLong));
        // Without a CRLF, 107 bytes are the most it waits for.
        assert_eq!(parse(&long.as_bytes()[..106]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&long.as_bytes()[..107]), Err(ProxyProtocolError::V1TooLong));
    }

    #[test]
    fn v1_rejects_malformed_lines() {
        for bad in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"[..],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 9\r\n",
            b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 ::1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP6 192.168.0.1 ::1 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +1 443\r\n",
            b"PROXY TCP4  192.168.0.1 192.168.0.11 1 443\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 1 443\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX",
            b"PROXY TCP4 1.2.3.4\n",
            b"PROXY \xff",
            b"PROXYTCP4",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn prefixes_are_incomplete() {
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"\r\n\r\n\0"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v2_ipv4_example() {
        // PROXY, TCP over IPv4, 192.168.0.1:56324 -> 192.168.0.11:443, then payload.
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        b.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b.extend_from_slice(b"payload");
        let h = header(&b);
        assert_eq!(h.version, Version::V2);
        assert_eq!(h.source, Some(sa("192.168.0.1:56324")));
        assert_eq!(h.destination, Some(sa("192.168.0.11:443")));
        assert_eq!(h.len, 28);
        assert_eq!(&b[h.len..], b"payload");
    }

    #[test]
    fn v2_ipv6_with_tlvs_skips_them() {
        let mut b = V2_SIGNATURE.to_vec();
        // 36 address bytes + a 7-byte TLV (type 0x04 NOOP, length 4).
        b.extend_from_slice(&[0x21, 0x21, 0x00, 36 + 7]);
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        b.extend_from_slice(&[0x04, 0x00, 0x04, 1, 2, 3, 4]);
        let h = header(&b);
        assert_eq!(h.source, Some(sa("[2001:db8::1]:12345")));
        assert_eq!(h.destination, Some(sa("[::1]:443")));
        assert_eq!(h.len, b.len());
        assert_eq!(parse(&b[..b.len() - 1]), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v2_local_unspec_and_unix_carry_no_addresses() {
        let h = header(&encode_v2_local());
        assert_eq!((h.source, h.destination, h.len), (None, None, 16));
        // LOCAL with an address block: the block is skipped.
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x20, 0x11, 0x00, 0x0c]);
        b.extend_from_slice(&[0; 12]);
        assert_eq!(header(&b).source, None);
        // PROXY over a UNIX socket.
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
        b.extend_from_slice(&[0; 216]);
        let h = header(&b);
        assert_eq!((h.source, h.len), (None, 232));
    }

    #[test]
    fn v2_rejects_bad_fixed_bytes() {
        let with = |ver_cmd: u8, fam: u8, len: u16| {
            let mut b = V2_SIGNATURE.to_vec();
            b.extend_from_slice(&[ver_cmd, fam]);
            b.extend_from_slice(&len.to_be_bytes());
            b
        };
        assert_eq!(parse(&with(0x11, 0x11, 12)), Err(ProxyProtocolError::V2Version(1)));
        assert_eq!(parse(&with(0x22, 0x11, 12)), Err(ProxyProtocolError::V2Command(2)));
        assert_eq!(parse(&with(0x21, 0x13, 12)), Err(ProxyProtocolError::V2Family(0x13)));
        assert_eq!(
            parse(&with(0x21, 0x11, 11)),
            Err(ProxyProtocolError::V2ShortAddress { family: 0x11, len: 11 })
        );
        assert_eq!(
            parse(&with(0x21, 0x11, u16::MAX)),
            Err(ProxyProtocolError::V2TooLong(16 + 65535))
        );
        // Errors show before the whole header has arrived.
        assert_eq!(
            parse(&with(0x31, 0x11, 12)[..13]),
            Err(ProxyProtocolError::V2Version(3))
        );
        assert_eq!(parse(b"\r\n\r\nX"), Err(ProxyProtocolError::NotProxyProtocol));
    }

    #[test]
    fn encoders_write_the_spec_format() {
        assert_eq!(
            encode_v1(sa("192.168.0.1:56324"), sa("192.168.0.11:443")),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            encode_v1(sa("1.2.3.4:5"), sa("[::1]:6")),
            b"PROXY TCP6 ::ffff:1.2.3.4 ::1 5 6\r\n"
        );
        let v2 = encode_v2(sa("1.2.3.4:5"), sa("5.6.7.8:443"));
        assert_eq!(v2.len(), 28);
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0x00, 0x0c]);
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
        ]
    }

    /// What the encoders promise: one family, IPv4 mapped into IPv6 when mixed.
    fn expected(src: SocketAddr, dst: SocketAddr) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let (s, d) = same_family(src, dst);
        (Some(s), Some(d))
    }

    proptest! {
        #[test]
        fn v1_roundtrip(src in arb_addr(), dst in arb_addr(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
            let mut b = encode_v1(src, dst);
            let n = b.len();
            prop_assert!(n <= V1_MAX_LEN);
            b.extend_from_slice(&tail);
            let h = match parse(&b) { Ok(Parsed::Header(h)) => h, other => return Err(TestCaseError::fail(format!("{other:?}"))) };
            prop_assert_eq!((h.source, h.destination), expected(src, dst));
            prop_assert_eq!(h.len, n);
            // Every strict prefix is a valid start.
            for i in 0..n {
                prop_assert_eq!(parse(&b[..i]), Ok(Parsed::Incomplete));
            }
        }

        #[test]
        fn v2_roundtrip(src in arb_addr(), dst in arb_addr(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
            let mut b = encode_v2(src, dst);
            let n = b.len();
            b.extend_from_slice(&tail);
            let h = match parse(&b) { Ok(Parsed::Header(h)) => h, other => return Err(TestCaseError::fail(format!("{other:?}"))) };
            prop_assert_eq!((h.source, h.destination), expected(src, dst));
            prop_assert_eq!(h.len, n);
            for i in 0..n {
                prop_assert_eq!(parse(&b[..i]), Ok(Parsed::Incomplete));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_overclaim(b in prop::collection::vec(any::<u8>(), 0..300)) {
            check_any(&b)?;
        }

        #[test]
        fn arbitrary_bytes_after_a_v1_prefix(s in "PROXY [ -~\r\n]{0,120}") {
            check_any(s.as_bytes())?;
        }

        #[test]
        fn arbitrary_bytes_after_a_v2_signature(b in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut v = V2_SIGNATURE.to_vec();
            v.extend_from_slice(&b);
            check_any(&v)?;
        }
    }

    fn check_any(b: &[u8]) -> Result<(), TestCaseError> {
        match parse(b) {
            Ok(Parsed::Header(h)) => {
                prop_assert!(h.len <= b.len());
                prop_assert!(h.len <= MAX_LEN);
                prop_assert_eq!(h.source.is_some(), h.destination.is_some());
                // A header is decided by its own bytes only.
                prop_assert_eq!(parse(&b[..h.len]), Ok(Parsed::Header(h)));
            }
            Ok(Parsed::Incomplete) => prop_assert!(b.len() < MAX_LEN),
            Err(_) => {}
        }
        Ok(())
    }
}
