//! HTTP/1.1 to an upstream, driven by the request's own task: no connection task, no channel.
//!
//! hyper's client runs every connection in a task of its own and passes the request, the
//! response and each body chunk across channels, which costs several task wake-ups per
//! request on top of the I/O. Here the request task writes the head and reads the response
//! head (parsed with httparse), and the response body reads the socket as the client side
//! polls it. The connection goes back to the pool once the body has been read to its end.
//!
//! Only requests without a body and without an upgrade come this way (the bulk of traffic);
//! anything else is handed to hyper's client on the same connection ([`Conn::into_io`]).
//! The framing rules are RFC 9112's: no body for HEAD, 1xx, 204 and 304; chunked when the
//! last transfer coding is chunked (and then any Content-Length is dropped); otherwise
//! Content-Length, whose copies must agree; otherwise to the end of the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use bytes::Buf;
use bytes::Bytes;
use bytes::BytesMut;
use http::HeaderMap;
use http::HeaderName;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::Version;
use http::header;
use http_body::Frame;
use http_body::SizeHint;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::pool::BoxError;
use crate::pool::Io;
use crate::pool::TimedIo;

/// The most headers a response may carry (hyper's default too).
const MAX_HEADERS: usize = 100;
/// The largest response head accepted (nginx's `proxy_buffer_size` is smaller; hyper's is larger).
const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// How much is read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("the upstream closed the connection before a response")]
    ClosedBeforeResponse,
    #[error("the upstream closed the connection in the middle of the response body")]
    IncompleteBody,
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response: {0}")]
    Framing(&'static str),
}

impl H1Error {
    /// Whether the error is a send timeout (the upstream stopped reading the request).
    pub fn is_timeout(&self) -> bool {
        matches!(self, H1Error::Write(e) | H1Error::Read(e) if e.kind() == io::ErrorKind::TimedOut)
    }
}

/// An HTTP/1.1 connection to an upstream, between two exchanges.
#[derive(Debug)]
pub struct Conn {
    io: TimedIo,
    /// Bytes read but not yet used: a response head or body in progress.
    buf: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    head: Vec<u8>,
}

impl Conn {
    pub fn new(io: TimedIo) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
        }
    }

    /// The stream, for hyper's client to take over (for a request with a body or an upgrade).
    /// Only an idle connection is handed over: nothing is left unread in it.
    pub fn into_io(self) -> TimedIo {
        self.io
    }

    /// Whether an idle connection may carry another request: the upstream has neither closed
    /// it nor sent anything unasked. Costs no system call: it asks the reactor whether the
    /// socket became readable since the last read drained it.
    pub fn is_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let tcp = match self.io.get_ref() {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tcp.poll_read_ready(&mut cx).is_pending()
    }

    /// Sends a request that has no body and reads the response head. Its body is read from
    /// the connection by the returned [`RawBody`]. The request is only borrowed, so that it
    /// can be sent again elsewhere when this fails.
    pub async fn send<B>(mut self, req: &Request<B>) -> Result<Response<RawBody>, Failure> {
        encode_head(req, &mut self.head);
        // TLS may hold written bytes back until flushed; on plain TCP flushing costs nothing.
        let written = match self.io.write_all(&self.head).await {
            Ok(()) => self.io.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            return Err(Failure {
                error: H1Error::Write(e),
                nothing_received: true,
            });
        }
        let head_only = req.method() == Method::HEAD;
        loop {
            match parse_head(&mut self.buf, head_only) {
                Ok(Some(Parsed::Informational)) => continue,
                Ok(Some(Parsed::Final(parts, framing, reusable))) => {
                    let body = RawBody {
                        conn: Some(self),
                        framing,
                        reusable,
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(Failure {
                        error,
                        nothing_received: false,
                    });
                }
            }
            let before = self.buf.len();
            match read_some(&mut self.io, &mut self.buf).await {
                Ok(0) => {
                    return Err(Failure {
                        error: H1Error::ClosedBeforeResponse,
                        nothing_received: before == 0,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failure {
                        error: H1Error::Read(e),
                        nothing_received: before == 0,
                    });
                }
            }
        }
    }
}

/// A failed exchange.
#[derive(Debug)]
pub struct Failure {
    pub error: H1Error,
    /// No byte of a response arrived. On a connection reused from the pool this is what an
    /// upstream closing it while idle looks like, and an idempotent request may be sent again.
    pub nothing_received: bool,
}

async fn read_some(io: &mut TimedIo, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(io, buf, cx)).await
}

