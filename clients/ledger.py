"""The hospital's privacy ledger: every differentially private release it made, per dataset and run,
in a SQLite file on its own disk (`site/ledger.db`), composed with Opacus' RDP accountant.

One row per round a hospital sent an update under DP: the Gaussian mechanism's (noise multiplier,
sampling rate, steps). RDP composes by adding the curves, so a dataset's epsilon after any number
of runs, sweep trials and resumed runs is one accountant over all its rows, tighter than a sum of
epsilons and never looser. A row is committed (fsync'ed) before the update it accounts for leaves
the hospital: a crash after sending loses no spend; a crash before counts a release that never
happened, which errs on the safe side.

    local DP    DP-SGD here: (noise_multiplier, batch_size / rows, epochs * ceil(rows / batch)) per round
    central DP  the server's Gaussian noise on the clipped mean: (noise_multiplier, 1, 1) per round,
                no sampling amplification claimed (as `strategies.central_dp` accounts it)
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SCHEMA = """CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY, dataset TEXT NOT NULL, run TEXT NOT NULL, job TEXT NOT NULL, mode TEXT NOT NULL,
    round INTEGER NOT NULL, noise REAL NOT NULL, rate REAL NOT NULL, steps INTEGER NOT NULL, time REAL NOT NULL)"""


@dataclass(frozen=True)
class Release:
    """One round's Gaussian mechanism: what the RDP accountant composes."""
    noise: float
    rate: float
    steps: int


@lru_cache(maxsize=256)
def _rdp_per_step(noise: float, rate: float) -> tuple[float, ...]:
    """One step's RDP curve at Opacus' default orders (a step's cost: the same for every step)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    return tuple(compute_rdp(q=rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS))


def epsilon(releases: list[Release], delta: float) -> float:
    """The epsilon of all `releases` composed (RDP), at `delta`: Opacus' RDPAccountant over them as
    one history, with each (noise, rate)'s curve computed once and scaled by its steps (RDP is
    linear in steps), so a ledger of years of rounds composes in microseconds."""
    if not releases:
        return 0.0
    import numpy as np
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    steps: dict[tuple[float, float], int] = {}
    for r in releases:
        steps[(r.noise, r.rate)] = steps.get((r.noise, r.rate), 0) + r.steps
    rdp = sum(np.asarray(_rdp_per_step(noise, rate)) * n for (noise, rate), n in steps.items())
    eps, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


class Ledger:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")   # committed means on disk, before the reply leaves
        self.db.execute(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def record(self, dataset: str, run: str, job: str, mode: str, server_round: int, release: Release) -> None:
        with self.db:
            self.db.execute("INSERT INTO releases (dataset, run, job, mode, round, noise, rate, steps, time) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (dataset, run, job, mode, server_round, release.noise, release.rate, release.steps,
                             time.time()))

    def releases(self, dataset: str, run: str | None = None) -> list[Release]:
        """The dataset's (or one run's) releases, those of one mechanism summed into one (what RDP
        composition sees is the same)."""
        sql, args = "SELECT noise, rate, SUM(steps) FROM releases WHERE dataset = ?", [dataset]
        if run is not None:
            sql, args = sql + " AND run = ?", [*args, run]
        return [Release(*row) for row in self.db.execute(sql + " GROUP BY noise, rate ORDER BY MIN(id)", args)]

    def rounds(self, dataset: str, run: str) -> set[int]:
        """The rounds of `run` already released (a resumed run does not count them twice in its plan)."""
        return {r for (r,) in self.db.execute("SELECT DISTINCT round FROM releases WHERE dataset = ? AND run = ?",
                                              (dataset, run))}

    def summary(self) -> list[dict]:
        """Per dataset and run: its job, mode, rounds released, first and last time."""
        rows = self.db.execute("SELECT dataset, run, job, mode, COUNT(*), MIN(time), MAX(time) FROM releases "
                               "GROUP BY dataset, run ORDER BY MIN(id)")
        return [dict(dataset=d, run=r, job=j, mode=m, rounds=n, first=a, last=b) for d, r, j, m, n, a, b in rows]
