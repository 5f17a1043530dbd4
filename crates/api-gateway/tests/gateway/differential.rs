//! The gateway's own HTTP/1.1 path against hyper's, on generated traffic:
//! requests (odd paths, odd whitespace, spoofed and repeated headers) and
//! upstream responses (every framing, interim responses, HEAD, 204/304,
//! hostile ones: bare LF in chunk lines, conflicting lengths, bytes past the
//! end). One gateway serves with its own path, one with hyper alone; for
//! every case both must give the client the same response (or both refuse
//! it) and the upstream the same request. Cases that once failed are kept
//! in `proptest-regressions/` and run first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use api_gateway::AuthMode;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

/// One generated exchange.
#[derive(Debug, Clone)]
struct Case {
    head_only: bool,
    /// The path below the case's own prefix, and the query.
    target: String,
    /// Request header lines, written as they are.
    request_headers: Vec<String>,
    /// The upstream's answer, as sent (in pieces cut at these places, to
    /// vary where the gateway's reads end), and whether it closes after.
    response: String,
    cuts: Vec<usize>,
    close: bool,
}

/// What the client got, with what may differ between two correct proxies
/// taken out: header case and order across names, `Date`, framing and
/// connection headers, and the body's framing (chunked or not).
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A 502 from the gateway, or a message cut short: the client was not
    /// handed a response it could take for whole.
    Refused,
    /// A 400 from the gateway, with its error code.
    BadRequest(String),
    /// A body whose framing is broken: what a proxy must never send, as
    /// two readers could end it in different places.
    Malformed,
}

/// A request as an upstream received it (see [`normalised_request`]).
type Received = Vec<(String, String)>;

/// What an upstream answers a case with: the bytes, where to cut them, and
/// whether to close after.
type Script = (Vec<u8>, Vec<usize>, bool);

/// Two gateways, one per path, each in front of its own upstream (so the
/// two share no pooled connection), and the scripts both upstreams play.
struct Rig {
    own: String,
    hyper: String,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    /// Request heads the upstreams received, by case id.
    heads: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Told, by case id, when an upstream has played the case's script to
    /// the end (and closed, if it says so), so that the next case never
    /// races the bytes or the close of this one.
    played: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>>,
    runtime: tokio::runtime::Runtime,
    next: AtomicUsize,
}

static RIG: LazyLock<Rig> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let scripts: Arc<Mutex<HashMap<String, Script>>> = Arc::default();
    let heads: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let played: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>> = Arc::default();
    let (own, hyper) = runtime.block_on(async {
        let mut urls = Vec::new();
        for fast_path in BOTH_PATHS {
            let upstream = playing(scripts.clone(), heads.clone(), played.clone()).await;
            let routes = vec![route("/d", &upstream, AuthMode::Public)];
            let h = harness_with_settings(routes, upstream, on_path(fast_path)).await;
            urls.push(h.url.trim_start_matches("http://").to_owned());
            // The harness's gateway serves for as long as the runtime runs.
            std::mem::forget(h);
        }
        (urls.remove(0), urls.remove(0))
    });
    Rig { own, hyper, scripts, heads, played, runtime, next: AtomicUsize::new(0) }
});

/// A raw upstream: reads a request head, records it under the case id (the
/// path's second segment), sends that case's script, closes if it says so,
/// and then says it has played.
async fn playing(
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    heads: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    played: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (scripts, heads, played) = (scripts.clone(), heads.clone(), played.clone());
            tokio::spawn(async move {
                let mut kept = Some(stream);
                while let Some(mut stream) = kept.take() {
                    let Some(head) = read_head(&mut stream).await else { return };
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
                    let path = line.split(' ').nth(1).unwrap_or_default().split('?').next().unwrap_or_default();
                    let id = path.split('/').nth(2).unwrap_or_default().to_owned();
                    heads.lock().unwrap().insert(id.clone(), head);
                    let script = scripts.lock().unwrap().get(&id).cloned();
                    let keep_going = match script {
                        Some(script) => play(&mut stream, script).await,
                        None => false,
                    };
                    let done = played.lock().unwrap().remove(&id);
                    // Dropped here, unless kept: closed before it is told.
                    kept = keep_going.then_some(stream);
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            });
        }
    });
    url
}

