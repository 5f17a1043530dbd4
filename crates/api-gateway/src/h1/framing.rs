//! How a response body ends (RFC 9112 §6.3), and which bytes belong to it.

use super::chunked::Chunks;
use super::head::Head;
use crate::forward::content_length;

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// When the upstream closes: the client connection closes after it too.
    ToClose,
}

/// What a response head says of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Framed {
    pub framing: Framing,
    /// It has `Transfer-Encoding`, which overrides any `Content-Length`
    /// (RFC 9112 §6.3): the length is not relayed.
    pub coded: bool,
    /// It announces a body where none follows (a reply to `HEAD`, a 204 or
    /// 304 with a length or coding): the upstream may send one anyway, so
    /// its connection is not kept.
    pub announced: bool,
    /// Its `Content-Length`, however many lines (all equal) said it.
    pub length: Option<u64>,
}

/// How the body of a response to `head` with status `code` in HTTP/1.`minor`
/// ends (RFC 9112 §6.3); `None` for a response this path cannot relay
/// safely: conflicting or malformed lengths (whatever the status), a 1xx
/// where a final response belongs, a body framed by `Transfer-Encoding` in
/// HTTP/1.0 (faulty framing, §6.1).
pub(super) fn framing(head: &Head<'_>, code: u16, minor: u8, lines: &[httparse::Header<'_>]) -> Option<Framed> {
    if code < 200 {
        // A 101 to a request that asked for no upgrade.
        return None;
    }
    let coding = lines.iter().rfind(|l| l.name.eq_ignore_ascii_case("transfer-encoding")).map(|l| l.value);
    let lengths = lines.iter().filter(|l| l.name.eq_ignore_ascii_case("content-length")).map(|l| l.value);
    let length = content_length(lengths).ok()?;
    let coded = coding.is_some();
    let framing = if head.head_only || code == 204 || code == 304 {
        Framing::Empty
    } else if coded && minor == 0 {
        return None;
    } else if let Some(coding) = coding {
        let last = coding.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
        if last.eq_ignore_ascii_case(b"chunked") { Framing::Chunked } else { Framing::ToClose }
    } else {
        length.map_or(Framing::ToClose, Framing::Length)
    };
    let announced = framing == Framing::Empty && (coded || length.is_some_and(|n| n > 0));
    Some(Framed { framing, coded, announced, length })
}

/// Moves the part of `input` that belongs to the body into `out`. Returns
/// whether the body is complete (`None`: malformed). Bytes past the body
/// make the connection unfit for reuse.
pub(super) fn take_body(
    framing: &mut Framing,
    chunks: &mut Chunks,
    input: &[u8],
    out: &mut Vec<u8>,
    reusable: &mut bool,
) -> Option<bool> {
    let (taken, done) = match framing {
        Framing::Empty => (0, true),
        Framing::Length(left) => {
            let taken = input.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= taken as u64;
            out.extend_from_slice(&input[..taken]);
            (taken, *left == 0)
        }
        // The scanner copies what it relays (trailer fields it does not).
        Framing::Chunked => (chunks.scan(input, out)?, chunks.done()),
        Framing::ToClose => {
            out.extend_from_slice(input);
            (input.len(), false)
        }
    };
    if taken < input.len() {
        *reusable = false;
    }
    Some(done)
}
