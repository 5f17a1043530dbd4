//! One exchange with an upstream over a pooled plain connection: the
//! request written, the final response head read.

use axum::http::uri::Authority;
use bytes::{Buf, BytesMut};
use httparse::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS, has_bare_lf_head, has_head};
use crate::pool::{self, Slot};

/// Sends `request` over a kept connection to `authority` (a new one if none,
/// or if the kept one closed without answering: `GET` and `HEAD` may be
/// sent again) and reads up to the end of the final response head into `input`.
pub(super) async fn send(authority: &Authority, request: &[u8], input: &mut BytesMut) -> std::io::Result<Kept> {
    let slot = Slot::of(authority);
    let (mut stream, mut reused) = match slot.take_stream() {
        Some(stream) => (stream, true),
        None => (pool::open(authority).await?, false),
    };
    loop {
        input.clear();
        match ask(&mut stream, request, input).await {
            Ok(()) => return Ok(Kept { stream, slot }),
            Err(_) if reused && input.is_empty() => {
                stream = pool::open(authority).await?;
                reused = false;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A connection to an upstream that answered, and the pool slot it goes back to.
pub(super) struct Kept {
    pub stream: TcpStream,
    pub slot: Slot,
}

/// How many bytes at the start of `input` are empty lines (`\r\n` or `\n`).
fn empty_lines(input: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match input.get(at..) {
            Some([b'\r', b'\n', ..]) => at += 2,
            Some([b'\n', ..]) => at += 1,
            _ => return at,
        }
    }
}

/// Writes `request` and reads until `input` starts with a final response
/// head (interim 1xx responses are read and dropped).
async fn ask(stream: &mut TcpStream, request: &[u8], input: &mut BytesMut) -> std::io::Result<()> {
    stream.write_all(request).await?;
    loop {
        // Empty lines before a response are skipped, as hyper's parser does.
        loop {
            input.advance(empty_lines(input));
            // What cannot start a response is refused now, as hyper does,
            // not once the route's timeout has passed.
            let start = &input[..input.len().min(5)];
            if !b"HTTP/".starts_with(start) && start != b"\r" {
                return Err(std::io::Error::other("the upstream's answer is not HTTP"));
            }
            if has_head(input) || has_bare_lf_head(input) {
                break;
            }
            if input.len() >= MAX_RESPONSE_HEAD {
                return Err(std::io::Error::other("response head too long"));
            }
            input.reserve(4096);
            if stream.read_buf(input).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        // "HTTP/1.1 1xx": an interim response, except 101, which ends the exchange.
        if input.get(9) != Some(&b'1') || input.get(9..12) == Some(b"101") {
            return Ok(());
        }
        let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        match httparse::Response::new(&mut lines).parse(input) {
            Ok(Status::Complete(interim)) => input.advance(interim),
            _ => return Err(std::io::Error::other("malformed interim response")),
        }
    }
}