/// Writes a script's bytes in its pieces, a pause after each; whether the
/// connection is to be kept for another request.
async fn play(stream: &mut TcpStream, (response, cuts, close): Script) -> bool {
    let mut from = 0;
    for cut in cuts.into_iter().chain([response.len()]) {
        let cut = cut.clamp(from, response.len());
        if stream.write_all(&response[from..cut]).await.is_err() {
            return false;
        }
        from = cut;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    !close
}

impl Rig {
    /// Runs `case` through both gateways: what each client saw, and what
    /// each upstream received.
    fn run(&self, case: &Case) -> [(Seen, Option<Received>); 2] {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        [(&self.own, "own"), (&self.hyper, "hyper")].map(|(gateway, side)| {
            let id = format!("c{n}{side}");
            let script = (case.response.clone().into_bytes(), case.cuts.clone(), case.close);
            self.scripts.lock().unwrap().insert(id.clone(), script);
            let (done, played) = tokio::sync::oneshot::channel();
            self.played.lock().unwrap().insert(id.clone(), done);
            let seen = self.runtime.block_on(exchange(gateway, &id, case));
            let received = self.heads.lock().unwrap().remove(&id).map(|head| normalised_request(&head, &id));
            if received.is_some() {
                // The upstream may still be sending bytes past the end, or
                // about to close: the next case starts once it is done.
                self.runtime
                    .block_on(async { tokio::time::timeout(Duration::from_secs(10), played).await })
                    .unwrap_or_else(|_| panic!("the upstream never finished playing {id}"))
                    .ok();
            }
            self.played.lock().unwrap().remove(&id);
            (seen, received)
        })
    }
}

/// Sends the case's request on a new connection to `gateway` and reads one
/// response, as a strict client would.
async fn exchange(gateway: &str, id: &str, case: &Case) -> Seen {
    let method = if case.head_only { "HEAD" } else { "GET" };
    let mut request = format!("{method} /d/{id}{} HTTP/1.1\r\nhost: gw\r\nx-request-id: {id}\r\n", case.target);
    for line in &case.request_headers {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream, case.head_only, id))
        .await
        .unwrap_or_else(|_| panic!("no answer to {request:?}"))
}

/// Reads one response from `stream`; `id` is the request id it must carry.
async fn read_response(stream: &mut TcpStream, head_only: bool, id: &str) -> Seen {
    let mut input = Vec::new();
    let mut buf = [0u8; 8192];
    let (status, headers, head_len) = loop {
        let mut lines = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut lines);
        match response.parse(&input) {
            Ok(httparse::Status::Complete(len)) => {
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                break (response.code.unwrap(), headers, len);
            }
            Ok(httparse::Status::Partial) => {}
            Err(error) => panic!("the gateway sent a malformed head ({error}): {:?}", String::from_utf8_lossy(&input)),
        }
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => input.extend_from_slice(&buf[..n]),
            _ => return Seen::Refused,
        }
    };
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(header("x-request-id"), Some(id), "every response carries the request id: {headers:?}");
    // One framing, said once (RFC 9112 §6.2, §6.3).
    let lengths: Vec<&str> = headers.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v.as_str()).collect();
    let codings = headers.iter().filter(|(n, _)| n == "transfer-encoding").count();
    if lengths.len() > 1
        || lengths.iter().any(|l| !l.bytes().all(|b| b.is_ascii_digit()))
        || (codings > 0 && !lengths.is_empty())
    {
        return Seen::Malformed;
    }
    input.drain(..head_len);
    let body = if head_only || status == 204 || status == 304 {
        Ok(Vec::new())
    } else if header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked")) {
        dechunk(stream, input).await
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().expect("a gateway sends one plain length");
        read_exactly(stream, input, length).await
    } else {
        let mut rest = input;
        stream.read_to_end(&mut rest).await.map(|_| rest).map_err(|_| Ending::CutShort)
    };
    let body = match body {
        Ok(body) => body,
        Err(Ending::CutShort) => return Seen::Refused,
        Err(Ending::Malformed) => return Seen::Malformed,
    };
    if status == 502 {
        return Seen::Refused;
    }
    if status == 400 {
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Seen::BadRequest(error["error"]["code"].as_str().unwrap_or_default().to_owned());
    }
    let mut kept: Vec<(String, String)> =
        headers.into_iter().filter(|(name, _)| !NOT_COMPARED.contains(&name.as_str())).collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    Seen::Response { status, headers: kept, body }
}

/// Response headers two correct proxies may set differently.
const NOT_COMPARED: [&str; 7] =
    ["date", "content-length", "transfer-encoding", "connection", "keep-alive", "trailer", "x-request-id"];

/// Why a body did not arrive whole.
#[derive(Debug)]
enum Ending {
    /// The connection ended first.
    CutShort,
    /// Its framing is broken.
    Malformed,
}

/// Reads more of `stream` into `have`; the end of the stream cuts the body short.
async fn more(stream: &mut TcpStream, have: &mut Vec<u8>) -> Result<(), Ending> {
    let mut buf = [0u8; 8192];
    match stream.read(&mut buf).await {
        Ok(n) if n > 0 => {
            have.extend_from_slice(&buf[..n]);
            Ok(())
        }
        _ => Err(Ending::CutShort),
    }
}

