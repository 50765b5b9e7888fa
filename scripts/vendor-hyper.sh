#!/usr/bin/env bash
# Re-creates vendor/hyper: the published hyper crate, its profile sections dropped (cargo ignores them outside the
# workspace root and warns), plus vendor/hyper.patch; then runs hyper's own unit tests on the result
# (vendor/README.md). For a new hyper version: update VERSION, fix the patch until it applies, run this.
#   scripts/vendor-hyper.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.12.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL "https://static.crates.io/crates/hyper/hyper-$VERSION.crate" | tar -xz -C "$work"
crate="$work/hyper-$VERSION"
rm -f "$crate/.cargo-ok" "$crate/Cargo.lock" "$crate/Cargo.toml.orig"
python3 - "$crate/Cargo.toml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
open(path, "w").write(text[: text.index("[profile.bench]")].rstrip() + "\n")
PY
patch -s -p1 -d "$crate" < vendor/hyper.patch
# hyper's unit tests (the published crate carries no integration tests), in a copy with its own target directory.
cp -r "$crate" "$work/test"
cargo test --manifest-path "$work/test/Cargo.toml" --target-dir "$work/target" --features full --lib
rm -rf vendor/hyper
cp -r "$crate" vendor/hyper
echo "vendor-hyper: vendor/hyper is hyper $VERSION with vendor/hyper.patch"
