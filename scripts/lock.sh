#!/usr/bin/env bash
# Regenerate requirements.lock ON PURPOSE: resolve the stack afresh from the index into a throw-away
# venv (the same route as scripts/setup.sh, without the lock), then freeze every package of it at its
# exact version. Run it when pyproject.toml's dependencies change or to take newer releases; run the
# whole suite on the new lock before committing it. Without this, setup installs the lock as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
VENV="$TMP/venv" CONSORTIUM_UNLOCKED=1 bash scripts/setup.sh
{
  echo "# requirements.lock: every package of Consortium's environment at an exact version."
  echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) for Python $("$TMP/venv/bin/python" -c 'import platform; print(platform.python_version())') on $(uname -m) Linux;"
  echo "# installed by scripts/setup.sh as uv constraints (torch is the local CPU wheel, installed first by pip)."
  "$TMP/venv/bin/uv" pip freeze --python "$TMP/venv/bin/python" \
    | grep -v -E '^(-e |consortium[= @]|pip==)' | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/' | LC_ALL=C sort -f
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages)"
