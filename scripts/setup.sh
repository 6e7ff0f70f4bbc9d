#!/usr/bin/env bash
# Create .venv and install Consortium with its locked stack, on a fresh machine, no manual step.
#   torch first, with pip, from the local CPU wheel (any other route pulls a multi-GB CUDA build);
#   then uv installs everything else at the exact versions of requirements.lock (plain pip cannot:
#   flwr and databricks-sdk want a certifi newer than the index serves, so certifi is overridden).
# The lock is regenerated on purpose only, by scripts/lock.sh (which sets CONSORTIUM_UNLOCKED=1 to
# resolve afresh); setup fails if the environment it built differs from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
# Extras to install: the test tools by default; the container image (deploy/docker) sets none.
EXTRAS=${CONSORTIUM_EXTRAS-test}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
LOCK="$ROOT/requirements.lock"
locked() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$LOCK"; }
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
if [ "${CONSORTIUM_UNLOCKED:-0}" = 1 ]; then
  "$VENV/bin/python" -m pip install -q "uv>=0.13.5,<0.14"
  CONSTRAINTS=()
else
  "$VENV/bin/python" -m pip install -q "uv==$(locked uv)"
  CONSTRAINTS=(--constraint "$LOCK")
fi
OVR=$(mktemp)
trap 'rm -f "$OVR"' EXIT
echo "certifi==2026.10.18" > "$OVR"
"$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" --override "$OVR" \
  "${CONSTRAINTS[@]}" "torch==2.13.0" -e ".${EXTRAS:+[$EXTRAS]}"
# Bytecode for everything installed, once: uv writes none unless asked, and where
# PYTHONDONTWRITEBYTECODE is set (CI images, containers) Python never caches it either, so every
# process (each Ray worker too) compiled mlflow, ray and flwr from source, ~10 s per `consortium run`.
STAMP="$VENV/.consortium-bytecode"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ]; then
  "$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >/dev/null 2>&1 || true  # a few vendored files do not compile; pip and uv skip those too
  "$VENV/bin/python" -m compileall -q orchestrator clients strategies >/dev/null 2>&1 || true
  touch "$STAMP"
fi
# Guards: the CPU torch survived resolution, and what is installed is exactly the lock.
"$VENV/bin/python" - "$LOCK" "${CONSORTIUM_UNLOCKED:-0}" <<'PY'
import importlib.metadata as md
import re
import sys

import os

import torch

# CONSORTIUM_GPU=1 (the CUDA image, deploy/docker): torch 2.13.0's CUDA build, whose nvidia-* and
# triton wheels torch itself pins exactly; everything else must still match the lock.
gpu = os.environ.get("CONSORTIUM_GPU") == "1"
assert gpu or torch.__version__.endswith("+cpu") or not any(
    (d.metadata["Name"] or "").startswith("nvidia-") for d in md.distributions()), torch.__version__
if sys.argv[2] != "1":
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
    lock = {}
    for line in open(sys.argv[1]):
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            lock[norm(m.group(1))] = m.group(2)
    off = []
    for d in md.distributions():
        name = norm(d.metadata["Name"] or "")
        if name in ("consortium", "pip") or not name:  # pip comes with the interpreter
            continue
        if gpu and (name.startswith("nvidia-") or name in ("triton", "cuda-bindings", "cuda-pathfinder")):
            continue
        version = d.version.split("+")[0]
        if lock.get(name) != version:
            off.append(f"{name} {version} (lock: {lock.get(name, 'absent')})")
    if off:
        sys.exit("setup: the environment differs from requirements.lock: " + ", ".join(sorted(off))
                 + "\n  run scripts/lock.sh to regenerate the lock on purpose")
print(f"consortium env ready: torch {torch.__version__}, {'unlocked' if sys.argv[2] == '1' else 'locked'}")
PY
