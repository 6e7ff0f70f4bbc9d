"""A hospital's SCAFFOLD control variate c_i between rounds and between runs.

In memory: the hospital's Flower `Context.state` (`save`/`load`), or, in the vectorized engine,
a row of one stacked array that engine keeps (it passes `in_context=False`). On disk, when a
`state-dir` is known: one file per hospital and round (the last two kept), so a resumed run finds
the c_i it had.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Context, Message

from orchestrator.core import protocol as P

_KEY = "scaffold.c_i"


def state_dir(message: Message, context: Context) -> Path | None:
    """Where this hospital keeps its state between runs: its node config's `state-dir` (deployment:
    a path on the hospital's own machine), else the one the server names (simulation, one machine)."""
    d = context.node_config.get(P.STATE_DIR) or message.content[P.CONFIG].get(P.STATE_DIR)
    return Path(str(d)) if d else None


def _prefix(key: str, pid: int) -> str:
    return f"hospital{pid}" if key == _KEY else f"{key}-hospital{pid}"


def load(pid: int, context: Context, message: Message, server_round: int, key: str = _KEY) -> dict | None:
    """This hospital's c_i (or other state `key`) from before `server_round`, or None when it has none yet."""
    if key in context.state:
        return P.to_state(context.state[key])
    d = state_dir(message, context)
    if d is None or not d.is_dir():
        return None
    saved = sorted((int(f.stem.rsplit("_r", 1)[1]), f) for f in d.glob(f"{_prefix(key, pid)}_r*.npz"))
    saved = [(r, f) for r, f in saved if r < server_round]
    if not saved:
        return None
    with np.load(saved[-1][1]) as z:
        return {k: z[k] for k in z.files}


def save(pid: int, context: Context, message: Message, server_round: int, c_i: dict,
         in_context: bool = True, key: str = _KEY) -> None:
    if in_context:
        context.state[key] = P.from_state(c_i)
    d = state_dir(message, context)
    if d is None:
        return
    d.mkdir(parents=True, exist_ok=True)
    prefix = _prefix(key, pid)
    np.savez(d / f"{prefix}_r{server_round}.npz", **c_i)
    for old in sorted(d.glob(f"{prefix}_r*.npz"), key=lambda f: int(f.stem.rsplit("_r", 1)[1]))[:-2]:
        old.unlink(missing_ok=True)
