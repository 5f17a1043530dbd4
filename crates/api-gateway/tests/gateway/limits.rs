//! What clients may hold: a request head has a total deadline however
//! slowly it trickles in, connections beyond `max_connections` are refused,
//! a client that stops reading is dropped (freeing its upstream connection),
//! and shutdown has a deadline.

use std::time::Duration;

use api_gateway::{AuthMode, GatewaySettings};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Settings with a 1 s head deadline and a long idle time, so only the
/// head deadline can close a connection that keeps sending.
fn head_deadline(fast_path: bool) -> GatewaySettings {
    GatewaySettings { client_header_timeout_secs: 1, client_idle_timeout_secs: 600, ..on_path(fast_path) }
}

/// Sends `before` whole, then a head one byte every 100 ms: 60 bytes, six
/// seconds. Returns whether the gateway closed the connection before the
/// head was complete, with the answers to `before` read on the way.
async fn trickle(h: &Harness, before: &[u8]) -> (bool, String) {
    let mut stream = TcpStream::connect(h.url.trim_start_matches("http://")).await.unwrap();
    stream.write_all(before).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut answers = Vec::new();
        let _ = read.read_to_end(&mut answers).await;
        String::from_utf8_lossy(&answers).into_owned()
    });
    let head = format!("GET /public/slow-head HTTP/1.1\r\nhost: gw\r\nx-pad: {}\r\n\r\n", "a".repeat(20));
    let mut cut_off = false;
    for byte in head.bytes() {
        if reader.is_finished() || write.write_all(&[byte]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(write);
    let answers = tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap();
    (cut_off && !answers.contains("/public/slow-head"), answers)
}

#[tokio::test]
async fn a_head_trickled_in_byte_by_byte_is_cut_off_at_the_header_timeout() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(head_deadline(fast_path)).await;
        let on = path_name(fast_path);
        // A new connection, one after a served GET, one after a POST (which
        // moves the connection to hyper on either path).
        let get = b"GET /public/first HTTP/1.1\r\nhost: gw\r\n\r\n".as_slice();
        let post = b"POST /public/first HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\nhi".as_slice();
        for before in [b"".as_slice(), get, post] {
            let (cut_off, answers) = trickle(&h, before).await;
            assert!(
                cut_off,
                "{on}, after {:?}: the head kept the connection: {answers}",
                String::from_utf8_lossy(before)
            );
            if !before.is_empty() {
                assert!(answers.contains(r#""path":"/public/first""#), "{on}: {answers}");
            }
        }
    }
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused_with_a_clear_503() {
    for fast_path in BOTH_PATHS {
        let settings = GatewaySettings { max_connections: 2, ..on_path(fast_path) };
        let h = echo_harness(settings).await;
        let addr = h.url.trim_start_matches("http://").to_owned();
        let first = TcpStream::connect(&addr).await.unwrap();
        let _second = TcpStream::connect(&addr).await.unwrap();
        let answer = one_connection(&h, b"GET /public/x HTTP/1.1\r\nhost: gw\r\n\r\n").await;
        let on = path_name(fast_path);
        assert!(answer.starts_with("HTTP/1.1 503"), "{on}: {answer}");
        assert!(answer.contains("too_many_connections") && answer.contains("retry-after: 1"), "{on}: {answer}");
        assert!(answer.contains("x-request-id: "), "{on}: {answer}");
        // A place frees up when a connection closes.
        drop(first);
        let mut served = false;
        for _ in 0..50 {
            let answer = one_connection(&h, b"GET /public/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await;
            if answer.starts_with("HTTP/1.1 200") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served, "{on}: no place freed up after a connection closed");
    }
}

/// An upstream that answers every request with an endless chunked body and
/// reports, once, when its connection broke (the gateway closed it).
async fn endless_upstream() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (broke, broken) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let broke = broke.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
                let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                loop {
                    out.extend_from_slice(chunk.as_bytes());
                    if stream.write_all(&out).await.is_err() {
                        let _ = broke.send(());
                        return;
                    }
                    out.clear();
                }
            });
        }
    });
    (url, broken)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_upstream_connection_closed() {
    for fast_path in BOTH_PATHS {
        let (upstream, mut broken) = endless_upstream().await;
        let settings = GatewaySettings { client_send_timeout_secs: 1, ..on_path(fast_path) };
        let h = harness_with_settings(vec![route("/api", &upstream, AuthMode::Public)], upstream, settings).await;
        let mut stream = TcpStream::connect(h.url.trim_start_matches("http://")).await.unwrap();
        stream.write_all(b"GET /api/endless HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        // Never read: the buffers fill, the gateway's writes wait, and after
        // the send timeout it gives up on both connections.
        let closed = tokio::time::timeout(Duration::from_secs(30), broken.recv()).await;
        assert!(matches!(closed, Ok(Some(()))), "{}: the upstream connection stayed open", path_name(fast_path));
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "{}: the client connection stayed open", path_name(fast_path));
    }
}

