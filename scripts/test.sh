#!/usr/bin/env bash
# Set up .venv (idempotent) and run the whole suite: fast unit tests, then real Ray/Flower/MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0
unset MLFLOW_TRACKING_URI
exec .venv/bin/python -m pytest -q --durations=10 "$@"
