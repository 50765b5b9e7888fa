//! ssegate relay: sits between your front end and an LLM vendor. It authenticates your users with your own keys,
//! calls the vendor with the vendor's secret (which never leaves the server), and relays the vendor's
//! Server-Sent-Events stream to the browser frame by frame, as it arrives, byte for byte.
//!
//! The request path, one file per stage, in order ([`stack`] composes them and is imported by nothing else):
//!
//! ```text
//! server.rs   accept, HTTP/1.1 connection, head timeout, write timeout, drain (server/io.rs, server/workers.rs)
//! route.rs    method + path → /healthz, a configured route, or 404/405
//! trace.rs    trace id (the client's traceparent's, or fresh), the request span and the vendor call's span
//! auth.rs     client key → tenant, or 401
//! limit.rs    concurrent streams, in all and per tenant → a permit; tokens left, requests/min → 503/429
//! body.rs     the request body, bounded → 413
//! policy.rs   the caller's request policy: allowed models and aliases, caps, forced and removed members, prompt
//!             size and deny patterns → the body as sent or rewritten, or 400/403 naming the rule
//! upstream.rs forward to the vendor, failover before the first byte → the head, or 502/504 (upstream/error.rs)
//! tap.rs      the one wrapper on the vendor's body: frames unchanged, timers, keep-alives, error events, one end
//!             callback (tap/timers.rs, tap/failure.rs, tap/tests.rs)
//! resume.rs  a route with `resume`: the answer read by its own task into a log its clients follow, `id:` lines,
//!             resume and stop by stream id, the log copied to the store for other replicas (resume/*.rs)
//! stream_end.rs where a stream ends: the tap reports to it once; it counts the stream, closes its spans and
//!             calls record.rs (the audit line, written once however the stream ended) and account.rs (tokens
//!             settled, usage recorded, read on the admin listener)
//! ```
//!
//! [`startup`] wires all of it for every entry point (`main.rs`, `--demo`, the tests): the runtime objects built
//! from the configuration (vendor TLS, JWT verifier, Redis client), the listeners bound, the workers, the admin
//! listener and the store's renewals run until shutdown.
//!
//! Beside the path: [`config`] (file + environment → validated [`Config`], plain data, one file per concern),
//! [`error`] (each stage's error → the
//! one response function), and leaves every stage may use: [`headers`] (header policy both ways), [`relay_wire::sse`] (event
//! boundaries), [`text`] (bounded UTF-8 audit text), [`outcome`] (how a stream ended, as the tap reports it),
//! [`flushed`] (when a connection last wrote out its buffer), [`metrics`] (every metric's name and labels).
//! [`admin`] serves `/metrics`, `/healthz` and `/readyz` on its own listener; [`otel`] exports spans when
//! configured. [`shutdown`] watches signals; [`demo`] wraps the handler with the demo page (its in-process mock
//! vendor only with the cargo feature `demo`).

pub mod account;
pub mod admin;
pub mod alloc;
pub mod auth;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod flushed;
pub mod headers;
pub mod limit;
pub mod logfields;
pub mod logs;
pub mod metrics;
pub mod otel;
pub mod outcome;
pub mod policy;
pub mod record;
pub mod resume;
pub mod route;
pub mod server;
pub mod shutdown;
pub mod stack;
pub mod startup;
pub mod stream_end;
pub mod tap;
pub mod text;
pub mod trace;
pub mod upstream;
pub mod usage;

pub use config::Config;
pub use server::ServeError;
pub use startup::{
    BindError, ConfigSource, Listeners, PROFILE, Prepared, RunError, StartError, prepare, run,
    serve, serve_main,
};
