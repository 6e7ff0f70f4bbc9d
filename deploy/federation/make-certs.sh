#!/usr/bin/env bash
# The consortium's CA, the SuperLink's TLS certificate (SANs: every address hospitals dial) and,
# optionally, key pairs for hospitals that do not make their own.
#   deploy/federation/make-certs.sh certs/ --san superlink.example.org --san 10.0.0.5 [--hospital NAME ...]
# Same as `consortium federation certs ...`; run from the repository root (or with consortium on PATH).
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -x "$here/.venv/bin/consortium" ]; then exec "$here/.venv/bin/consortium" federation certs "$@"; fi
exec consortium federation certs "$@"
