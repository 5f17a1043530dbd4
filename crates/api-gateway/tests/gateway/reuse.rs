//! A pooled upstream connection is reused only when it is provably clean:
//! bytes an upstream sends past the end of a response (a late second
//! response, a body on a reply to `HEAD` or on a 204/304, an unsolicited
//! 408) never become the answer to the next request, whoever sends it.

use api_gateway::AuthMode;

use crate::helpers::*;

/// A response whose body names the request it answers.
fn answer(path: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}", path.len()).into_bytes()
}

/// What a misbehaving upstream sends late: a whole response of its own.
const LEAK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nLEAK";

/// The upstream answers `/api/first` with `first`, waits until the test
/// has read that answer (the connection is idle at the gateway by then),
/// sends `late`, and tells the test; every other path gets [`answer`].
async fn misbehaving(first: Vec<u8>, late: Vec<u8>, close: bool) -> Scripted {
    scripted_upstream(move |_, head| {
        let path = head.split(' ').nth(1).unwrap().to_owned();
        if path != "/api/first" {
            return vec![Step::Send(answer(&path))];
        }
        let mut steps = vec![Step::Send(first.clone()), Step::Hold, Step::Send(late.clone()), Step::Signal];
        if close {
            steps.push(Step::Close);
        }
        steps
    })
    .await
}

/// User A's request, then the late bytes, then users B and C: each gets
/// its own answer, on either request path.
async fn late_bytes_never_answer_the_next_request(method: reqwest::Method, first: &[u8], late: &[u8], close: bool) {
    for fast_path in BOTH_PATHS {
        let upstream = misbehaving(first.to_vec(), late.to_vec(), close).await;
        let routes = vec![route("/api", &upstream.url, AuthMode::Public)];
        let h = harness_with_settings(routes, upstream.url.clone(), on_path(fast_path)).await;
        let a = h.client.request(method.clone(), format!("{}/api/first", h.url)).send().await.unwrap();
        let status = a.status();
        a.bytes().await.unwrap();
        upstream.release();
        upstream.sent().await;
        for path in ["/api/second", "/api/third"] {
            let response = h.get(path).send().await.unwrap();
            let (got, body) = (response.status(), response.text().await.unwrap());
            assert_eq!((got.as_u16(), body.as_str()), (200, path), "after {status} to A, on {}", path_name(fast_path));
        }
    }
}

#[tokio::test]
async fn a_late_second_response_is_never_read_as_the_next_answer() {
    let first = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst";
    late_bytes_never_answer_the_next_request(reqwest::Method::GET, first, LEAK, false).await;
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n";
    late_bytes_never_answer_the_next_request(reqwest::Method::GET, chunked, LEAK, false).await;
}

#[tokio::test]
async fn a_body_sent_after_a_reply_to_head_is_never_read_as_the_next_answer() {
    let first = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", LEAK.len());
    late_bytes_never_answer_the_next_request(reqwest::Method::HEAD, first.as_bytes(), LEAK, false).await;
}

#[tokio::test]
async fn a_body_sent_after_a_204_or_304_is_never_read_as_the_next_answer() {
    for status in ["204 No Content", "304 Not Modified"] {
        let announced = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n", LEAK.len());
        late_bytes_never_answer_the_next_request(reqwest::Method::GET, announced.as_bytes(), LEAK, false).await;
        let silent = format!("HTTP/1.1 {status}\r\n\r\n");
        late_bytes_never_answer_the_next_request(reqwest::Method::GET, silent.as_bytes(), LEAK, false).await;
    }
}

#[tokio::test]
async fn an_unsolicited_408_on_an_idle_connection_is_never_read_as_the_next_answer() {
    let first = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst";
    let timeout = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    late_bytes_never_answer_the_next_request(reqwest::Method::GET, first, timeout, true).await;
}

#[tokio::test]
async fn clean_connections_are_still_reused_on_both_paths() {
    for fast_path in BOTH_PATHS {
        let upstream = scripted_upstream(|_, head| vec![Step::Send(answer(head.split(' ').nth(1).unwrap()))]).await;
        let routes = vec![route("/api", &upstream.url, AuthMode::Public)];
        let h = harness_with_settings(routes, upstream.url.clone(), on_path(fast_path)).await;
        for n in 0..5 {
            let path = format!("/api/{n}");
            assert_eq!(h.get(&path).send().await.unwrap().text().await.unwrap(), path);
        }
        let connections = upstream.connections.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(connections, 1, "on {}", path_name(fast_path));
        let heads = upstream.heads.lock().unwrap();
        let lines: Vec<&str> = heads.iter().map(|h| h.lines().next().unwrap()).collect();
        assert_eq!(lines, (0..5).map(|n| format!("GET /api/{n} HTTP/1.1")).collect::<Vec<_>>());
    }
}
