"""The layout's rules, checked on every import in the tree (function-level ones included).

  spec        the job spec: pydantic only (and the strategies' own option models)
  core        plain torch/numpy shared by every runner and every hospital
  clients/    the hospital: may import only the spec, the core and the strategies' hospital halves
  strategies/ may import only the spec and the core; never the file system's MLflow or Ray
  tracking/   the only package that imports mlflow (besides its adapter), and nothing of jobs/;
              jobs/ray/  the only one that imports ray.train
  adapters/   the only modules that use a third-party library's private API, one per library
and no import cycle between first-party modules.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "clients", "strategies")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, anywhere in the file, as dotted names (first-party resolved to modules)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append(full if full in MODULES else node.module)
    return out


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _first_party(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("package", ["clients", "strategies"])
def test_hospitals_and_strategies_import_only_the_spec_and_the_core(package):
    # a hospital also runs its strategy's hospital half (strategies/*.py, `DECLARED.hospital`), and
    # reads and writes Flower's records through the wire's adapter
    allowed = ("orchestrator.spec", "orchestrator.core", package) + (
        ("strategies", "orchestrator.adapters.flower") if package == "clients" else ())
    bad = [f"{m} imports {i}" for m, imports in GRAPH.items() if _top(m) == package for i in imports
           if (_first_party(i) and not i.startswith(allowed))
           or _top(i) in ("mlflow", "ray", "typer", "matplotlib", "rich")]
    assert not bad, bad


def test_only_tracking_imports_mlflow_and_only_the_ray_jobs_import_ray_train():
    mlflow = [m for m, imports in GRAPH.items() if any(_top(i) == "mlflow" for i in imports)]
    assert mlflow and all(m.startswith("orchestrator.tracking") or m == "orchestrator.adapters.mlflow"
                          for m in mlflow), mlflow
    train = [m for m, imports in GRAPH.items() if any(i.startswith("ray.train") for i in imports)]
    assert train and all(m.startswith("orchestrator.jobs.ray") for m in train), train


def test_the_spec_and_the_core_know_nothing_of_the_layers_above():
    above = ("orchestrator.jobs", "orchestrator.tracking", "orchestrator.cli", "clients")
    bad = [f"{m} imports {i}" for m, imports in GRAPH.items()
           if m.startswith(("orchestrator.spec", "orchestrator.core")) for i in imports
           if i.startswith(above) or _top(i) in ("mlflow", "ray", "typer", "matplotlib")]
    assert not bad, bad
    spec_third_party = {_top(i) for m, imports in GRAPH.items() if m.startswith("orchestrator.spec")
                        for i in imports if not _first_party(i)}
    assert not spec_third_party & {"torch", "flwr", "numpy"}, spec_third_party


def test_tracking_imports_nothing_from_the_jobs_it_records():
    # tracking/ records what any job reports through its declared protocol (tracking.protocol): it
    # reads the plan from core and meets signals through orchestrator.process, never jobs/
    bad = [f"{m} imports {i}" for m, imports in GRAPH.items() if m.startswith("orchestrator.tracking")
           for i in imports if i.startswith("orchestrator.jobs")]
    assert not bad, bad


def test_no_import_cycle_between_first_party_modules():
    edges = {m: sorted({i for i in imports if i in MODULES and i != m}) for m, imports in GRAPH.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles


# The wire: the message keys and record conversions the server and the hospitals share. Every side
# imports them and they import nothing first-party beyond themselves, so they are a room of their own
# in the package graph (strategies read the keys; the spec reads the strategies' options).
WIRE = {"orchestrator.core.protocol", "orchestrator.adapters.flower",
        "orchestrator.core.compression", "orchestrator.core.packing"}   # what crosses the wire: names, records, the updates' encodings


def _package(module: str) -> str:
    """orchestrator.jobs.federated.server_app -> orchestrator.jobs; a top-level module is its own."""
    if module in WIRE:
        return "wire"
    parts = module.split(".")
    if parts[0] != "orchestrator":
        return parts[0]
    return ".".join(parts[:2])


def test_the_console_only_prints_and_every_command_is_in_the_command_layer():
    # console.py prints (summaries, a user's mistake); running jobs around it is orchestrator.cli's
    bad = [i for i in GRAPH["orchestrator.console"] if i.startswith(("orchestrator.jobs", "orchestrator.federation"))]
    assert not bad, bad
    commands = [m for m, p in MODULES.items() if "typer" in {_top(i) for i in GRAPH[m]}
                and not m.startswith("orchestrator.cli") and m != "orchestrator.console"]
    assert not commands, commands   # every Typer command module lives in orchestrator/cli/


def test_the_layers_below_the_commands_form_no_package_cycle():
    # spec <- core <- strategies, clients <- tracking <- jobs: each package imports only those before
    # it (the spec reads the strategies' option models, and no strategy reads the spec back)
    edges: dict[str, set[str]] = {}
    for m, imports in GRAPH.items():
        for i in imports:
            if _first_party(i) and _package(i) != _package(m):
                edges.setdefault(_package(m), set()).add(_package(i))
    layers = {"orchestrator.spec", "orchestrator.core", "strategies", "clients", "orchestrator.tracking",
              "orchestrator.jobs", "orchestrator.process"}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    assert all(i in WIRE for m in WIRE for i in GRAPH[m] if _first_party(i))
    cycles = sorted(p for p in layers if reaches(p, p, set()))
    assert not cycles, {p: sorted(edges.get(p, ())) for p in cycles}


def _loaded(statement: str) -> set[str]:
    probe = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_importing_the_hospital_app_loads_no_mlflow_ray_typer_or_matplotlib():
    # Flower's deployment engine imports the hospital app once per message: nothing it does not need
    banned = {"mlflow", "ray", "typer", "matplotlib", "pandas", "sklearn", "scipy", "opacus"}
    # flwr 1.42 itself imports typer (flwr.supercore.logger): what Flower's ClientApp loads alone is
    # the floor; the hospital app must add none of the banned packages to it
    floor = _loaded("import flwr.app, flwr.clientapp") & banned
    assert floor <= {"typer"}, floor
    assert _loaded("import clients.client_app") & banned == floor


def test_loading_a_job_spec_loads_no_torch_flower_ray_or_mlflow():
    probe = ("import sys\nfrom orchestrator.spec.loading import load_job\n"
             "load_job('configs/hospitals_fedavg.yaml')\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'flwr', 'ray', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_no_module_is_far_past_the_size_of_one_idea():
    # The guideline (README, "Where things live"): a module does one thing, and about 300 lines is a
    # hint to look again, not a rule to cut at. 450 is where every module here would be two things.
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


def test_every_job_kind_is_a_registered_module_with_a_kind():
    from orchestrator.jobs.base import JobKind
    from orchestrator.jobs.kinds import kind_of
    from orchestrator.spec.job import JOB_KINDS

    for name in JOB_KINDS:
        kind = kind_of(name)
        assert isinstance(kind, JobKind) and kind.name == name


def test_every_declared_engine_has_a_runner():
    from orchestrator.jobs.federated.engines import RUNNERS
    from orchestrator.spec.engines import ENGINES
    from orchestrator.spec.federated import FederatedSpec

    assert set(RUNNERS) == set(ENGINES)
    assert set(FederatedSpec.model_fields["engine"].annotation.__args__) == {"auto", *ENGINES}


# What counts as a library's private API: a module path or a name with a leading underscore
# (`ray._private...`, `from flwr... import _SyncedDict`, also as a string for sys.modules), an
# underscored attribute of an imported name (`TaskIdentity._run_id`), another object's `__dict__`
# (writing a field behind its setter), and a class that takes on another's `__qualname__`.
THIRD_PARTY = ("flwr", "ray", "mlflow", "torch", "opacus", "monai", "pydantic", "typer", "numpy", "pandas",
               "sklearn", "rich", "grpc", "sqlalchemy", "alembic", "yaml")
_PRIVATE_PATH = re.compile(r"^(%s)(\.\w+)*\._\w" % "|".join(THIRD_PARTY))


def private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    imported, out = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _top(a.name) in THIRD_PARTY:
                    imported.add((a.asname or a.name).split(".")[0])
                    if "._" in a.name:
                        out.append(f"{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and _top(node.module) in THIRD_PARTY:
            for a in node.names:
                imported.add(a.asname or a.name)
                if "._" in f".{node.module}" or (a.name.startswith("_") and not a.name.startswith("__")):
                    out.append(f"{node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _PRIVATE_PATH.match(node.value):
            out.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Attribute):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            mine = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if node.attr == "__dict__" and not mine:
                out.append(f"{node.lineno}: {ast.unparse(node)}")
            elif node.attr == "__qualname__" and isinstance(node.ctx, ast.Store):
                out.append(f"{node.lineno}: {ast.unparse(node)} = ...")
            elif (node.attr.startswith("_") and not node.attr.startswith("__") and isinstance(root, ast.Name)
                  and root.id in imported):
                out.append(f"{node.lineno}: {ast.unparse(node)}")
    return out


def test_private_third_party_api_is_used_only_in_the_adapters():
    found = {name: private_uses(path) for name, path in MODULES.items()}
    outside = {m: uses for m, uses in found.items() if uses and not m.startswith("orchestrator.adapters.")}
    assert not outside, outside   # move it into orchestrator/adapters/<library>.py
    assert found["orchestrator.adapters.flower"] and found["orchestrator.adapters.ray"]   # the scan finds them


def test_the_scan_for_private_api_finds_each_kind_of_use(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nfrom flwr.supercore.task_identity import TaskIdentity\n"
                     "from mlflow.models.utils import _save_example\nimport torch.export._trace\n"
                     "sys.modules.get('ray._private.ray_constants')\nTaskIdentity._run_id = 3\n"
                     "msg.metadata.__dict__['_run_id'] = 1\nclass A: pass\nA.__qualname__ = 'B'\n"
                     "self.__dict__['x'] = 1\nTaskIdentity.run_id = 2\n")
    assert sorted(int(u.split(":")[0]) for u in private_uses(probe)) == [3, 4, 5, 6, 7, 9]
