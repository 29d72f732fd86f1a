#!/usr/bin/env bash
# Installs the system tools the test suite uses beyond the venv, with apt-get:
# - promtool (Debian package `prometheus`) to check the Prometheus config,
#   rules and the dashboard queries; without it those tests skip and say why.
# - the PostgreSQL server binaries (Debian package `postgresql`) for the
#   shared A/B store's tests (tools/local_postgres.py starts the server);
#   without them those tests fail, naming this script.
# Skipped, with a note, where apt-get is not usable.
set -euo pipefail
packages=()
if ! command -v promtool >/dev/null 2>&1; then
  packages+=(prometheus)
fi
has_postgres() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    return 0
  fi
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if ! has_postgres; then
  packages+=(postgresql)
fi
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${packages[*]} and apt-get not usable: install them by hand" >&2
  exit 0
fi
echo "installing ${packages[*]} (Debian packages, no recommends)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
