#!/usr/bin/env bash
# Re-creates vendor/hyper: the published hyper crate (its SHA-256 checked against the crates.io index's), its
# profile sections dropped (cargo ignores them outside the workspace root and warns), plus vendor/hyper.patch; then
# runs hyper's own unit tests on the result (vendor/README.md). For a new hyper version: update VERSION and
# CHECKSUM (the `cksum` of that version in https://index.crates.io/hy/pe/hyper), fix the patch until it applies,
# run this.
#   scripts/vendor-hyper.sh          re-create vendor/hyper (and run hyper's unit tests on it)
#   scripts/vendor-hyper.sh --check  only check that vendor/hyper is exactly that (CI runs this): exit 1 and the
#                                    differences when a file was edited, added or removed by hand
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.12.0
CHECKSUM=2c3e324da4c95177d6291d4c8730197c0d1822f8a9766814a4a44fa5ab797c9c
check=false
case "${1:-}" in
    --check) check=true ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/hyper.crate" "https://static.crates.io/crates/hyper/hyper-$VERSION.crate"
echo "$CHECKSUM  $work/hyper.crate" | sha256sum --check --quiet -
tar -xzf "$work/hyper.crate" -C "$work"
crate="$work/hyper-$VERSION"
rm -f "$crate/.cargo-ok" "$crate/Cargo.lock" "$crate/Cargo.toml.orig"
python3 - "$crate/Cargo.toml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
open(path, "w").write(text[: text.index("[profile.bench]")].rstrip() + "\n")
PY
patch -s -p1 -d "$crate" < vendor/hyper.patch
if $check; then
    if ! diff -r "$crate" vendor/hyper; then
        echo "vendor-hyper: vendor/hyper is not hyper $VERSION with vendor/hyper.patch (differences above);" \
            "change the patch file and run scripts/vendor-hyper.sh" >&2
        exit 1
    fi
    echo "vendor-hyper: vendor/hyper is hyper $VERSION with vendor/hyper.patch"
    # The patch pins hyper, so `cargo update` never brings its fixes: say when a newer 1.x is out (not a failure;
    # vendor/README.md, "When hyper moves").
    if newest=$(curl -fsSL --retry 2 https://index.crates.io/hy/pe/hyper | python3 -c '
import json, sys
versions = [json.loads(l) for l in sys.stdin if l.strip()]
def key(v):
    return tuple(int(p) for p in v.split("."))
ok = [v["vers"] for v in versions if not v["yanked"] and v["vers"].startswith("1.") and "-" not in v["vers"]]
print(max(ok, key=key))'); then
        if [ "$newest" != "$VERSION" ]; then
            echo "vendor-hyper: note: hyper $newest is out (vendor/hyper is $VERSION): see vendor/README.md, \"When hyper moves\""
        fi
    fi
    exit 0
fi
# hyper's unit tests (the published crate carries no integration tests), in a copy with its own target directory.
cp -r "$crate" "$work/test"
cargo test --manifest-path "$work/test/Cargo.toml" --target-dir "$work/target" --features full --lib
rm -rf vendor/hyper
cp -r "$crate" vendor/hyper
echo "vendor-hyper: vendor/hyper is hyper $VERSION with vendor/hyper.patch"