fn poll_read_some(io: &mut TimedIo, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    // `read_buf` fills the spare capacity without zeroing it first; its future holds only
    // the two borrows, so a new one per poll loses nothing.
    std::pin::pin!(io.read_buf(buf)).poll(cx)
}

/// Writes `METHOD target HTTP/1.1`, the headers and the blank line into `out`.
fn encode_head<B>(req: &Request<B>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A request that usually has a body says it has none, as hyper's client does.
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && !req.headers().contains_key(header::CONTENT_LENGTH)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[derive(Debug)]
enum Parsed {
    /// A 1xx other than 101: skipped, as the final response follows.
    Informational,
    Final(http::response::Parts, Framing, bool),
}

/// Parses a response head from the front of `buf` and removes it. `Ok(None)`: incomplete.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() > MAX_HEAD => return Err(H1Error::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Framing("invalid status code"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each header sits in the head, so that the values can share its bytes.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let count = resp.headers.len();
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        let n = h.name.as_ptr() as usize - base;
        let v = h.value.as_ptr() as usize - base;
        *span = (n, n + h.name.len(), v, v + h.value.len());
    }
    let head = buf.split_to(len).freeze();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some(Parsed::Informational));
    }
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| H1Error::Framing("invalid header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| H1Error::Framing("invalid header value"))?;
        headers.append(name, value);
    }
    let (framing, mut reusable) = framing(status, &mut headers, head_only)?;
    reusable &= keep_alive(version, &headers);
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed::Final(parts, framing, reusable)))
}

/// How the body is delimited, and whether the connection can carry another request after it.
fn framing(status: StatusCode, headers: &mut HeaderMap, head_only: bool) -> Result<(Framing, bool), H1Error> {
    if head_only || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let chunked_last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|c| !c.is_empty())
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        // Transfer-Encoding overrides Content-Length, and a message with both may be an
        // attempt at smuggling: it is read, but its connection is not used again.
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok(if chunked_last {
            (Framing::Chunked(Chunked::Size), !both)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii()).ok_or(H1Error::Framing("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Framing("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only when told `keep-alive`.
fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 {
        has(b"keep-alive")
    } else {
        !has(b"close")
    }
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunked),
    /// At the end of the connection.
    Close,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes to go.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (dropped) up to the empty line; the count is the
    /// trailer bytes seen so far.
    Trailers(usize),
    Done,
}

/// One step of the chunked decoder over what has arrived.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

/// Decodes chunked data from the front of `buf`, consuming what it uses.
fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Step, H1Error> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                    return Ok(Step::NeedMore);
                };
                let size = parse_chunk_size(&line).ok_or(H1Error::Framing("invalid chunk size"))?;
                *state = if size == 0 {
                    Chunked::Trailers(0)
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                *state = if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                };
                return Ok(Step::Data(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(H1Error::Framing("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers(seen) => {
                let Some(line) = take_line(buf, MAX_TRAILERS - seen)? else {
                    return Ok(Step::NeedMore);
                };
                *state = if line.is_empty() {
                    Chunked::Done
                } else {
                    Chunked::Trailers(seen + line.len() + 2)
                };
            }
            Chunked::Done => return Ok(Step::End),
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, H1Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > max => Err(H1Error::Framing("chunk line too long")),
        Some(i) => {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(H1Error::Framing("chunk line not ended by CRLF"));
            }
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(H1Error::Framing("chunk line too long")),
        None => Ok(None),
    }
}

/// `1a3f`, optionally followed by whitespace and `;extensions` (ignored).
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    let rest = rest.trim_ascii_start();
    if digits.is_empty() || digits.len() > 16 || !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(v))
    })
}

/// A response body read straight from the upstream connection.
#[derive(Debug)]
pub struct RawBody {
    /// `None` once the connection has been taken back (or dropped after an error).
    conn: Option<Conn>,
    framing: Framing,
    /// The connection may carry another request once this body has ended.
    reusable: bool,
}

impl RawBody {
    fn ended(&self) -> bool {
        matches!(self.framing, Framing::Length(0) | Framing::Chunked(Chunked::Done))
    }