async fn read_exactly(stream: &mut TcpStream, mut have: Vec<u8>, length: usize) -> Result<Vec<u8>, Ending> {
    while have.len() < length {
        more(stream, &mut have).await?;
    }
    have.truncate(length);
    Ok(have)
}

/// The body of a chunked message, strictly decoded.
async fn dechunk(stream: &mut TcpStream, mut have: Vec<u8>) -> Result<Vec<u8>, Ending> {
    let mut body = Vec::new();
    let mut at = 0;
    // A size line, or a trailer line: up to CRLF, with no bare LF before it.
    async fn line(stream: &mut TcpStream, have: &mut Vec<u8>, at: usize) -> Result<usize, Ending> {
        loop {
            if let Some(lf) = have[at..].iter().position(|b| *b == b'\n') {
                return if lf > 0 && have[at + lf - 1] == b'\r' { Ok(at + lf - 1) } else { Err(Ending::Malformed) };
            }
            more(stream, have).await?;
        }
    }
    loop {
        let end = line(stream, &mut have, at).await?;
        let size_line = std::str::from_utf8(&have[at..end]).map_err(|_| Ending::Malformed)?;
        let digits = size_line.split(';').next().unwrap_or_default().trim_end_matches([' ', '\t']);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Ending::Malformed);
        }
        let size = usize::from_str_radix(digits, 16).map_err(|_| Ending::Malformed)?;
        at = end + 2;
        if size == 0 {
            loop {
                let end = line(stream, &mut have, at).await?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Ok(body);
                }
            }
        }
        while have.len() < at + size + 2 {
            more(stream, &mut have).await?;
        }
        body.extend_from_slice(&have[at..at + size]);
        if &have[at + size..at + size + 2] != b"\r\n" {
            return Err(Ending::Malformed);
        }
        at += size + 2;
    }
}

/// The request line and header lines (names in lower case, sorted by name
/// with the order of repeated names kept) of a head an upstream received,
/// with the case id and the upstream's own address made neutral.
fn normalised_request(head: &[u8], id: &str) -> Received {
    let text = String::from_utf8_lossy(head).replace(id, "ID");
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut headers: Vec<(String, String)> = lines
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            let name = name.to_ascii_lowercase();
            let value = if name == "host" { "UPSTREAM".to_owned() } else { value.trim().to_owned() };
            (name, value)
        })
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers.insert(0, (String::new(), request_line));
    headers
}

/// Path segments: mostly ones with a canonical form (some needing work to
/// reach it), sometimes ones without.
fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("a".to_owned()),
        4 => Just("B-c_d~e".to_owned()),
        2 => Just("%41%62".to_owned()),
        2 => Just("%2e%2e%2e".to_owned()),
        2 => Just("x%20y".to_owned()),
        2 => Just("%c3%a9".to_owned()),
        2 => Just(String::new()),
        2 => Just("caf%C3%A9".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just("%2F".to_owned()),
        1 => Just("a;b".to_owned()),
        1 => Just("%25".to_owned()),
    ]
}

fn target() -> impl Strategy<Value = String> {
    let query = prop_oneof![Just(String::new()), Just("?q=1".to_owned()), Just("?a=%41&b=..%2f".to_owned())];
    (prop::collection::vec(path_segment(), 0..4), query).prop_map(|(segments, query)| {
        let mut target = String::new();
        for segment in segments {
            target.push('/');
            target.push_str(&segment);
        }
        target + &query
    })
}

fn request_header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("accept: */*".to_owned()),
        Just("User-Agent:   spaced\tout  ".to_owned()),
        Just("cookie: a=1".to_owned()),
        Just("Cookie: b=2; __Host-access_token=secret".to_owned()),
        Just("x-user-id: admin".to_owned()),
        Just("X_User_Id: admin".to_owned()),
        Just("x-forwarded-for: 6.6.6.6".to_owned()),
        Just("X-Real-IP: 6.6.6.6".to_owned()),
        Just("connection: keep-alive".to_owned()),
        Just("x-dup: 1".to_owned()),
        Just("X-Dup: 2".to_owned()),
        Just("x-bytes: caf\u{e9}".to_owned()),
        Just("authorization: Basic YTpi".to_owned()),
        Just("x-http-method-override: DELETE".to_owned()),
    ]
}

/// A body of `len` bytes that differs from case to case.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| b'a' + ((i as u8).wrapping_add(seed) % 26)).collect()
}

