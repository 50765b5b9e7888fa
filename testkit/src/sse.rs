//! Reading an event stream as a client, timing what a user feels: the response head, the first byte, and each
//! event's one-way delay (arrival wall clock minus the mock's `ts=` stamp, [`mock_upstream::dialect::event_ts`]).
//!
//! Events are found by [`EventReader`], a small incremental splitter over the bytes received so far (a copy is
//! fine here: this is the client, not the relay); transport reads are not events, so timing reads would be wrong.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mock_upstream::dialect::{event_ts, unix_nanos};

/// Splits received bytes into events (the text before each blank line).
#[derive(Debug, Default)]
pub struct EventReader {
    pending: Vec<u8>,
}

impl EventReader {
    /// Adds `chunk` and calls `each` with every event it completed, in order.
    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(&[u8])) {
        let before = self.pending.len();
        self.pending.extend_from_slice(chunk);
        // A blank line may straddle the old and new bytes: look from one byte before the new ones.
        let mut scan = before.saturating_sub(1);
        let mut consumed = 0;
        while let Some(end) = find(&self.pending[scan..], b"\n\n") {
            let end = scan + end;
            each(&self.pending[consumed..end]);
            consumed = end + 2;
            scan = consumed;
        }
        self.pending.drain(..consumed);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The one-way delay of an event that carries a `ts=` stamp, given its arrival time in Unix nanoseconds.
pub fn delay(event: &[u8], arrived: u128) -> Option<Duration> {
    let ts = event_ts(event)?;
    Some(Duration::from_nanos(
        u64::try_from(arrived.saturating_sub(ts)).unwrap_or(u64::MAX),
    ))
}

/// What a client saw of one stream.
pub struct Received {
    pub bytes: Vec<u8>,
    pub trace_id: String,
    /// One-way delay of each content event, in arrival order.
    pub delays: Vec<Duration>,
    /// Arrival of the response head, the first body byte and the end, measured from sending the request.
    pub head: Duration,
    pub first_byte: Duration,
    pub end: Duration,
}

impl Received {
    /// Median and largest per-chunk one-way delay.
    pub fn p50_max(&self) -> (Duration, Duration) {
        let mut sorted = self.delays.clone();
        sorted.sort();
        let at = |q: f64| {
            sorted
                .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
        };
        (at(0.5).unwrap_or_default(), at(1.0).unwrap_or_default())
    }
}

/// Sends `rb` and reads the whole SSE response (status 200 required), timing each complete event as it arrives.
pub async fn receive(rb: reqwest::RequestBuilder) -> Result<Received> {
    let started = tokio::time::Instant::now();
    let mut res = rb.send().await?;
    let head = started.elapsed();
    if res.status() != 200 {
        bail!("status {}", res.status());
    }
    let trace_id = res
        .headers()
        .get("x-trace-id")
        .context("no x-trace-id")?
        .to_str()?
        .to_owned();
    let (mut bytes, mut delays, mut first_byte) = (Vec::new(), Vec::new(), None);
    let mut reader = EventReader::default();
    while let Some(chunk) = res.chunk().await? {
        let now = unix_nanos();
        first_byte.get_or_insert_with(|| started.elapsed());
        bytes.extend_from_slice(&chunk);
        reader.feed(&chunk, |event| delays.extend(delay(event, now)));
    }
    Ok(Received {
        bytes,
        trace_id,
        delays,
        head,
        first_byte: first_byte.unwrap_or_default(),
        end: started.elapsed(),
    })
}

/// Opens a never-ending flood stream on a socket with a tiny receive buffer, reads its first bytes, and returns
/// the socket for the caller to never read again: a client that stopped reading.
pub async fn stalled_reader(
    addr: std::net::SocketAddr,
    client_key: &str,
) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr).await?;
    let body = r#"{"stream":true,"messages":[]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client_key}\r\n\
         x-mock-chunks: 1000000\r\nx-mock-interval-ms: 0\r\nx-mock-chunk-bytes: 16000\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut first = [0u8; 512];
    anyhow::ensure!(stream.read(&mut first).await? > 0, "no response");
    Ok(stream)
}

/// A resumable answer (the relay's `resume`) read until `events` whole events came: the
/// bytes up to the end of the last of them, and the number its `id: <sid>:<n>` line gave it.
pub async fn read_events(
    res: &mut reqwest::Response,
    sid: &str,
    events: usize,
) -> Result<(String, u64)> {
    let mut got = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some((end, _)) = text.match_indices("\n\n").nth(events.saturating_sub(1)) {
            let head = text[..end + 2].to_owned();
            let prefix = format!("id: {sid}:");
            let last = head.lines().rev().find_map(|l| l.strip_prefix(&prefix));
            let seq = last.context("no id line")?.parse()?;
            return Ok((head, seq));
        }
        got.extend_from_slice(&res.chunk().await?.context("the answer ended early")?);
    }
}

/// A resumable answer as the vendor sent it: the relay's `id: <sid>:…` lines taken out.
pub fn without_ids(body: &str, sid: &str) -> String {
    let prefix = format!("id: {sid}:");
    body.split_inclusive('\n')
        .filter(|l| !l.starts_with(&prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_found_across_any_split() {
        let body = b"data: ts=1;a\n\n: keep-alive\n\ndata: [DONE]\n\n";
        for cut in 0..=body.len() {
            let mut r = EventReader::default();
            let mut events = Vec::new();
            r.feed(&body[..cut], |e| events.push(e.to_vec()));
            r.feed(&body[cut..], |e| events.push(e.to_vec()));
            let want: Vec<&[u8]> = vec![b"data: ts=1;a", b": keep-alive", b"data: [DONE]"];
            assert_eq!(events, want, "cut at {cut}");
        }
    }
}
