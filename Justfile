# ssegate tasks. `just` is optional: every recipe is a plain cargo/shell command you can paste.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The vendor key the dev mock accepts and the dev relay sends.
export SSEGATE_DEV_VENDOR_KEY := env_var_or_default("SSEGATE_DEV_VENDOR_KEY", "mock-vendor-key")

default:
    @just --list

# Mock vendor on 127.0.0.1:9090 and the relay on 127.0.0.1:8080 with deploy/relay.dev.toml (Ctrl-C stops both)
dev:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --workspace --bins
    ./target/debug/mock-upstream --listen 127.0.0.1:9090 --api-key "$SSEGATE_DEV_VENDOR_KEY" &
    mock=$!
    trap 'kill $mock 2>/dev/null || true' EXIT
    ./target/debug/relay --config deploy/relay.dev.toml

# The relay's one-command demo (embedded config, in-process mock, page at /)
demo:
    cargo run --release -p relay --features demo -- --demo

# Everything CI runs, minus the nginx install
ci:
    bash .ci/run

# The README's test command
test:
    cargo test --workspace

# Tests of one crate, e.g. `just test-crate relay`
test-crate crate:
    cargo test --workspace -p {{crate}}

# Black-box tests over real processes (and nginx when installed); builds the binaries first so none is stale
e2e:
    cargo build --workspace --bins --features relay/demo
    SSEGATE_REQUIRE_NGINX=${SSEGATE_REQUIRE_NGINX:-0} cargo test --workspace --test e2e -- --nocapture

fmt:
    cargo fmt --all

check-fmt:
    cargo fmt --all -- --check

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

lint: check-fmt clippy

doc:
    cargo doc --workspace --no-deps

# Validate a relay config file
check-config file:
    cargo run -p relay -- --config {{file}} --check-config

run-mock:
    cargo run -p mock-upstream -- --listen 127.0.0.1:9090

# The goose load test against HOST (goose options after it), e.g. `just loadtest http://127.0.0.1:8080 -u 100 -t 30s`
loadtest host *args:
    cargo build --release --workspace --bins
    LOADTEST_KEY=${LOADTEST_KEY:-dev-key} target/release/loadtest --host {{host}} {{args}}

# Side by side: mock, nginx → mock, relay → mock, nginx → relay → mock at 1, 100 and 1000 streams
perf *args:
    bash scripts/perf.sh {{args}}

# The CI performance gate; `just perf-baseline` refreshes loadtest/perf-baseline.json
perf-gate:
    bash scripts/perf.sh --gate

perf-baseline:
    bash scripts/perf.sh --gate --write-baseline

# The production relay (no demo, no mock vendor linked)
build-release:
    cargo build --release -p relay

# Hot-path micro-benchmarks (scanner, audit decoder, key check, tap)
bench:
    cargo bench -p relay --bench hot_path

# The container image (deploy/container/Containerfile) as an OCI archive under target/image/, built offline with
# buildah from a static release binary
image tag="":
    bash scripts/image.sh {{tag}}
