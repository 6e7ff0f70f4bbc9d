"""Round checkpoints: the global model and the strategy's state after every round, written off the
rounds' critical path, read back by `consortium resume`.

Each run has its own folder under CONSORTIUM_HOME/federated/ (its last two rounds, and in simulation
the hospitals' kept state). A run that ends normally marks its folder finished; only an unfinished
run can be resumed, so a new run keeps the newest `KEEP_FINISHED` finished folders and removes the
older ones (a SuperLink's state, which runs every deployed job, no longer grows without end)."""
from __future__ import annotations

import logging
import queue
import shutil
import threading
from pathlib import Path

import numpy as np

from orchestrator.jobs.runtime import consortium_home


class RoundWriter:
    """Per-round I/O off the rounds' critical path: one thread runs the submitted writes in order
    (flush the round's metrics, then its checkpoint). A failed write is logged, not fatal: the
    metrics stay buffered in the run for the next flush."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="consortium-round-writer", daemon=True)
        self._thread.start()

    def submit(self, write) -> None:
        self._queue.put(write)

    def _loop(self) -> None:
        while (write := self._queue.get()) is not None:
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - keep writing the next rounds
                logging.getLogger("consortium").warning("round checkpoint/flush failed: %s", exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def checkpoint_dir(run_id: str) -> Path:
    """Where runs before 2026-12-03 kept their checkpoints (named by their MLflow run id)."""
    return consortium_home() / "federated" / run_id


KEEP_FINISHED = 10   # finished runs whose folders stay (the newest), for a look at their last rounds
FINISHED = "finished"


def new_checkpoint_dir() -> Path:
    """A new run's own folder, named before MLflow has given the run an id (the store may still be
    opening in the tracking process); the run's tag `federated.checkpoints` records it. Finished
    runs' folders beyond the newest `KEEP_FINISHED` go first."""
    import time
    import uuid

    root = consortium_home() / "federated"
    prune_finished(root)
    return root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}"


def mark_finished(directory: Path) -> None:
    """The run ended normally: nothing will resume it."""
    if directory.is_dir():
        (directory / FINISHED).touch()


def prune_finished(root: Path, keep: int = KEEP_FINISHED) -> list[Path]:
    """Remove the finished runs' folders under `root` but the newest `keep`; unfinished ones stay."""
    if not root.is_dir():
        return []
    done = sorted((d for d in root.iterdir() if (d / FINISHED).is_file()),
                  key=lambda d: (d / FINISHED).stat().st_mtime)
    gone = done[:max(0, len(done) - keep)]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone


def resumed_checkpoint_dir(run) -> Path:
    recorded = run.tag("federated.checkpoints")
    return Path(recorded) if recorded else checkpoint_dir(run.run_id)


def save_round(directory: Path, server_round: int, model_state: dict, strategy_state: dict) -> None:
    """model + strategy state after `server_round`, as plain arrays (np.load without pickle reads it)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    for attr, named in strategy_state.items():
        arrays.update({f"strategy/{attr}/{k}": np.asarray(v) for k, v in named.items()})
    tmp = directory / f".round_{server_round:05d}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(directory / f"round_{server_round:05d}.npz")  # a kill mid-write leaves the last good one
    for old in sorted(directory.glob("round_*.npz"))[:-2]:
        old.unlink(missing_ok=True)


def load_last_round(directory: Path) -> tuple[int, dict, dict] | None:
    files = sorted(directory.glob("round_*.npz")) if directory.is_dir() else []
    if not files:
        return None
    with np.load(files[-1], allow_pickle=False) as z:
        # numpy, dtype as saved: a server optimizer may keep the global model in float64
        model = {k[len("model/"):]: z[k].copy() for k in z.files if k.startswith("model/")}
        strategy: dict[str, dict] = {}
        for k in z.files:
            if k.startswith("strategy/"):
                _, attr, name = k.split("/", 2)
                strategy.setdefault(attr, {})[name] = z[k].copy()
    return int(files[-1].stem.split("_")[1]), model, strategy
