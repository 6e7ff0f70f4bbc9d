"""mypy over orchestrator/, clients/ and strategies/ ([tool.mypy] in pyproject.toml).

The declared seams (tracking.protocol's Run, Tracker and Recorder, and every implementation, held
to them by a `_declared` function in its module) must type-check clean. The rest of the code
predates the checker: its known errors are listed in tests/mypy_baseline.txt (file, code and
message, no line numbers) and may only shrink. A new error fails here; so does a fixed one that is
still listed, so the list stays the truth. `python tests/unit/test_types.py --write` rewrites it.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "tests/mypy_baseline.txt"
PACKAGES = ["orchestrator", "clients", "strategies"]
# Every module of the tracked-run seam: no error of theirs may be listed in the baseline.
SEAM = ["orchestrator/tracking/protocol.py", "orchestrator/tracking/memory.py", "orchestrator/tracking/store.py",
        "orchestrator/tracking/remote.py", "orchestrator/tracking/link.py", "orchestrator/jobs/runner.py",
        "orchestrator/jobs/base.py", "orchestrator/jobs/ray/inbox.py", "orchestrator/jobs/federated/listeners.py"]
ERROR = re.compile(r"^(?P<path>[^:]+):\d+: error: (?P<message>.*)$")


def mypy_errors(cache: Path) -> Counter:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary",
                           "--hide-error-context", "--no-pretty", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]   # 2: mypy itself failed
    found: Counter = Counter()
    for line in proc.stdout.splitlines():
        m = ERROR.match(line)
        if m:
            found[f"{m['path']}: {m['message']}"] += 1
    return found


def baseline() -> Counter:
    return Counter(line for line in BASELINE.read_text().splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def found(tmp_path_factory) -> Counter:
    return mypy_errors(tmp_path_factory.mktemp("mypy-cache"))


def test_the_declared_seams_type_check_clean(found):
    seam = [e for e in found if e.split(":")[0] in SEAM]
    assert not seam, "\n".join(seam)
    listed = [e for e in baseline() if e.split(":")[0] in SEAM]
    assert not listed, "the seam's modules may not be in tests/mypy_baseline.txt:\n" + "\n".join(listed)


def test_no_type_error_beyond_the_known_ones_and_none_listed_that_is_fixed(found):
    known = baseline()
    new = found - known
    assert not new, ("new type errors (fix them; the baseline only shrinks):\n"
                     + "\n".join(f"{e} (x{n})" for e, n in sorted(new.items())))
    fixed = known - found
    assert not fixed, ("fixed, still listed: rewrite tests/mypy_baseline.txt (python tests/unit/test_types.py --write):\n"
                       + "\n".join(sorted(fixed)))


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    errors = mypy_errors(Path(tempfile.mkdtemp()))
    BASELINE.write_text("# Type errors that predate tests/unit/test_types.py: this list only shrinks.\n"
                        + "".join(f"{e}\n" for e in sorted(errors.elements())))
    print(f"wrote {BASELINE} ({sum(errors.values())} errors)")
