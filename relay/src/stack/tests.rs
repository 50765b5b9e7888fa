//! The request path driven without a socket: in-memory requests through [`Relay::handle_request`], so each stage
//! that answers before the vendor is called is seen answering (and the vendor never called).

use http::Method;
use http_body_util::BodyExt;

use super::*;

const KEY: &str = "stack-test-key";

/// A relay whose vendor address refuses connections (a port that was just free).
fn relay(top: &str) -> Relay {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let toml = mock_upstream::relay_config(&mock_upstream::RelayToml {
        https: false,
        mock: closed,
        top,
        tenant: "t",
        client_key: KEY,
        secret_env: "K",
        route: "",
    });
    let env = vec![("K".to_owned(), "vendor-key".to_owned())];
    let config = Config::from_toml(&toml, &env).unwrap();
    let tls = crate::upstream::tls_config(&config.routes).unwrap();
    Relay::new(Arc::new(config), tls, CancellationToken::new())
}

fn request(
    method: Method,
    path: &str,
    key: Option<&str>,
    body: &'static str,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().unwrap();
    if let Some(k) = key {
        let value = HeaderValue::from_str(&format!("Bearer {k}")).unwrap();
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    req
}

/// Status, the `type` of a JSON error body (or the raw body), and the response headers.
async fn answer(relay: &Relay, req: Request<Full<Bytes>>) -> (u16, String, http::HeaderMap) {
    let res = relay
        .handle_request(req, Arc::new(ConnState::default()))
        .await;
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let kind = json
        .as_ref()
        .and_then(|v| v["error"]["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    if parts.status != 200 {
        let trace_id = json.as_ref().and_then(|v| v["error"]["trace_id"].as_str());
        assert_eq!(
            parts.headers[TRACE_ID].to_str().ok(),
            trace_id,
            "the body and the header name the same trace id"
        );
    }
    (parts.status.as_u16(), kind, parts.headers)
}

#[tokio::test]
async fn each_stage_before_the_vendor_answers_for_itself() {
    let r = relay("max_request_body_bytes = 16");
    let chat = "/v1/chat/completions";
    let cases = [
        (
            request(Method::GET, "/healthz", None, ""),
            200,
            "{\"status\":\"ok\"}",
        ),
        (
            request(Method::POST, "/nowhere", Some(KEY), ""),
            404,
            "not_found",
        ),
        (
            request(Method::GET, chat, Some(KEY), ""),
            405,
            "method_not_allowed",
        ),
        (request(Method::POST, chat, None, "{}"), 401, "unauthorized"),
        (
            request(Method::POST, chat, Some("wrong"), "{}"),
            401,
            "unauthorized",
        ),
        (
            request(Method::POST, chat, Some(KEY), "{\"a\":\"0123456789\"}"),
            413,
            "payload_too_large",
        ),
        (
            request(Method::POST, chat, Some(KEY), "{}"),
            502,
            "upstream_connect",
        ),
    ];
    for (req, status, kind) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (got, got_kind, headers) = answer(&r, req).await;
        assert_eq!((got, got_kind.as_str()), (status, kind), "{what}");
        match status {
            405 => assert_eq!(headers[header::ALLOW], "POST"),
            401 => assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_concurrency_limit_answers_before_the_body_is_read() {
    let r = relay("max_streams = 1");
    let _held = r.limiter.acquire("t").await.unwrap();
    let req = request(Method::POST, "/v1/chat/completions", Some(KEY), "{}");
    let (status, kind, headers) = answer(&r, req).await;
    assert_eq!((status, kind.as_str()), (503, "overloaded"));
    assert_eq!(headers[header::RETRY_AFTER], "1");
}

/// The top-level modules of `relay/src` that the code of `module` (its file and folder, tests excluded) names
/// through `crate::`, comments excluded.
fn imports(src: &std::path::Path, module: &str) -> std::collections::BTreeSet<String> {
    let mut files = vec![src.join(format!("{module}.rs"))];
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
                files.push(path);
            }
        }
    }
    let mut found = std::collections::BTreeSet::new();
    let name_of = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect()
    };
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        let code = code.join("\n");
        for part in code.split("crate::").skip(1) {
            // `crate::a::b` names `a`; `crate::{a, b::c}` (over several lines, as rustfmt writes it) names both.
            let names: Vec<String> = match part.strip_prefix('{') {
                Some(list) => list
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(name_of)
                    .collect(),
                None => vec![name_of(part)],
            };
            for name in names {
                if !name.is_empty() && name != module {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn imports_point_one_way() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".rs")
                .map(str::to_owned)
        })
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let graph: std::collections::BTreeMap<String, _> = modules
        .iter()
        .map(|m| (m.clone(), imports(&src, m)))
        .collect();
    for (module, uses) in &graph {
        // `startup` wires the entry points: it alone builds the composition root, and nothing builds it.
        assert!(
            module == "startup" || !uses.contains("stack"),
            "{module} imports the composition root (stack)"
        );
        assert!(
            !uses.contains("startup"),
            "{module} imports the startup wiring"
        );
        for used in uses {
            assert!(
                graph.contains_key(used),
                "{module} names crate::{used}, which is not a module"
            );
        }
    }
    // Config is plain data: it builds no runtime object of another module, so it names none (`startup` turns it
    // into clients and verifiers). `headers` and `text` are pure helpers it validates with.
    let config: Vec<&String> = graph["config"]
        .iter()
        .filter(|m| *m != "headers" && *m != "text")
        .collect();
    assert!(config.is_empty(), "config names {config:?}");
    // No cycle: repeatedly remove modules that import nothing left; whatever remains is a cycle.
    let mut left = graph.clone();
    while let Some(leaf) = left
        .iter()
        .find(|(_, uses)| uses.iter().all(|u| !left.contains_key(u)))
        .map(|(m, _)| m.clone())
    {
        left.remove(&leaf);
    }
    assert!(
        left.is_empty(),
        "modules importing each other in a circle: {left:?}"
    );
    // The stages the crate map promises, each its own file.
    for stage in [
        "server", "trace", "route", "auth", "limit", "body", "upstream", "tap", "record",
    ] {
        assert!(modules.iter().any(|m| m == stage), "no {stage}.rs");
    }
}
