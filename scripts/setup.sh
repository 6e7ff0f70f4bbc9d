#!/usr/bin/env bash
# Create .venv and install Consortium with its pinned stack, on a fresh machine, no manual step.
#   torch first, with pip, from the local CPU wheel (any other route pulls a multi-GB CUDA build);
#   then uv resolves flwr/ray/mlflow with certifi pinned to what the index serves (plain pip fails).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q "uv>=0.13.5,<0.14"
OVR=$(mktemp)
echo "certifi==2026.10.18" > "$OVR"
"$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" --override "$OVR" \
  "torch==2.13.0" -e ".[test]"
rm -f "$OVR"
# Bytecode for everything installed, once: uv writes none unless asked, and where
# PYTHONDONTWRITEBYTECODE is set (CI images, containers) Python never caches it either, so every
# process (each Ray worker too) compiled mlflow, ray and flwr from source, ~10 s per `consortium run`.
STAMP="$VENV/.consortium-bytecode"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  "$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >/dev/null 2>&1 || true  # a few vendored files do not compile; pip and uv skip those too
  "$VENV/bin/python" -m compileall -q orchestrator clients strategies >/dev/null 2>&1 || true
  touch "$STAMP"
fi
# Guard: the CPU torch must have survived resolution.
"$VENV/bin/python" - <<'PY'
import torch, importlib.metadata as md
assert torch.__version__.endswith("+cpu") or not any(d.metadata["Name"].startswith("nvidia-") for d in md.distributions()), torch.__version__
print(f"consortium env ready: torch {torch.__version__}")
PY
