"""Every shipped config's final metrics, as one JSON object: the check that a refactor changed no
result (run it before and after, then diff the two files).

    .venv/bin/python scripts/final_metrics.py OUT.json [CONFIG ...]

Each config runs as shipped, in its own process from the repository root, tracked into one SQLite
store in a temp folder, in file-name order (the pretraining config registers the model that
`transfer_digits.yaml` starts from). Timings (`time/*`, `perf/*`)
are left out: they are the machine's, not the method's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def final(config: Path, store: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(config.relative_to(ROOT)),
                           f"tracking.uri={store}", "--json", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: v for k, v in sorted(result["final"].items()) if not k.startswith(("time/", "perf/"))}


def main() -> None:
    out = Path(sys.argv[1])
    configs = [Path(c).resolve() for c in sys.argv[2:]] or sorted((ROOT / "configs").glob("*.yaml"))
    import tempfile

    store = f"sqlite:///{tempfile.mkdtemp(prefix='final-metrics-')}/mlruns.db"
    results = {}
    for config in configs:
        results[config.name] = final(config, store)
        print(config.name, "error" if "error" in results[config.name] else "ok", flush=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
