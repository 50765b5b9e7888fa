//! Placeholder: the goose load test (time to first byte and per-chunk delay through nginx) is not built yet.
//! It arrives with the performance issue; until then this binary says so and exits non-zero.

use std::io::Write;

fn main() -> std::process::ExitCode {
    let _ = writeln!(
        std::io::stderr(),
        "loadtest is not built yet: the goose load test lands with the performance work (see loadtest/README.md)"
    );
    std::process::ExitCode::from(2)
}
