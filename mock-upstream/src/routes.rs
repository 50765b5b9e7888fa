//! HTTP routes of the mock vendor. Each vendor route checks its key, reads the scenario, then hands the stream to
//! [`crate::stream::Emission`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::dialect::{Dialect, completion};
use crate::scenario::Script;
use crate::stats::{Outcome, Record, Stats};
use crate::tls::OverTls;

/// Shared by every route.
pub struct App {
    pub api_key: String,
    pub stats: Arc<Stats>,
    next_id: AtomicU64,
    instance: u64,
}

impl App {
    pub fn new(api_key: String) -> Self {
        // A per-process prefix keeps trace ids from two mock processes apart.
        let instance = (crate::dialect::unix_nanos() as u64) & 0xffff_ffff;
        Self {
            api_key,
            stats: Arc::default(),
            next_id: AtomicU64::new(1),
            instance,
        }
    }

    fn trace_id(&self) -> String {
        format!(
            "mock-{:08x}-{}",
            self.instance,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Where the vendor expects its key.
#[derive(Clone, Copy)]
enum KeyHeader {
    Bearer,
    XApiKey,
    /// Azure OpenAI's `api-key`.
    ApiKey,
    /// Gemini's `x-goog-api-key`.
    XGoogApiKey,
}

fn key_ok(headers: &HeaderMap, kind: KeyHeader, expected: &str) -> bool {
    let name = match kind {
        KeyHeader::Bearer => header::AUTHORIZATION.as_str(),
        KeyHeader::XApiKey => "x-api-key",
        KeyHeader::ApiKey => "api-key",
        KeyHeader::XGoogApiKey => "x-goog-api-key",
    };
    // Exactly one credential header: a second one means someone appended instead of replacing.
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let presented = value.to_str().ok();
    let presented = match kind {
        KeyHeader::Bearer => presented.and_then(|v| v.strip_prefix("Bearer ")),
        KeyHeader::XApiKey | KeyHeader::ApiKey | KeyHeader::XGoogApiKey => presented,
    };
    presented == Some(expected)
}

/// Whether the request came over TLS ([`crate::tls::OverTls`]).
type Tls = Option<Extension<OverTls>>;

/// Which vendor API a request came to: how its body is read, where its key is, how its errors look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Responses,
    SendMessage,
    Anthropic,
    /// Gemini; `stream`: `:streamGenerateContent` (rather than `:generateContent`).
    Gemini {
        stream: bool,
    },
}

impl Api {
    fn key(self) -> KeyHeader {
        match self {
            Api::Chat | Api::Responses => KeyHeader::Bearer,
            Api::SendMessage | Api::Anthropic => KeyHeader::XApiKey,
            Api::Gemini { .. } => KeyHeader::XGoogApiKey,
        }
    }
}

/// A request as the vendor route saw it: the API, the path it came on (recorded), and its key header.
struct Called {
    api: Api,
    path: String,
    key: KeyHeader,
}

/// A vendor route at a fixed path: its API, recorded under that path, with the API's key header.
async fn fixed(
    app: Arc<App>,
    tls: Tls,
    headers: HeaderMap,
    body: Bytes,
    api: Api,
    path: &str,
) -> Response {
    let called = Called {
        api,
        path: path.into(),
        key: api.key(),
    };
    vendor(app, tls, headers, body, called).await
}

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    tls: Tls,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fixed(app, tls, headers, body, Api::Chat, "/v1/chat/completions").await
}

pub async fn responses(
    State(app): State<Arc<App>>,
    tls: Tls,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fixed(app, tls, headers, body, Api::Responses, "/v1/responses").await
}

pub async fn send_message(
    State(app): State<Arc<App>>,
    tls: Tls,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fixed(
        app,
        tls,
        headers,
        body,
        Api::SendMessage,
        "/api/send-message",
    )
    .await
}

/// Anthropic's messages API.
pub async fn messages(
    State(app): State<Arc<App>>,
    tls: Tls,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fixed(app, tls, headers, body, Api::Anthropic, "/v1/messages").await
}

/// The query parameters the Azure and Gemini routes check.
#[derive(Deserialize)]
pub struct VendorQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
    alt: Option<String>,
}

/// Azure OpenAI: chat completions of a deployment, `api-version` required, the key in `api-key`.
pub async fn azure_chat_completions(
    State(app): State<Arc<App>>,
    Path(deployment): Path<String>,
    Query(q): Query<VendorQuery>,
    tls: Tls,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if q.api_version.as_deref().is_none_or(str::is_empty) {
        return error_for(
            Api::Chat,
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found (api-version is required)",
        );
    }
    let called = Called {
        api: Api::Chat,
        path: format!("/openai/deployments/{deployment}/chat/completions"),
        key: KeyHeader::ApiKey,
    };
    vendor(app, tls, headers, body, called).await
}

