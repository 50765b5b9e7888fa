#!/usr/bin/env bash
# Installs the real parts the test suite drives, when missing (Debian/Ubuntu, as root): nginx, Prometheus (with
# promtool), Python with venv (the openai SDK is installed by the tests into target/e2e-venv), Chromium and its
# WebDriver, tinyproxy (the egress proxy), redis-server (the shared limit store), HAProxy (the other front), and the
# checkers of the deployment files: systemd-analyze (the unit), shellcheck (every script), buildah (the container
# image, built by scripts/image.sh) and kubectl (renders the Kubernetes kit; kubernetes-validate is installed by the
# tests into target/k8s-venv). The packages of tinyproxy and
# redis-server start no service without systemd; the tests start their own on loopback. Without these parts
# `cargo test --workspace` still passes, but prints one `SKIPPED` line per test that did not run. `.ci/run` runs
# this first.
#   sudo scripts/install-test-parts.sh
set -euo pipefail
missing=()
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then missing+=(nginx-light); fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then missing+=(prometheus); fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
if ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
if ! command -v chromedriver >/dev/null 2>&1; then missing+=(chromium-driver); fi
if ! command -v tinyproxy >/dev/null 2>&1; then missing+=(tinyproxy); fi
if ! command -v redis-server >/dev/null 2>&1; then missing+=(redis-server); fi
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then missing+=(haproxy); fi
if ! command -v systemd-analyze >/dev/null 2>&1; then missing+=(systemd); fi
if ! command -v shellcheck >/dev/null 2>&1; then missing+=(shellcheck); fi
if ! command -v buildah >/dev/null 2>&1; then missing+=(buildah); fi
if ! command -v kubectl >/dev/null 2>&1; then missing+=(kubectl); fi
if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then missing+=(ca-certificates); fi
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-parts: every part is installed"
    exit 0
fi
echo "install-test-parts: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