    /// The connection, if the body has been read to its end and the connection can be
    /// used again (nothing left over in it).
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if !(self.ended() && self.reusable) {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.ended() {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(conn.buf.len());
                        *left -= n as u64;
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(n).freeze()))));
                    }
                }
                Framing::Chunked(state) => match decode_chunked(state, &mut conn.buf) {
                    Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Step::End) => return Poll::Ready(None),
                    Ok(Step::NeedMore) => {}
                    Err(e) => return this.fail(e),
                },
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                }
            }
            match poll_read_some(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.framing == Framing::Close => {
                    this.framing = Framing::Length(0);
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(H1Error::IncompleteBody),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(H1Error::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(raw: &str) -> Result<Option<(http::response::Parts, Framing, bool)>, H1Error> {
        let mut buf = BytesMut::from(raw.as_bytes());
        Ok(match parse_head(&mut buf, false)? {
            Some(Parsed::Final(p, f, r)) => Some((p, f, r)),
            Some(Parsed::Informational) => None,
            None => None,
        })
    }

    #[test]
    fn content_length_frames_the_body_and_keeps_the_connection() {
        let (parts, framing, reusable) = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["x-a"], "b");
        assert_eq!(framing, Framing::Length(5));
        assert!(reusable);
    }

    #[test]
    fn transfer_encoding_wins_over_content_length_and_retires_the_connection() {
        let (parts, framing, reusable) =
            parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(framing, Framing::Chunked(Chunked::Size));
        assert!(!reusable);
        assert!(!parts.headers.contains_key(header::CONTENT_LENGTH));
        let (_, framing, reusable) = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(framing, Framing::Close);
        assert!(!reusable);
    }

    #[test]
    fn conflicting_or_malformed_lengths_are_rejected() {
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n").is_err());
        let (_, framing, _) = parse("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(framing, Framing::Length(7));
    }

    #[test]
    fn bodiless_statuses_and_head_have_no_body() {
        for status in ["204 No Content", "304 Not Modified"] {
            let (_, framing, reusable) = parse(&format!("HTTP/1.1 {status}\r\ncontent-length: 10\r\n\r\n"))
                .unwrap()
                .unwrap();
            assert_eq!(framing, Framing::Length(0), "{status}");
            assert!(reusable);
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"[..]);
        let Some(Parsed::Final(parts, framing, _)) = parse_head(&mut buf, true).unwrap() else {
            panic!("no head");
        };
        assert_eq!(framing, Framing::Length(0));
        assert_eq!(parts.headers[header::CONTENT_LENGTH], "10");
    }

    #[test]
    fn informational_responses_are_skipped() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut buf, false), Ok(Some(Parsed::Informational))));
        assert!(matches!(parse_head(&mut buf, false), Ok(Some(Parsed::Final(..)))));
        assert!(buf.is_empty());
    }

    #[test]
    fn connection_reuse_follows_the_version_and_connection_header() {
        let reusable = |raw: &str| parse(raw).unwrap().unwrap().2;
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: Close\r\n\r\n"
        ));
        assert!(!reusable("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(reusable(
            "HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
        ));
        // No length at all: the body runs to the end of the connection.
        let (_, framing, reusable) = parse("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(framing, Framing::Close);
        assert!(!reusable);
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_fail() {
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(parse(&huge), Err(H1Error::HeadTooLarge)));
        assert!(parse("HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(parse("NOT HTTP\r\n\r\n").is_err());
    }

    #[test]
    fn the_request_head_is_origin_form_with_every_header() {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/a/b?c=d")
            .header("host", "example.com")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_head(&req, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 10.0.0.1\r\ncontent-length: 0\r\n\r\n"
        );
    }

    fn decode_all(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize), H1Error> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        for p in points {
            buf.extend_from_slice(&input[fed..p.max(fed)]);
            fed = p.max(fed);
            loop {
                match decode_chunked(&mut state, &mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::End => return Ok((out, buf.len())),
                }
            }
        }
        Err(H1Error::IncompleteBody)
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let raw = b"5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let (out, left) = decode_all(raw, &[]).unwrap();
        assert_eq!(out, b"hello world");
        // What follows the body stays in the buffer (and keeps the connection from reuse).
        assert_eq!(left, 4);
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        for raw in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b";ext\r\n",
        ] {
            assert!(decode_all(raw, &[]).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
        let long = format!("1{}\r\n", " ".repeat(MAX_CHUNK_LINE + 1));
        assert!(decode_all(long.as_bytes(), &[]).is_err());
    }

    proptest! {
        /// However the bytes arrive, the decoder yields exactly the encoded data.
        #[test]
        fn chunked_decoding_does_not_depend_on_how_bytes_arrive(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
                want.extend_from_slice(c);
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (out, left) = decode_all(&wire, &cuts).unwrap();
            prop_assert_eq!(out, want);
            prop_assert_eq!(left, 0);
        }
    }
}