/// Gemini: `{model}:streamGenerateContent` (with `alt=sse`: without it Gemini streams a JSON array, which no SSE
/// relay can pass on, so the mock refuses it) or `{model}:generateContent`.
pub async fn gemini(
    State(app): State<Arc<App>>,
    Path(model_action): Path<String>,
    Query(q): Query<VendorQuery>,
    tls: Tls,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let stream = match model_action.rsplit_once(':') {
        Some((model, "streamGenerateContent")) if !model.is_empty() => true,
        Some((model, "generateContent")) if !model.is_empty() => false,
        _ => {
            let api = Api::Gemini { stream: false };
            return error_for(api, StatusCode::NOT_FOUND, "NOT_FOUND", "unknown method");
        }
    };
    if stream && q.alt.as_deref() != Some("sse") {
        let api = Api::Gemini { stream };
        let msg = "the mock streams Gemini answers as SSE only (alt=sse)";
        return error_for(api, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", msg);
    }
    let api = Api::Gemini { stream };
    let called = Called {
        api,
        path: format!("/v1beta/models/{model_action}"),
        key: api.key(),
    };
    vendor(app, tls, headers, body, called).await
}

/// What a request body asks for: stream or not, and in which dialect.
struct Ask {
    stream: bool,
    dialect: Dialect,
}

fn parse_body(api: Api, body: &[u8]) -> Result<Ask, &'static str> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "request body must be a JSON object")?;
    if let Api::Gemini { stream } = api {
        // Gemini names the model in the path; a `model` member is an unknown field to it.
        if v.get("model").is_some() {
            return Err("Invalid JSON payload received. Unknown name \"model\"");
        }
        if !v.get("contents").is_some_and(Value::is_array) {
            return Err("field `contents` (array) is required");
        }
        return Ok(Ask {
            stream,
            dialect: Dialect::Gemini,
        });
    }
    if api == Api::Anthropic {
        if !v.get("messages").is_some_and(Value::is_array) {
            return Err("field `messages` (array) is required");
        }
        if !v.get("max_tokens").is_some_and(Value::is_u64) {
            return Err("field `max_tokens` (integer) is required");
        }
        let stream = v.get("stream").and_then(Value::as_bool) == Some(true);
        return Ok(Ask {
            stream,
            dialect: Dialect::Anthropic,
        });
    }
    if api == Api::SendMessage {
        if !v.get("message").is_some_and(Value::is_string) {
            return Err("field `message` (string) is required");
        }
        return Ok(Ask {
            stream: true,
            dialect: Dialect::SendMessage,
        });
    }
    let stream = v.get("stream").and_then(Value::as_bool) == Some(true);
    if api == Api::Responses {
        if !v
            .get("input")
            .is_some_and(|i| i.is_string() || i.is_array())
        {
            return Err("field `input` (string or array) is required");
        }
        return Ok(Ask {
            stream,
            dialect: Dialect::Responses,
        });
    }
    if !v.get("messages").is_some_and(Value::is_array) {
        return Err("field `messages` (array) is required");
    }
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    Ok(Ask {
        stream,
        dialect: Dialect::OpenAi { include_usage },
    })
}

/// Counts a handler dropped before it answered (hyper drops it when the client connection closes).
struct Unanswered<'a>(Option<&'a Stats>);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(stats) = self.0 {
            stats.bump(|c| c.requests_abandoned += 1);
        }
    }
}

async fn vendor(
    app: Arc<App>,
    tls: Tls,
    headers: HeaderMap,
    body: Bytes,
    called: Called,
) -> Response {
    app.stats.bump(|c| c.requests += 1);
    let mut unanswered = Unanswered(Some(&app.stats));
    let trace_id = app.trace_id();
    let seen = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    let mut record = Record {
        trace_id: trace_id.clone(),
        path: called.path.clone(),
        status: 200,
        request_headers: seen,
        request_body: String::from_utf8_lossy(&body[..body.len().min(crate::stats::RECORDED_BODY)])
            .into_owned(),
        tls: tls.is_some(),
        outcome: Outcome::Answered,
        bytes: 0,
        frames: 0,
        sha256: String::new(),
    };
    let (response, stream) = answer(&app, &headers, &body, &called, &trace_id).await;
    unanswered.0 = None;
    record.status = response.status().as_u16();
    if stream.is_some() {
        record.outcome = Outcome::Streaming;
    }
    app.stats.record(record);
    let mut response = match stream {
        Some((dialect, script)) => {
            let emission =
                crate::stream::Emission::new(dialect, script, trace_id.clone(), app.stats.clone());
            let mut r = Response::new(Body::from_stream(emission.into_stream()));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => response,
    };
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", v);
    }
    response
}

