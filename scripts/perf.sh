#!/usr/bin/env bash
# The side-by-side performance run (docs/performance.md): builds the release binaries, then runs
# target/release/perf, which starts mock-upstream, the relay and nginx on loopback and load-tests four targets.
#   scripts/perf.sh                          full table: 1, 100 and 1000 streams
#   scripts/perf.sh --gate                   short CI variant, compared with loadtest/perf-baseline.json
#   scripts/perf.sh --gate --write-baseline  refresh the baseline from this machine
# Other flags: --levels 1,100 --run-secs 20 --interval-ms 50 --chunks 40 --serial-streams 20 --serial-only
# (the one-stream-at-a-time pairs only).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "perf: nginx is required (apt-get install -y nginx-light)" >&2
    exit 1
fi
# Each relayed stream holds two sockets; 1000 streams and more need a raised limit.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --workspace --bins
exec target/release/perf "$@"
