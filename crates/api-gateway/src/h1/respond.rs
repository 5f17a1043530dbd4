//! Responses written out: status lines, header lines, `Date`, and the
//! small responses the gateway makes itself.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Work;
use super::head::Head;
use crate::error::GatewayError;
use crate::identity;
use crate::routes::Route;

/// Answers with `error` as the gateway would on any path, counted on the
/// route. Returns whether the client connection can take another request.
pub(super) async fn refuse(
    route: &Route,
    error: GatewayError,
    head: &Head<'_>,
    request_id: &HeaderValue,
    work: &mut Work,
    client: &mut TcpStream,
) -> bool {
    let mut response = error.into_response();
    response.headers_mut().insert(identity::REQUEST_ID, request_id.clone());
    route.stats.status(response.status().as_u16());
    respond(response, head.head_only, work, client).await
}

/// Writes all of `bytes` to the client, unless it stops reading for longer
/// than `timeout` at a time (then the connection is to be dropped, and the
/// upstream connection serving it with it). `false` when not all was written.
pub(super) async fn send_to_client(client: &mut TcpStream, bytes: &[u8], timeout: Duration) -> bool {
    // Most writes fit the socket's buffer at once: no timer for those.
    let mut rest = bytes;
    while !rest.is_empty() {
        match client.try_write(rest) {
            Ok(0) => return false,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => return false,
        }
    }
    rest.is_empty() || matches!(tokio::time::timeout(timeout, client.write_all(rest)).await, Ok(Ok(())))
}

/// Writes a small response the gateway made itself, whole.
async fn respond(response: Response, head_only: bool, work: &mut Work, client: &mut TcpStream) -> bool {
    let out = &mut work.out;
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return false;
    };
    out.clear();
    push_status(out, parts.status.as_u16(), parts.status.canonical_reason().unwrap_or(""));
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH {
            push_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    push_line(out, b"content-length", decimal(body.len() as u64, &mut [0; 20]));
    push_date(out, work.now);
    if work.closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&body);
    }
    send_to_client(client, out, work.send_timeout).await
}

/// The status line for a three-digit `code` (as httparse and `StatusCode` have it).
pub(super) fn push_status(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[b'0' + (code / 100 % 10) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8]);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(super) fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value for responses that lack one, and its second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Adds a `Date` line for `now` (Unix seconds), made once a second per thread.
pub(super) fn push_date(out: &mut Vec<u8>, now: i64) {
    let second = u64::try_from(now).unwrap_or(0);
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second || date.1.is_empty() {
            *date = (second, httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(second)));
        }
        push_line(out, b"date", date.1.as_bytes());
    });
}

/// `n` in decimal, written at the end of `buf`.
pub(super) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0, 7, 10, 1_234_567, u64::MAX] {
            assert_eq!(super::decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }
}
