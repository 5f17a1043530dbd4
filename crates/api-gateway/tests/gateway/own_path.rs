//! The gateway's own HTTP/1.1 path (bodiless `GET`/`HEAD` to HTTP/1.1
//! upstreams): response framings relayed whole, interim and malformed
//! responses, and connections moving to hyper's path mid-stream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use api_gateway::AuthMode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

fn scripted(_: usize, request_line: &str) -> (Vec<u8>, bool) {
    let path = request_line.split(' ').nth(1).unwrap();
    let (bytes, close): (&[u8], bool) = match path {
        "/api/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n\
              5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nx-trailer: yes\r\n\r\n",
            false,
        ),
        "/api/length" => (b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nlength", false),
        "/api/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the upstream closes", true),
        "/api/early-hints" => (
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
            false,
        ),
        "/api/no-content" => (b"HTTP/1.1 204 No Content\r\nx-kept: 1\r\n\r\n", false),
        "/api/garbage" => (b"SPDY/9 banana\r\n\r\n", true),
        "/api/two-lengths" => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc", true),
        "/api/switch" => (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n", true),
        "/api/bad-chunk" => (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", true),
        "/api/big-length" => {
            let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
            answer.extend(big_body());
            return (answer, false);
        }
        "/api/big-chunked" => return (big_chunked(b"0\r\n\r\n"), false),
        "/api/big-then-bad-chunk" => return (big_chunked(b"zz\r\n"), true),
        "/api/big-until-close" => {
            let mut answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            answer.extend(big_body());
            return (answer, true);
        }
        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
    };
    (bytes.to_vec(), close)
}

/// A body far larger than one read: 8 MiB of a repeating, position-dependent pattern.
const BIG: usize = 8 << 20;

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

/// A chunked answer carrying [`big_body`] in odd-sized chunks, then `end`.
fn big_chunked(end: &[u8]) -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in big_body().chunks(7_919) {
        answer.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        answer.extend(chunk);
        answer.extend(b"\r\n");
    }
    answer.extend(end);
    answer
}

