//! Relay integration tests: the relay and the mock vendor in-process on `127.0.0.1:0`, real sockets, real bytes.
//! One test binary (one link) for the whole suite.

#![expect(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test fails loudly at the first broken step; its tasks end with its runtime"
)]

mod errors;
mod faults;
mod hostile;
mod hygiene;
mod jwt;
mod limits;
mod resume;
mod store;
mod streaming;
mod support;
mod usage;
