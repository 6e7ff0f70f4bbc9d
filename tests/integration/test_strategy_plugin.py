"""A strategy is whole in its own file: a toy one with a hospital hook (tests/integration/strategy_plugin/
toy.py), dropped into a copy of strategies/ with one line added to the registry, runs from YAML in the
inline engine (the per-hospital handler) and the vectorized engine (a round's hospitals stacked) with
the same results, and its hooks change them (it is not FedAvg)."""
from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import CONFIGS, ROOT

pytestmark = pytest.mark.integration

RUN = textwrap.dedent('''
    import json, sys
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    quick = ["tracking.enabled=false", "tracking.register_model=null", "explain.enabled=false",
             "federated.rounds=4", "train.epochs=2"]
    out = {}
    for name, extra in [("inline", ["federated.strategy={name: toy, beta: 0.9}", "federated.engine=inline"]),
                        ("vectorized", ["federated.strategy={name: toy, beta: 0.9}", "federated.engine=vectorized"]),
                        ("fedavg", ["federated.strategy.name=fedavg", "federated.engine=inline"])]:
        result = run_job(load_job(sys.argv[1], quick + extra))
        out[name] = {"final": {k: v for k, v in result.final.items() if not k.startswith(("time/", "comm/"))},
                     "history": {k: v for k, v in result.history.items() if "toy" in k}}
    print(json.dumps(out))
''')


def test_a_toy_strategy_with_a_hospital_hook_is_one_file_and_one_registry_line(tmp_path):
    shutil.copytree(ROOT / "strategies", tmp_path / "strategies", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "tests/integration/strategy_plugin/toy.py", tmp_path / "strategies/toy.py")
    registry = tmp_path / "strategies/registry.py"
    before = registry.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(before) if line.startswith("NAMES = (")) + 1
    after = before[:at] + ['    "toy",\n'] + before[at:]
    registry.write_text("".join(after))
    changed = [d for d in difflib.unified_diff(before, after, n=0) if d[:1] in "+-" and d[:3] not in ("+++", "---")]
    assert changed == ['+    "toy",\n']   # the registry line, and nothing else outside toy.py
    (tmp_path / "run.py").write_text(RUN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}   # run.py's folder comes first: the copy of strategies/
    out = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(CONFIGS / "hospitals_fedavg.yaml")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    inline, vectorized, fedavg = runs["inline"]["final"], runs["vectorized"]["final"], runs["fedavg"]["final"]
    assert set(inline) == set(vectorized) and "eval/loss" in inline
    for key, value in inline.items():   # the engines' agreement (tests/integration/test_vectorized_engine.py)
        assert vectorized[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    # the hooks ran: the memory of the last update changed training (from round 2), and the metric it
    # sends back reached the server's train metrics in every round, in both engines
    assert abs(inline["eval/loss"] - fedavg["eval/loss"]) > 1e-3, (inline["eval/loss"], fedavg["eval/loss"])
    for engine in ("inline", "vectorized"):
        norms = runs[engine]["history"]
        key = "train/toy_update_norm"
        assert [r for r, _ in norms[key]] == [1, 2, 3, 4] and all(v > 0 for _, v in norms[key]), norms
