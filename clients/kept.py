"""What a hospital keeps between rounds and between runs: a strategy's state (`HospitalHook.keeps`,
e.g. SCAFFOLD's control variate), its personal model part (`clients.personal`).

In memory: the hospital's Flower `Context.state`, under the state's name; the vectorized engine,
which trains many hospitals at once, keeps them itself and passes `in_context=False`. On disk, when
a `state-dir` is known: one file per hospital and round (the last two kept), so a resumed run finds
the state it had, in either engine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Context, Message

from orchestrator.core import protocol as P


def state_dir(message: Message, context: Context) -> Path | None:
    """Where this hospital keeps its state between runs: its node config's `state-dir` (deployment:
    a path on the hospital's own machine), else the one the server names (simulation, one machine)."""
    d = context.node_config.get(P.STATE_DIR) or message.content[P.CONFIG].get(P.STATE_DIR)
    return Path(str(d)) if d else None


def _round_of(f: Path) -> int:
    return int(f.stem.rsplit("_r", 1)[1])


def load(key: str, pid: int, context: Context, message: Message, server_round: int) -> dict | None:
    """This hospital's state `key` from before `server_round`, or None when it has none yet."""
    if key in context.state:
        return P.to_state(context.state[key])
    d = state_dir(message, context)
    if d is None or not d.is_dir():
        return None
    saved = sorted((_round_of(f), f) for f in d.glob(f"{key}-hospital{pid}_r*.npz"))
    saved = [(r, f) for r, f in saved if r < server_round]
    if not saved:
        return None
    with np.load(saved[-1][1]) as z:
        return {k: z[k] for k in z.files}


def save(key: str, pid: int, context: Context, message: Message, server_round: int, state: dict,
         in_context: bool = True) -> None:
    if in_context:
        context.state[key] = P.from_state(state)
    d = state_dir(message, context)
    if d is None:
        return
    d.mkdir(parents=True, exist_ok=True)
    prefix = f"{key}-hospital{pid}"
    np.savez(d / f"{prefix}_r{server_round}.npz", **state)
    for old in sorted(d.glob(f"{prefix}_r*.npz"), key=_round_of)[:-2]:
        old.unlink(missing_ok=True)
