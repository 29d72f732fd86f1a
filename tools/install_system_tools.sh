#!/usr/bin/env bash
# Installs the system tools the test suite uses beyond the venv: promtool
# (Debian package `prometheus`) to check the Prometheus config, rules and the
# dashboard queries. Skipped, with a note, where apt-get is not usable; the
# tests that need promtool then skip and say why.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "promtool not found and apt-get not usable: Prometheus checks will be skipped" >&2
  exit 0
fi
echo "installing promtool (Debian package prometheus, no recommends)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