#[tokio::test]
async fn bodies_larger_than_a_read_arrive_whole_in_every_framing() {
    let (upstream, connections) = raw_upstream(scripted).await;
    let h = harness_with(vec![route("/api", &upstream, AuthMode::Public)], upstream).await;
    for path in ["/api/big-length", "/api/big-chunked", "/api/big-length", "/api/big-until-close"] {
        let body = h.get(path).send().await.unwrap().bytes().await.unwrap();
        assert!(body.len() == BIG && *body == *big_body(), "{path}: {} bytes, not the body sent", body.len());
    }
    // The length and chunked answers left the upstream connection reusable.
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn every_response_framing_is_relayed_whole_and_kept_connections_carry_on() {
    let (upstream, connections) = raw_upstream(scripted).await;
    let h = harness_with(vec![route("/api", &upstream, AuthMode::Public)], upstream).await;

    let chunked = h.get("/api/chunked").send().await.unwrap();
    assert_eq!(chunked.status(), 200);
    // The upstream sent no Date; a proxy adds one (RFC 9110 §6.6.1).
    assert!(chunked.headers().contains_key("date"));
    assert!(chunked.headers().contains_key("x-request-id"));
    assert_eq!(chunked.text().await.unwrap(), "hello world");
    let length = h.get("/api/length").send().await.unwrap();
    assert_eq!(length.text().await.unwrap(), "length");
    let empty = h.get("/api/no-content").send().await.unwrap();
    assert_eq!(empty.status(), 204);
    assert_eq!(empty.headers()["x-kept"], "1");
    let interim = h.get("/api/early-hints").send().await.unwrap();
    assert_eq!((interim.status().as_u16(), interim.text().await.unwrap()), (200, "final".to_owned()));
    // One upstream connection carried all four: each body was read to its end.
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    let closing = h.get("/api/until-close").send().await.unwrap();
    assert_eq!(closing.headers()["connection"], "close");
    assert_eq!(closing.text().await.unwrap(), "until the upstream closes");
    let after = h.get("/api/length").send().await.unwrap();
    assert_eq!(after.text().await.unwrap(), "length");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn responses_that_cannot_be_relayed_safely_are_502() {
    let (upstream, _) = raw_upstream(scripted).await;
    let h = harness_with(vec![route("/api", &upstream, AuthMode::Public)], upstream).await;
    for path in ["/api/garbage", "/api/two-lengths", "/api/switch", "/api/bad-chunk"] {
        let response = h.get(path).send().await.unwrap();
        assert_eq!(response.status(), 502, "{path}");
        assert_eq!(json(response).await["error"]["code"], "upstream_unavailable", "{path}");
    }
    // A body whose framing breaks midway, after its head was relayed, cannot
    // be answered otherwise: the client's connection is closed rather than
    // handed a wrong end.
    assert!(h.get("/api/big-then-bad-chunk").send().await.unwrap().bytes().await.is_err());
    assert_eq!(h.get("/api/length").send().await.unwrap().text().await.unwrap(), "length");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_move_to_hypers_path() {
    let h = harness().await;
    // GET (own path), POST with a body (hyper from here on), GET, then close.
    let requests = b"GET /public/one HTTP/1.1\r\nhost: gw\r\n\r\n\
        POST /public/two HTTP/1.1\r\nhost: gw\r\ncontent-length: 3\r\n\r\nabc\
        GET /public/three HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";
    let answer = one_connection(&h, requests).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
    let one = answer.find(r#""path":"/public/one""#).unwrap();
    let two = answer.find(r#""path":"/public/two""#).unwrap();
    let three = answer.find(r#""path":"/public/three""#).unwrap();
    assert!(one < two && two < three, "{answer}");
    assert!(answer.contains(r#""body_bytes":3"#), "{answer}");
}

#[tokio::test]
async fn a_head_request_gets_no_body_and_the_connection_carries_on() {
    let h = harness().await;
    let requests = b"HEAD /public/one HTTP/1.1\r\nhost: gw\r\n\r\n\
        GET /public/two HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";
    let answer = one_connection(&h, requests).await;
    let (head, rest) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.to_ascii_lowercase().contains("content-length"), "{answer}");
    assert!(rest.starts_with("HTTP/1.1 200 OK"), "the HEAD answer carried a body: {answer}");
    assert!(rest.contains(r#""path":"/public/two""#), "{answer}");
}

#[tokio::test]
async fn heads_the_own_path_leaves_alone_are_served_by_hyper() {
    let h = harness().await;
    // Bare line feeds, and a head longer than the own path reads.
    let answer = one_connection(&h, b"GET /public/lf HTTP/1.1\nhost: gw\nconnection: close\n\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.contains(r#""path":"/public/lf""#), "{answer}");
    let long =
        format!("GET /public/long HTTP/1.1\r\nhost: gw\r\nx-long: {}\r\nconnection: close\r\n\r\n", "a".repeat(20_000));
    let answer = one_connection(&h, long.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.contains(r#""path":"/public/long""#), "{answer}");
    // Two Host lines are not the own path's to judge either; hyper forwards
    // them or refuses them, and the identity rules hold either way.
    let answer = one_connection(
        &h,
        b"GET /public/x HTTP/1.1\r\nhost: a\r\nhost: b\r\nx-user-id: admin\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(!answer.contains("admin"), "{answer}");
}

#[tokio::test]
async fn idle_connections_on_the_own_path_close_at_shutdown_and_serving_ends() {
    let upstream = serve(echo_upstream()).await;
    let h = harness_with(vec![route("/public", &upstream, AuthMode::Public)], upstream).await;
    let (addr, stop, serving) = serve_until_stopped(&h).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /public/x HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
    stop.send(()).unwrap();
    // The rest of the answer, if any, then the end: the idle connection was closed.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), serving).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn requests_already_sent_when_shutdown_begins_are_answered_then_closed() {
    let upstream = serve(echo_upstream()).await;
    let h = harness_with(vec![route("/public", &upstream, AuthMode::Public)], upstream).await;
    let (addr, stop, serving) = serve_until_stopped(&h).await;
    // One request for each path, on new connections, sent before the
    // gateway has had a chance to read them; then the shutdown.
    let mut get = TcpStream::connect(addr).await.unwrap();
    let mut post = TcpStream::connect(addr).await.unwrap();
    get.write_all(b"GET /public/own HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
    post.write_all(b"POST /public/hyper HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\nhi").await.unwrap();
    stop.send(()).unwrap();
    for (mut stream, path) in [(get, "/public/own"), (post, "/public/hyper")] {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(read.is_ok(), "{path}: {read:?} after {answer:?}");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains(&format!(r#""path":"{path}""#)), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    }
    tokio::time::timeout(Duration::from_secs(5), serving).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn connections_idle_or_slow_to_send_a_head_are_closed_on_either_path() {
    let upstream = serve(echo_upstream()).await;
    let settings = api_gateway::GatewaySettings { client_idle_timeout_secs: 1, ..settings() };
    let h = harness_with_settings(vec![route("/public", &upstream, AuthMode::Public)], upstream, settings).await;
    let connect = || TcpStream::connect(h.url.trim_start_matches("http://"));
    // Each connection is written once and then left alone: the gateway
    // answers what was sent, then closes the connection by itself.
    let until_closed = |mut stream: TcpStream, request: &'static [u8]| async move {
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the gateway kept the connection open")
            .unwrap();
        String::from_utf8(answer).unwrap()
    };
    let own = until_closed(connect().await.unwrap(), b"GET /public/own HTTP/1.1\r\nhost: gw\r\n\r\n").await;
    assert!(own.starts_with("HTTP/1.1 200 OK") && own.contains(r#""path":"/public/own""#), "{own}");
    let hyper = b"POST /public/hyper HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\nhi";
    let hyper = until_closed(connect().await.unwrap(), hyper).await;
    assert!(hyper.starts_with("HTTP/1.1 200 OK") && hyper.contains(r#""path":"/public/hyper""#), "{hyper}");
    // Half a head, never finished: nothing is answered.
    let slow = until_closed(connect().await.unwrap(), b"GET /public/slow HTTP/1.1\r\nhost: gw\r\n").await;
    assert!(!slow.contains("/public/slow"), "{slow}");
}