#[tokio::test]
async fn shutdown_ends_after_its_grace_even_with_a_half_sent_head_and_answers_what_arrived() {
    for fast_path in BOTH_PATHS {
        let settings = GatewaySettings {
            shutdown_grace_secs: 1,
            client_header_timeout_secs: 600,
            client_idle_timeout_secs: 600,
            ..on_path(fast_path)
        };
        let h = echo_harness(settings).await;
        let (addr, stop, serving) = serve_until_stopped(&h).await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /public/x HTTP/1.1\r\nhost: gw\r\n").await.unwrap();
        let mut whole = TcpStream::connect(addr).await.unwrap();
        whole.write_all(b"GET /public/whole HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        stop.send(()).unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), whole.read_to_end(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains(r#""path":"/public/whole""#), "{}: {answer}", path_name(fast_path));
        let ended = tokio::time::timeout(Duration::from_secs(10), serving).await;
        assert!(ended.is_ok(), "{}: the half-sent head kept the gateway serving", path_name(fast_path));
        drop(half);
    }
}

/// Opens a WebSocket-style tunnel through the gateway to the echo
/// upstream and checks that it echoes.
async fn open_tunnel(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET /public/upgrade HTTP/1.1\r\nhost: gw\r\n{WEBSOCKET}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the 101: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    stream
}

#[tokio::test]
async fn tunnels_count_against_max_connections_and_close_when_idle() {
    for fast_path in BOTH_PATHS {
        let settings = GatewaySettings { max_connections: 2, client_idle_timeout_secs: 1, ..on_path(fast_path) };
        let h = echo_harness(settings).await;
        let addr = h.url.trim_start_matches("http://").to_owned();
        let on = path_name(fast_path);
        let mut first = open_tunnel(&addr).await;
        let _second = open_tunnel(&addr).await;
        let answer = one_connection(&h, b"GET /public/x HTTP/1.1\r\nhost: gw\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{on}: two tunnels are two connections: {answer}");
        // Nothing moves on the first tunnel: it is closed once idle for a second.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "{on}: an idle tunnel stayed open");
    }
}

#[tokio::test]
async fn a_head_handed_to_hyper_half_sent_keeps_its_deadline() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(head_deadline(fast_path)).await;
        // More than the own path reads before it hands over, then a trickle.
        let long = format!("GET /public/long HTTP/1.1\r\nhost: gw\r\nx-long: {}\r\n", "a".repeat(17_000));
        let (cut_off, answers) = trickle(&h, long.as_bytes()).await;
        assert!(cut_off, "{}: {answers}", path_name(fast_path));
    }
}

#[tokio::test]
async fn http2_connections_that_stall_or_idle_are_closed() {
    for fast_path in BOTH_PATHS {
        let settings =
            GatewaySettings { client_header_timeout_secs: 1, client_idle_timeout_secs: 1, ..on_path(fast_path) };
        let h = echo_harness(settings).await;
        let on = path_name(fast_path);
        let half_preface = b"PRI * HTTP/2.0\r\n\r\n".to_vec();
        // The whole preface and an empty SETTINGS frame, then nothing.
        let mut idle = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        idle.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        for (what, bytes) in [("half a preface", half_preface), ("an idle connection", idle)] {
            let mut stream = TcpStream::connect(h.url.trim_start_matches("http://")).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            let mut rest = Vec::new();
            let ended = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
            assert!(ended.is_ok(), "{on}: {what} stayed open");
        }
    }
}