/// Either a complete response, or the go-ahead (dialect and script) for a stream.
async fn answer(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    called: &Called,
    id: &str,
) -> (Response, Option<(Dialect, Script)>) {
    let api = called.api;
    if !key_ok(headers, called.key, &app.api_key) {
        let unauthorized = StatusCode::UNAUTHORIZED;
        let r = error_for(
            api,
            unauthorized,
            "invalid_api_key",
            "incorrect API key provided",
        );
        return (r, None);
    }
    let script = match Script::from_headers(headers) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("header {}: {}", e.header, e.reason);
            return (
                error_for(api, StatusCode::BAD_REQUEST, "invalid_scenario", &msg),
                None,
            );
        }
    };
    let ask = match parse_body(api, body) {
        Ok(a) => a,
        Err(msg) => {
            let r = error_for(api, StatusCode::BAD_REQUEST, "invalid_request", msg);
            return (r, None);
        }
    };
    tokio::time::sleep(script.first_byte_delay).await;
    if let Some(status) = script.fail_status {
        let mut r = error_for(api, status, "mock_fault", "injected by x-mock-status");
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        return (r, None);
    }
    if !ask.stream {
        let (chunks, bytes) = (script.chunks, script.chunk_bytes);
        // A complete answer reports its usage, as a stream's closing chunk does.
        app.stats.bump(|c| {
            c.usage_prompt_tokens += 9;
            c.usage_completion_tokens += u64::from(chunks);
        });
        let answer = match ask.dialect {
            Dialect::Responses => {
                let text = crate::dialect::full_text(chunks, bytes);
                crate::dialect::response(id, "completed", Some(text), Some(chunks))
            }
            Dialect::Anthropic => crate::dialect::anthropic_message(id, chunks, bytes),
            Dialect::Gemini => crate::dialect::gemini_answer(id, chunks, bytes),
            _ => completion(id, chunks, bytes),
        };
        return (Json(answer).into_response(), None);
    }
    (StatusCode::OK.into_response(), Some((ask.dialect, script)))
}

/// The error body of `api`'s vendor: Anthropic's `{"type":"error","error":{type,message}}`, Google's
/// `{"error":{code,message,status}}`, else OpenAI's.
fn error_for(api: Api, status: StatusCode, code: &str, message: &str) -> Response {
    let body = match api {
        Api::Anthropic => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": format!("{message} ({code})")}})
        }
        Api::Gemini { .. } => {
            let google = match status.as_u16() {
                400 => "INVALID_ARGUMENT",
                401 | 403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "INTERNAL",
            };
            json!({"error": {"code": status.as_u16(), "message": format!("{message} ({code})"), "status": google}})
        }
        _ => return error(status, code, message),
    };
    (status, Json(body)).into_response()
}

/// OpenAI-style JSON error.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "mock_error", "code": code}});
    (status, Json(body)).into_response()
}

pub async fn stats(State(app): State<Arc<App>>) -> Response {
    Json(app.stats.counters()).into_response()
}

#[derive(Deserialize)]
pub struct WaitQuery {
    counter: String,
    at_least: u64,
    #[serde(default = "default_wait_ms")]
    timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    5_000
}

/// Answers as soon as `counter >= at_least` (200), or after `timeout_ms` (408); both carry the counters.
pub async fn wait_stats(State(app): State<Arc<App>>, Query(q): Query<WaitQuery>) -> Response {
    if Stats::default().counters().get(&q.counter).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "unknown_counter",
            "no such counter",
        );
    }
    let mut rx = app.stats.watch();
    let reached = rx.wait_for(|c| c.get(&q.counter).is_some_and(|v| v >= q.at_least));
    let timeout = Duration::from_millis(q.timeout_ms.min(600_000));
    let status = match tokio::time::timeout(timeout, reached).await {
        Ok(Ok(_)) => StatusCode::OK,
        _ => StatusCode::REQUEST_TIMEOUT,
    };
    (status, Json(app.stats.counters())).into_response()
}

pub async fn stream_record(State(app): State<Arc<App>>, Path(trace_id): Path<String>) -> Response {
    match app.stats.find(&trace_id) {
        Some(r) => Json(r).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown_trace_id",
            "no record for that trace id",
        ),
    }
}
