//! Forwarding: failures classified, bodies streamed, upgrades tunnelled, HTTP/2.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use api_gateway::AuthMode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::*;

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[tokio::test]
async fn a_refused_upstream_is_502_and_a_slow_one_504() {
    let upstream = serve(echo_upstream()).await;
    let mut slow = route("/api", &upstream, AuthMode::Public);
    slow.timeout = 1;
    let routes = vec![route("/down", &closed_port(), AuthMode::Public), slow];
    let h = harness_with(routes, upstream).await;
    let down = h.get("/down/x").send().await.unwrap();
    assert_eq!(down.status(), 502);
    assert_eq!(json(down).await["error"]["code"], "upstream_unavailable");
    let late = h.get("/api/slow").send().await.unwrap();
    assert_eq!(late.status(), 504);
    assert_eq!(json(late).await["error"]["code"], "upstream_timeout");
}

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_100_mib_upload_streams_through_without_being_buffered() {
    let h = harness().await;
    let (token, claims) = h.token();
    const SIZE: usize = 100 * 1024 * 1024;
    let before = peak_rss_kib();
    let addr = h.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let csrf = h.csrf.mint(&claims.sid);
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: {addr}\r\nCookie: __Host-access_token={token}; __Host-csrf_token={csrf}\r\n\
         X-CSRF-Token: {csrf}\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..SIZE / chunk.len() {
        stream.write_all(&chunk).await.unwrap();
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(&format!("\"body_bytes\":{SIZE}")), "{response}");
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(grown_mib < 50, "peak memory grew by {grown_mib} MiB for a 100 MiB upload");
}

#[tokio::test]
async fn websocket_style_upgrades_are_tunnelled_both_ways() {
    let h = harness().await;
    let (token, _) = h.token();
    let addr = h.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!("GET /api/upgrade HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{WEBSOCKET}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = vec![0u8; "ping through the tunnel".len()];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"ping through the tunnel");
    // The upgraded upstream connection is the tunnel's; plain requests go on.
    for _ in 0..3 {
        assert_eq!(h.get("/api/x").bearer_auth(&token).send().await.unwrap().status(), 200);
    }
    stream.write_all(b"still open").await.unwrap();
    let mut echoed = vec![0u8; "still open".len()];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"still open");
}

#[tokio::test]
async fn http2_upstreams_are_spoken_to_in_http2() {
    let upstream = serve(echo_upstream()).await;
    let mut h2 = route("/h2", &upstream, AuthMode::Public);
    h2.http2 = true;
    let h = harness_with(vec![h2], upstream).await;
    let response = h.get("/h2/x").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["path"], "/h2/x");
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross() {
    let h = harness().await;
    let echo = json(
        h.get("/public/x")
            .header("connection", "keep-alive, x-private-hop")
            .header("x-private-hop", "1")
            .header("te", "trailers")
            .header("x-end-to-end", "1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen(&echo, "x-private-hop"), None);
    assert_eq!(seen(&echo, "te"), None);
    assert_eq!(seen(&echo, "x-end-to-end").as_deref(), Some("1"));
}

/// A bare HTTP/1.1 upstream that counts its connections. Each answers
/// `per_connection` requests with a `len`-byte body, the last of them with
/// `Connection: close`, then closes.
async fn counting_upstream(per_connection: usize, len: usize) -> (String, Arc<AtomicUsize>) {
    raw_upstream(move |n, _| {
        let close = if n == per_connection { "connection: close\r\n" } else { "" };
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n{close}\r\n").into_bytes();
        answer.resize(answer.len() + len, b'x');
        (answer, n == per_connection)
    })
    .await
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (upstream, connections) = counting_upstream(usize::MAX, 2).await;
    let h = harness_with(vec![route("/api", &upstream, AuthMode::Public)], upstream).await;
    for _ in 0..20 {
        let response = h.get("/api/x").send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "xx");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one kept-alive connection carries every request");
}

#[tokio::test]
async fn an_upstream_closing_its_connections_costs_no_request() {
    let (upstream, connections) = counting_upstream(3, 2).await;
    let h = harness_with(vec![route("/api", &upstream, AuthMode::Public)], upstream).await;
    for _ in 0..9 {
        let response = h.get("/api/x").send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "xx");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_response_abandoned_halfway_does_not_spoil_the_next_request() {
    let (upstream, connections) = counting_upstream(usize::MAX, 4 << 20).await;
    let h = harness_with(vec![route("/api", &upstream, AuthMode::Public)], upstream).await;
    let addr = h.url.trim_start_matches("http://").to_owned();
    // A client that reads the head and a little of a 4 MiB body, then leaves.
    let mut client = tokio::net::TcpStream::connect(&addr).await.unwrap();
    client.write_all(b"GET /api/big HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
    let mut some = vec![0u8; 64 * 1024];
    client.read_exact(&mut some).await.unwrap();
    assert!(some.starts_with(b"HTTP/1.1 200"));
    drop(client);
    let response = h.get("/api/x").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 4 << 20);
    assert_eq!(connections.load(Ordering::SeqCst), 2, "the half-read connection was not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn pooled_connections_survive_requests_moving_between_threads() {
    let (upstream, _) = counting_upstream(usize::MAX, 2).await;
    let h = Arc::new(harness_with(vec![route("/api", &upstream, AuthMode::Public)], upstream).await);
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                let response = h.get("/api/x").send().await.unwrap();
                (response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "xx");
    }
}

#[tokio::test]
async fn upstream_connections_idle_too_long_are_closed() {
    let (upstream, connections) = counting_upstream(usize::MAX, 2).await;
    let h = harness_with(vec![route("/api", &upstream, AuthMode::Public)], upstream).await;
    assert_eq!(h.get("/api/x").send().await.unwrap().text().await.unwrap(), "xx");
    assert_eq!(h.get("/api/x").send().await.unwrap().text().await.unwrap(), "xx");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // Past the idle timeout (90 s) and a sweep (every 15 s), on the runtime's clock.
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_secs(106)).await;
    tokio::time::resume();
    tokio::task::yield_now().await;
    assert_eq!(h.get("/api/x").send().await.unwrap().text().await.unwrap(), "xx");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "the idle connection was closed and a new one opened");
}

/// An upstream that switches to whatever protocol a request asks for and
/// then goes on serving plain HTTP/1.1 on the same connection, as an h2c
/// server would serve HTTP/2: every request on it is answered with its own
/// request line and identity header.
fn switches_and_keeps_serving(_: usize, head: &str) -> Vec<Step> {
    let lower = head.to_ascii_lowercase();
    if let Some(protocol) = lower.lines().find_map(|l| l.strip_prefix("upgrade: ")) {
        let answer = format!("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n");
        return vec![Step::Send(answer.into_bytes())];
    }
    let line = head.lines().next().unwrap();
    let user = lower.lines().find_map(|l| l.strip_prefix("x-user-id: ")).unwrap_or("nobody");
    let body = format!("{line} as {user}");
    vec![Step::Send(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes())]
}

#[tokio::test]
async fn h2c_and_other_non_websocket_upgrades_are_never_tunnelled() {
    for fast_path in BOTH_PATHS {
        let upstream = scripted_upstream(switches_and_keeps_serving).await;
        let h = harness_with_settings(default_routes(&upstream.url), upstream.url.clone(), on_path(fast_path)).await;
        // A tunnel would carry the second request to the upstream unchecked.
        let answer = one_connection(
            &h,
            b"GET /public/x HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n\
              http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n\
              GET /admin/secret HTTP/1.1\r\nhost: gw\r\nx-user-id: admin\r\nconnection: close\r\n\r\n",
        )
        .await;
        let on = path_name(fast_path);
        assert!(!answer.contains(" 101 "), "{on}: {answer}");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("GET /public/x HTTP/1.1 as nobody"),
            "{on}: {answer}"
        );
        assert!(answer.contains("HTTP/1.1 401") && !answer.contains("/admin/secret"), "{on}: {answer}");
        let heads = upstream.heads.lock().unwrap();
        assert!(
            heads.iter().all(|h| !h.to_ascii_lowercase().contains("upgrade") && !h.contains("AAMAAABk")),
            "{on}: {heads:?}"
        );
    }
}

