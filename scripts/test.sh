#!/usr/bin/env bash
# Set up .venv (idempotent) and run the whole suite: unit tests, real Ray/Flower/MLflow integration
# tests, the federation across network namespaces (Debian's tcpdump and nginx), the team's tracking server on
# a real PostgreSQL (Debian's postgresql) and the browser test of the MLflow UI (Debian's chromium);
# all three are installed here when missing.
# Screenshots of the UI land in tests/artifacts/.
#   bash scripts/test.sh --fast   the fast tier while working: tests/unit (the spec, the layering and
#                                 type checks, strategies, training, listeners; about 2 minutes), no
#                                 servers, nothing installed beyond the venv
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--fast" ]; then
  shift
  export MLFLOW_DISABLE_TELEMETRY=true FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0
  unset MLFLOW_TRACKING_URI
  exec .venv/bin/python -m pytest -q --durations=5 tests/unit "$@"
fi
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }
fi
# The team-server test runs a real PostgreSQL (Debian's postgresql: initdb into a temp dir, on 127.0.0.1).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q postgresql >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q postgresql >/dev/null; } \
    || echo "test.sh: postgresql could not be installed" >&2
fi
# The SuperLink's TLS front (federation superlink) is Debian's nginx.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q nginx >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q nginx >/dev/null; } \
    || echo "test.sh: nginx could not be installed" >&2
fi
# The multi-host federation test reads the wire with Debian's tcpdump; the poor-link test drops
# packets with Debian's iptables.
if ! command -v tcpdump >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q tcpdump >/dev/null 2>&1 || echo "test.sh: tcpdump could not be installed" >&2
fi
if ! command -v iptables >/dev/null 2>&1 && [ ! -x /usr/sbin/iptables ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q iptables >/dev/null 2>&1 || echo "test.sh: iptables could not be installed" >&2
fi
export MLFLOW_DISABLE_TELEMETRY=true FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0
unset MLFLOW_TRACKING_URI
exec .venv/bin/python -m pytest -q --durations=15 "$@"
