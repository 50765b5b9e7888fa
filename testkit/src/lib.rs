//! Test plumbing for the whole workspace, in a crate of its own (a dev-dependency of the crates that test, and a
//! dependency of `loadtest`'s perf harness): `relay/tests`, `e2e`, `mock-upstream/tests` and `loadtest` all drive
//! real processes on loopback ports the same way, so the way lives here, once.
//!
//! - [`proc`]: spawn a binary that prints `listening on ADDR`, read the address, keep its stderr for log
//!   assertions, and kill it by PID when the test ends; CPU time and RSS from `/proc`.
//! - [`nginx`]: a real nginx from `deploy/nginx/ssegate.conf` (only the two ports changed), stopped with its
//!   workers when dropped.
//! - [`client`]: a streaming chat request to the mock, the relay or nginx, and the mock's inspection endpoints.
//! - [`idp`]: an identity provider for the JWT tests: RS256, ES256 and EdDSA keys, their JWKS file, tokens.
//! - [`prometheus`]: a real Prometheus scraping the relay's admin listener, queried through its API.
//! - [`redis`]: a real redis-server on a unix socket, stopped and started again at will.
//! - [`sse`]: read an event stream, timing each event's one-way delay from the mock's `ts=` stamp
//!   (`mock_upstream::dialect::event_ts`).
//!
//! Everything binds 127.0.0.1.

pub mod client;
pub mod haproxy;
pub mod idp;
pub mod nginx;
pub mod proc;
pub mod prometheus;
pub mod python;
pub mod redis;
pub mod sse;