#[tokio::test]
async fn a_101_nobody_asked_for_or_to_another_protocol_is_a_502() {
    let always_101 = |_: usize, _: &str| {
        vec![
            Step::Send(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n".to_vec()),
            Step::Close,
        ]
    };
    for fast_path in BOTH_PATHS {
        let upstream = scripted_upstream(always_101).await;
        let h = harness_with_settings(default_routes(&upstream.url), upstream.url.clone(), on_path(fast_path)).await;
        let on = path_name(fast_path);
        for request in [
            "GET /public/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
            "POST /public/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            &format!("GET /public/x HTTP/1.1\r\nhost: gw\r\n{WEBSOCKET}\r\n"),
        ] {
            let answer = first_answer(&h, request.as_bytes()).await;
            assert!(
                answer.starts_with("HTTP/1.1 502") && answer.contains("upstream_unavailable"),
                "{on}: {request:?}: {answer}"
            );
        }
    }
}

#[tokio::test]
async fn a_websocket_101_without_the_accept_for_its_key_is_a_502_and_opens_no_tunnel() {
    for fast_path in BOTH_PATHS {
        // The upstream answers every upgrade with a 101 for the protocol
        // asked, but no Sec-WebSocket-Accept, and goes on reading HTTP.
        let upstream = scripted_upstream(switches_and_keeps_serving).await;
        let h = harness_with_settings(default_routes(&upstream.url), upstream.url.clone(), on_path(fast_path)).await;
        let on = path_name(fast_path);
        let smuggled = "GET /admin/secret HTTP/1.1\r\nhost: gw\r\nx-user-id: admin\r\nconnection: close\r\n\r\n";
        let answer =
            one_connection(&h, format!("GET /public/ws HTTP/1.1\r\nhost: gw\r\n{WEBSOCKET}\r\n{smuggled}").as_bytes())
                .await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{on}: {answer}");
        assert!(answer.contains("HTTP/1.1 401") && !answer.contains("/admin/secret"), "{on}: {answer}");
        // Not a WebSocket handshake (not a GET, no key): no upgrade is asked.
        for request in [
            format!(
                "POST /public/ws HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\n{WEBSOCKET}connection: close\r\n\r\n"
            ),
            "GET /public/ws HTTP/1.1\r\nhost: gw\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n"
                .to_owned(),
        ] {
            let answer = one_connection(&h, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("as nobody"), "{on}: {request:?}: {answer}");
        }
        let heads = upstream.heads.lock().unwrap();
        assert!(!heads.iter().any(|h| h.contains("/admin/secret")), "{on}: {heads:?}");
    }
}
