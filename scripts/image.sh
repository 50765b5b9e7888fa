#!/usr/bin/env bash
# Builds the relay's container image (deploy/container/Containerfile) with buildah, offline:
#   1. cargo builds the release relay as a static executable (glibc, `+crt-static`: it needs no shared library, and
#      glibc's built-in `files` and `dns` lookups still resolve the vendor's name from the /etc/hosts and
#      /etc/resolv.conf a container runtime provides);
#   2. the build context gets the binary, this machine's CA bundle and deploy/container/relay.toml;
#   3. buildah builds FROM scratch (nothing to pull) and writes the image as an OCI archive.
# Usage: scripts/image.sh [TAG]   (default TAG: the workspace version). Prints the archive's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' relay/Cargo.toml | head -n 1)
tag=${1:-$version}
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
target=x86_64-unknown-linux-gnu
ca=${SSEGATE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if ! command -v buildah >/dev/null 2>&1; then
    echo "image: buildah is not installed (apt-get install -y buildah)" >&2
    exit 1
fi
if [ ! -s "$ca" ]; then
    echo "image: no CA bundle at $ca (apt-get install -y ca-certificates, or set SSEGATE_CA_BUNDLE)" >&2
    exit 1
fi

# The target named explicitly: RUSTFLAGS then apply to the relay and its dependencies only, not to build scripts
# and proc macros, which must stay dynamic to run on the build machine. getrandom finds libc's getrandom() with
# dlsym, which a static binary cannot do, and then reads /dev/urandom instead: named at build time, the random bytes
# (request ids, trace ids) come from the system call, with no device file needed.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
    cargo build --release --locked -p relay --bin relay --target "$target"
binary="target/$target/release/relay"
linked=$(ldd "$binary" 2>&1 || true)
case "$linked" in
    *"statically linked"* | *"not a dynamic executable"*) ;;
    *)
        echo "image: $binary is not static:" >&2
        echo "$linked" >&2
        exit 1
        ;;
esac

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/relay"
cp "$ca" "$context/ca-certificates.crt"
cp deploy/container/relay.toml "$context/relay.toml"
# Strip the debug line tables: the image carries what runs, nothing else.
strip "$context/relay"

mkdir -p target/image
archive="target/image/ssegate-$tag.tar"
rm -f "$archive"
# vfs storage and chroot isolation: no kernel overlay or user namespaces needed (the build runs no command).
buildah --storage-driver vfs build --quiet --isolation chroot \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    -f deploy/container/Containerfile -t "ssegate:$tag" "$context" >/dev/null
buildah --storage-driver vfs push --quiet "ssegate:$tag" "oci-archive:$archive:ssegate:$tag"
buildah --storage-driver vfs rmi "ssegate:$tag" >/dev/null
echo "image: $(du -h "$archive" | cut -f1) $archive"
echo "$archive"
