//! The upstream's response relayed to the client: head rewritten, body as framed.

use axum::http::HeaderValue;
use bytes::Buf;
use httparse::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::Chunks;
use super::framing::{Framed, Framing, framing, take_body};
use super::head::Head;
use super::respond::{decimal, push_date, push_line, push_status, refuse, send_to_client};
use super::upstream::Kept;
use super::{MAX_RESPONSE_HEADERS, RELAY_CHUNK, Work};
use auth_events::handover;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::identity;
use crate::routes::Route;

/// Relays the upstream's response (head in `work.from_upstream`) to the
/// client, with hop-by-hop headers stripped and `X-Request-Id` set, the body
/// as the upstream frames it. Keeps the upstream connection if it can serve
/// again. Returns whether the client connection can.
pub(super) async fn relay(
    gateway: &Gateway,
    route: &Route,
    head: &Head<'_>,
    mut upstream: Kept,
    request_id: &HeaderValue,
    work: &mut Work,
    client: &mut TcpStream,
) -> bool {
    let Work { out, from_upstream: input, now, closing, send_timeout } = work;
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut lines);
    let parsed = response.parse(input);
    let (Ok(Status::Complete(head_len)), Some(code)) = (parsed, response.code) else {
        tracing::warn!("upstream sent a malformed response head");
        return refuse(route, GatewayError::UpstreamUnavailable, head, request_id, work, client).await;
    };
    let minor = response.version.unwrap_or(0);
    let Some(Framed { mut framing, coded, announced, length }) = framing(head, code, minor, response.headers) else {
        tracing::warn!(code, "upstream response has an unusable framing");
        return refuse(route, GatewayError::UpstreamUnavailable, head, request_id, work, client).await;
    };
    let mut reusable = minor == 1 && !announced;

    out.clear();
    push_status(out, code, response.reason.unwrap_or_default());
    let connection = || response.headers.iter().filter(|l| l.name.eq_ignore_ascii_case("connection"));
    let named = |name: &str| {
        connection().flat_map(|l| identity::connection_names(l.value)).any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
            && identity::connection_may_remove(name)
    };
    reusable &= !connection().flat_map(|l| identity::list_items(l.value)).any(|t| t.eq_ignore_ascii_case(b"close"));
    let mut dated = false;
    for line in response.headers.iter() {
        let name = line.name;
        if name.eq_ignore_ascii_case(handover::HEADER) {
            gateway.take_revocations(route, line.value);
            continue;
        }
        let dropped = dropped_from_response(name)
            || name.eq_ignore_ascii_case(identity::REQUEST_ID.as_str())
            || name.eq_ignore_ascii_case("content-length")
            || named(name)
            || (!route.forward_credentials && identity::touches_our_session(name.as_bytes(), line.value));
        if !dropped {
            dated |= name.eq_ignore_ascii_case("date");
            push_line(out, name.as_bytes(), line.value);
        }
    }
    // One length, however the upstream wrote it (`5, 5`, two lines), and
    // none beside a transfer coding, which overrides it (RFC 9112 §6.3).
    // None on a 204, which may not have one (RFC 9110 §8.6).
    if let Some(length) = length.filter(|_| !coded && code != 204) {
        push_line(out, b"content-length", decimal(length, &mut [0; 20]));
    }
    push_line(out, identity::REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
    if !dated {
        push_date(out, *now);
    }
    if framing == Framing::ToClose || *closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    // The body: what came with the head, then the rest as it arrives.
    input.advance(head_len);
    let mut chunks = Chunks::default();
    let mut done = take_body(&mut framing, &mut chunks, input, out, &mut reusable);
    if done.is_none() {
        // Malformed before anything was sent: the client can still be told.
        tracing::warn!(code, "upstream response body has a malformed framing");
        return refuse(route, GatewayError::UpstreamUnavailable, head, request_id, work, client).await;
    }
    let sent = send_to_client(client, out, *send_timeout).await;
    route.stats.status(code);
    if !sent {
        return false;
    }
    while done == Some(false) {
        input.clear();
        input.reserve(RELAY_CHUNK);
        match upstream.stream.read_buf(input).await {
            Ok(0) if framing == Framing::ToClose => done = Some(true),
            Ok(n) if n > 0 => {
                out.clear();
                done = take_body(&mut framing, &mut chunks, input, out, &mut reusable);
                if !send_to_client(client, out, *send_timeout).await {
                    return false;
                }
            }
            // Ended or broke mid-body: the client cannot be told otherwise.
            _ => done = None,
        }
    }
    if done.is_none() {
        return false;
    }
    if framing == Framing::ToClose {
        let _ = client.shutdown().await;
        return false;
    }
    if reusable {
        upstream.slot.put_stream(upstream.stream);
    }
    true
}

/// Response headers never relayed as they are: the hop-by-hop ones, but for
/// the framing headers, relayed because they describe the body, which is
/// relayed as it is.
fn dropped_from_response(name: &str) -> bool {
    let framing = name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("trailer");
    identity::hop_by_hop(name) && !framing
}
