#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the cp312 wheels bench/gpu/run.sh needs on the GPU machine, which
# has Python 3.12, torch, numpy, pandas, scikit-learn, typer and PyYAML but no ray or pydantic and
# no registry. Ray's wheel (70 MiB) is over the 64 MiB a device call carries: its Java jars, RLlib
# and the dashboard's source maps go (38.6 MiB left). Versions are requirements.lock's.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
locked() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$ROOT/requirements.lock"; }
mkdir -p .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.whl/" >> .git/info/exclude; }
rm -f .whl/*
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plat=(); for p in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  plat+=(--platform "${p}_x86_64"); done
names=(ray pydantic pydantic-core annotated-types typing-inspection jsonschema jsonschema-specifications referencing rpds-py
       monai)   # monai: pure Python, the image networks (bench/gpu/images.py)
specs=(); for n in "${names[@]}"; do specs+=("$n==$(locked "$n")"); done
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$tmp" "${specs[@]}" 2>&1 | grep -v "is ignored" || true
mkdir "$tmp/ray" && (cd "$tmp/ray" && unzip -q "$tmp"/ray-*.whl && rm -rf ray/jars ray/rllib \
  && find . -name '*.js.map' -delete && zip -q -r -9 "$ROOT/.whl/ray-$(locked ray)-cp312-stripped.zip" .)
rm "$tmp"/ray-*.whl && mv "$tmp"/*.whl .whl/
du -sh .whl
