//! Black-box tests over real processes: client → relay → mock, and client → nginx → relay → mock.
//! One test binary (one link); every process binds 127.0.0.1 and is stopped by its PID when its test ends.

#![expect(
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "a test fails loudly at the first broken step; its tasks end with its runtime"
)]

mod admin;
mod browser;
mod demo;
mod dialects;
mod faults;
mod logs;
mod openai_sdk;
mod paths;
mod policy;
mod prometheus;
mod proxy;
mod reload;
mod replicas;
mod stack;
mod support;
mod tls;
mod traces;
mod upgrade;
mod vendor_sdks;
