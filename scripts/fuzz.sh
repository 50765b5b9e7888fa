#!/usr/bin/env bash
# Fuzzes the relay's parsers of vendor bytes (relay/wire: the HTTP/1.1 response reader and the SSE scanner) for a
# bounded time each, with cargo-fuzz (installed from crates.io when missing). Stable Rust, no sanitizer (the code
# under test has no unsafe); a crash fails the run and leaves its input under relay/fuzz/artifacts/.
#   scripts/fuzz.sh          60 s per target (what CI runs)
#   scripts/fuzz.sh 600      longer
set -euo pipefail
cd "$(dirname "$0")/../relay/fuzz"
secs="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
for target in h1_response sse_scanner; do
    mkdir -p "corpus/$target"
    seeds=()
    if [ -d "seeds/$target" ]; then seeds=("seeds/$target"); fi
    log=$(mktemp)
    if ! cargo fuzz run --sanitizer none "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $target failed (its input is under relay/fuzz/artifacts/$target)" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $target: ${runs:-?} inputs in ${secs}s, no crash"
    rm -f "$log"
done
