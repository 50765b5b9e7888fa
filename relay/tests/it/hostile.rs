//! A hostile (or merely odd) vendor, byte by byte: a raw TCP server that reads each request and answers with a
//! script of bytes, pauses and closes, so that every response-parsing and connection-reuse path of the relay's
//! vendor client is driven by real sockets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::*;

/// One step of an answer.
#[derive(Clone)]
enum Step {
    Write(Vec<u8>),
    /// Each byte in its own write, with a pause between (heads and chunk lines split at every byte).
    Trickle(Vec<u8>),
    /// Close the connection after the answer.
    Close,
}

use Step::*;

/// The raw vendor: `answer(n)` scripts the answer to its `n`th request (from 0). It counts connections and the
/// requests on each, and publishes how many connections it has closed.
struct Raw {
    addr: std::net::SocketAddr,
    /// (connection number, request head) per request, in order.
    requests: Arc<Mutex<Vec<(usize, String)>>>,
    closed: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw(answer: impl Fn(usize) -> Vec<Step> + Send + Sync + 'static) -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, closed) = watch::channel(0);
    let answer = Arc::new(answer);
    let seen = requests.clone();
    let task = tokio::spawn(async move {
        for conn in 0.. {
            let (socket, _) = listener.accept().await.unwrap();
            let (answer, seen, closed_tx) = (answer.clone(), seen.clone(), closed_tx.clone());
            tokio::spawn(async move {
                serve(socket, conn, &*answer, &seen).await;
                closed_tx.send_modify(|n| *n += 1);
            });
        }
    });
    Raw {
        addr,
        requests,
        closed,
        task,
    }
}

async fn serve(
    mut socket: TcpStream,
    conn: usize,
    answer: &(dyn Fn(usize) -> Vec<Step> + Send + Sync),
    seen: &Mutex<Vec<(usize, String)>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push((conn, head));
            seen.len() - 1
        };
        for step in answer(n) {
            let sent = match step {
                Write(bytes) => socket.write_all(&bytes).await,
                Trickle(bytes) => {
                    let mut r = Ok(());
                    for b in bytes {
                        r = r.and(socket.write_all(&[b]).await);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    r
                }
                Close => return,
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n";
const EVENTS: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}\n\ndata: [DONE]\n\n";

/// A chunked SSE answer carrying [`EVENTS`] in two chunks, the first with extensions.
fn chunked_answer() -> Vec<u8> {
    let (a, b) = EVENTS.split_at(20);
    format!(
        "{SSE_HEAD}transfer-encoding: chunked\r\n\r\n{:x};ext=\"1\"\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
    .into_bytes()
}

async fn relay_for(raw: &Raw) -> Relay {
    start_relay(config(
        &raw.addr.to_string(),
        "first_byte_timeout_ms = 5000",
    ))
    .await
}

async fn body_of(res: reqwest::Response) -> String {
    res.text().await.unwrap()
}

#[tokio::test]
async fn heads_and_chunk_lines_split_at_every_byte_arrive_whole() {
    let raw = raw(|_| {
        vec![
            Write(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
            Trickle(chunked_answer()),
        ]
    })
    .await;
    let relay = relay_for(&raw).await;
    let res = chat(&relay, &[]).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(
        body_of(res).await,
        EVENTS,
        "the 1xx is skipped, the data is the vendor's, byte for byte"
    );
}

#[tokio::test]
async fn a_response_head_the_relay_cannot_read_is_502_upstream_protocol() {
    let big = format!("{SSE_HEAD}x-big: {}\r\n\r\n", "a".repeat(40 << 10));
    let heads: Vec<(&str, Vec<u8>)> = vec![
        ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()),
        (
            "upgrade",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n".to_vec(),
        ),
        ("oversize head", big.into_bytes()),
        (
            "two lengths",
            format!("{SSE_HEAD}content-length: 5\r\ncontent-length: 6\r\n\r\nhello").into_bytes(),
        ),
        ("closed mid-head", b"HTTP/1.1 200 OK\r\ncontent-ty".to_vec()),
    ];
    for (case, head) in heads {
        let raw = raw(move |_| vec![Write(head.clone()), Close]).await;
        let relay = relay_for(&raw).await;
        let res = chat(&relay, &[]).send().await.unwrap();
        assert_eq!(res.status(), 502, "{case}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["error"]["type"], "upstream_protocol", "{case}: {v}");
    }
}

#[tokio::test]
async fn a_body_that_breaks_its_framing_ends_with_one_error_event() {
    let cases = [
        ("bad hex", "zz\r\nxx\r\n", "upstream_protocol"),
        (
            "oversize chunk line",
            &*format!("1;{}\r\n", "e".repeat(8 << 10)),
            "upstream_protocol",
        ),
        (
            "data longer than its size",
            "2\r\nabc\r\n",
            "upstream_protocol",
        ),
        ("no last chunk", "", "upstream_reset"),
    ];
    for (case, tail, kind) in cases {
        let first = "data: {\"choices\":[]}\n\n";
        let answer = format!(
            "{SSE_HEAD}transfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{tail}",
            first.len()
        );
        let raw = raw(move |_| vec![Write(answer.clone().into_bytes()), Close]).await;
        let relay = relay_for(&raw).await;
        let body = body_of(chat(&relay, &[]).send().await.unwrap()).await;
        assert!(
            body.starts_with(first),
            "{case}: what came before is passed on: {body}"
        );
        let err = error_event(&body).unwrap_or_else(|| panic!("{case}: no error event: {body}"));
        assert_eq!(err["kind"], kind, "{case}");
    }
}

#[tokio::test]
async fn content_length_and_chunked_together_read_as_chunked_on_a_connection_not_reused() {
    let answer = {
        let mut a = chunked_answer();
        let at = SSE_HEAD.len();
        a.splice(at..at, b"content-length: 3\r\n".iter().copied());
        a
    };
    let raw = raw(move |_| vec![Write(answer.clone())]).await;
    let relay = relay_for(&raw).await;
    for _ in 0..2 {
        let body = body_of(chat(&relay, &[]).send().await.unwrap()).await;
        assert_eq!(body, EVENTS);
    }
    let conns: Vec<usize> = raw.requests.lock().unwrap().iter().map(|r| r.0).collect();
    assert_eq!(
        conns,
        [0, 1],
        "a smuggling-shaped answer's connection is never reused"
    );
}

#[tokio::test]
async fn a_connection_read_to_its_end_is_reused_and_one_the_vendor_closed_is_not() {
    // Answers 0 and 1 keep the connection; answer 1 closes it right after; answer 2 must come on a new one.
    let raw = raw(|n| match n {
        1 => vec![Write(chunked_answer()), Close],
        _ => vec![Write(chunked_answer())],
    })
    .await;
    let relay = relay_for(&raw).await;
    let mut closed = raw.closed.clone();
    for n in 0..3 {
        let res = chat(&relay, &[]).send().await.unwrap();
        assert_eq!(res.status(), 200, "request {n}");
        assert_eq!(body_of(res).await, EVENTS, "request {n}");
        if n == 1 {
            // The vendor has closed the pooled connection before the next call takes it.
            tokio::time::timeout(Duration::from_secs(5), closed.wait_for(|&c| c >= 1))
                .await
                .unwrap()
                .unwrap();
        }
    }
    let requests = raw.requests.lock().unwrap().clone();
    let conns: Vec<usize> = requests.iter().map(|r| r.0).collect();
    assert_eq!(
        conns,
        [0, 0, 1],
        "reused while open, never after the vendor closed it"
    );
    let head = &requests[0].1;
    assert!(
        head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nhost: {}\r\n", raw.addr)),
        "{head}"
    );
    assert!(head.contains("\r\naccept-encoding: identity\r\n"), "{head}");
}

#[tokio::test]
async fn bytes_after_the_body_make_the_connection_unusable() {
    let raw = raw(|_| {
        let mut a = chunked_answer();
        a.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        vec![Write(a)]
    })
    .await;
    let relay = relay_for(&raw).await;
    for _ in 0..2 {
        assert_eq!(
            body_of(chat(&relay, &[]).send().await.unwrap()).await,
            EVENTS
        );
    }
    let conns: Vec<usize> = raw.requests.lock().unwrap().iter().map(|r| r.0).collect();
    assert_eq!(
        conns,
        [0, 1],
        "an unasked-for answer is never read as the next one's"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_pool_idle_timeout() {
    let raw = raw(|_| vec![Write(chunked_answer())]).await;
    let relay = start_relay(config(&raw.addr.to_string(), "pool_idle_timeout_ms = 200")).await;
    assert_eq!(
        body_of(chat(&relay, &[]).send().await.unwrap()).await,
        EVENTS
    );
    let mut closed = raw.closed.clone();
    // No further call on the route: the pool's own sweep closes it.
    let swept = tokio::time::timeout(Duration::from_secs(5), closed.wait_for(|&c| c >= 1)).await;
    assert!(swept.is_ok(), "the idle connection was never closed");
}