/// An upstream's answer, where the bytes past its end start (they are sent
/// apart, after a pause, so that they arrive while the connection would
/// sit in the pool), and whether the upstream closes after it.
fn response() -> impl Strategy<Value = (String, usize, bool)> {
    let status = prop_oneof![
        Just("200 OK"),
        Just("200"),
        Just("201 Created"),
        Just("204 No Content"),
        Just("304 Not Modified"),
        Just("404 Not Found"),
        Just("500 Whatever"),
    ];
    let version = prop_oneof![4 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")];
    let interim = prop_oneof![
        6 => Just(""),
        2 => Just("HTTP/1.1 100 Continue\r\n\r\n"),
        2 => Just("HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"),
        1 => Just("\r\n"),
        1 => Just("HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"),
    ];
    let extra_headers = prop::collection::vec(
        prop_oneof![
            Just("content-type: text/plain"),
            Just("x-custom:  padded value  "),
            Just("set-cookie: a=1"),
            Just("Set-Cookie: b=2"),
            Just("connection: x-hop"),
            Just("x-hop: gone"),
            Just("keep-alive: timeout=5"),
            Just("x-request-id: upstream-made"),
            Just("x-bytes: caf\u{e9}"),
            Just("x-folded: a\r\n b"),
            Just("set-cookie: __Host-access_token=forged; Path=/"),
            Just("x-empty:"),
        ],
        0..4,
    );
    let framing = 0..12u8;
    let extra =
        prop_oneof![4 => Just(""), 1 => Just("garbage"), 1 => Just("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nLEAK")];
    (status, version, interim, extra_headers, framing, 0..300usize, 1..5usize, extra, any::<bool>(), any::<u8>())
        .prop_map(|(status, version, interim, extra_headers, framing, len, pieces, extra, close, seed)| {
            let body = body(len, seed);
            let mut head = format!("{interim}{version} {status}\r\n");
            for line in extra_headers {
                head.push_str(line);
                head.push_str("\r\n");
            }
            let chunked = |ext: &str, eol: &str| {
                let mut out = Vec::new();
                for piece in body.chunks(len / pieces + 1) {
                    out.extend(format!("{:x}{ext}{eol}", piece.len()).into_bytes());
                    out.extend_from_slice(piece);
                    out.extend(b"\r\n");
                }
                out.extend(b"0\r\n");
                out
            };
            let (framing_head, payload, must_close): (String, Vec<u8>, bool) = match framing {
                0 | 1 => (format!("content-length: {len}\r\n"), body.clone(), false),
                2 => ("transfer-encoding: chunked\r\n".into(), [chunked("", "\r\n"), b"\r\n".to_vec()].concat(), false),
                3 => (
                    "transfer-encoding: chunked\r\n".into(),
                    [chunked(";ext=1", "\r\n"), b"x-trailer: t\r\n\r\n".to_vec()].concat(),
                    false,
                ),
                4 => (
                    "content-length: 7\r\ntransfer-encoding: chunked\r\n".into(),
                    [chunked("", "\r\n"), b"\r\n".to_vec()].concat(),
                    false,
                ),
                5 => (String::new(), body.clone(), true),
                6 => (format!("content-length: {len}\r\ncontent-length: {len}\r\n"), body.clone(), false),
                7 => (format!("content-length: {len}\r\ncontent-length: {}\r\n", len + 1), body.clone(), true),
                8 => ("transfer-encoding: chunked\r\n".into(), [chunked("", "\n"), b"\r\n".to_vec()].concat(), true),
                9 => (format!("content-length: {}\r\n", len + 10), body.clone(), true),
                10 => (format!("content-length: +{len}\r\n"), body.clone(), true),
                _ => (
                    "transfer-encoding: gzip, chunked\r\n".into(),
                    [chunked("", "\r\n"), b"\r\n".to_vec()].concat(),
                    false,
                ),
            };
            let mut bytes = head.into_bytes();
            bytes.extend(framing_head.into_bytes());
            bytes.extend(b"\r\n");
            bytes.extend(payload);
            let end = bytes.len();
            bytes.extend(extra.as_bytes());
            (String::from_utf8(bytes).unwrap(), end, close || must_close)
        })
}

fn case() -> impl Strategy<Value = Case> {
    let cuts = prop::collection::vec(0..400usize, 0..3).prop_map(|mut cuts| {
        cuts.sort_unstable();
        cuts
    });
    (prop::bool::weighted(0.2), target(), prop::collection::vec(request_header(), 0..6), response(), cuts).prop_map(
        |(head_only, target, request_headers, (response, end, close), mut cuts)| {
            cuts.retain(|cut| *cut < end);
            cuts.push(end);
            Case { head_only, target, request_headers, response, cuts, close }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn both_request_paths_give_the_client_and_the_upstream_the_same(case in case()) {
        let [(own, own_request), (hyper, hyper_request)] = RIG.run(&case);
        prop_assert!(own != Seen::Malformed && hyper != Seen::Malformed, "a broken framing was relayed: {:?} / {:?}", own, hyper);
        prop_assert_eq!(&own, &hyper, "the clients saw different answers");
        prop_assert_eq!(own_request, hyper_request, "the upstreams saw different requests");
    }
}
