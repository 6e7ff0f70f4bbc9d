"""A hospital's minimum count k on what leaves it (its site policy's `min_count`): applied by
`clients.site.guard` to every reply before it is sent."""
from __future__ import annotations

import json
from typing import Any

from flwr.app import ArrayRecord, Message

from orchestrator.core import protocol as P
from orchestrator.core.columns import OTHER


def withhold(site: Any, reply: Message) -> None:
    """Hold every count in `reply` to the policy's k: a category value held by fewer than k is
    merged into `other`, a label count or observed-cell count below k is withheld (sent as 0), and
    a split of fewer than k rows refuses. Notes what it did in `site.notes` (the audit log's).
    `site`: a `clients.site.Site` (its k, its notes, its refusals), which imports this module."""
    k, content = site.k, reply.content
    if k <= 1:
        return
    configs, arrays = content.config_records, content.array_records
    if P.DESCRIPTION in configs and "description" in configs[P.DESCRIPTION]:
        d = json.loads(str(configs[P.DESCRIPTION]["description"]))
        for key in ("rows", "train_rows"):
            if 0 < int(d.get(key, k)) < k:
                raise site.refuse(f"it holds {d[key]} {key.replace('_', ' ')}, fewer than its policy's k={k}")
        merged = 0
        for counts in d.get("categories", {}).values():
            rare = {v: n for v, n in counts.items() if n < k and v != OTHER}
            for v, n in rare.items():
                del counts[v]
                counts[OTHER] = counts.get(OTHER, 0) + n
            merged += len(rare)
        d["observed"], hidden = _withheld(d.get("observed", []), k)
        site.notes.append(f"{merged} category values merged into '{OTHER}', {hidden} observed-cell counts withheld")
        configs[P.DESCRIPTION]["description"] = json.dumps(d)
    if P.LABELS in configs and isinstance(labels := configs[P.LABELS].get("train"), list):
        configs[P.LABELS]["train"], hidden = _withheld(labels, k)
        site.notes.append(f"{hidden} label counts withheld")
    if P.STATS in arrays and P.LABELS in configs:   # the census' per-feature observed count, sum, sum of squares
        stats = arrays[P.STATS].to_numpy_ndarrays()
        few = (stats[0] > 0) & (stats[0] < k)
        if few.any():
            for a in stats[:3]:
                a[few] = 0
            content[P.STATS] = ArrayRecord(stats)
        site.notes.append(f"{int(few.sum())} features' observed cells withheld")
    metrics = content.metric_records.get(P.METRICS)
    rows = metrics.get(P.NUM_EXAMPLES) if metrics is not None else None
    if isinstance(rows, (int, float)) and 0 < rows < k:
        split = "test" if reply.metadata.message_type.startswith("evaluate") else "training"
        raise site.refuse(f"its {split} split holds {int(rows)} rows, fewer than its policy's k={k}")


def _withheld(counts: list, k: int) -> tuple[list[int], int]:
    out = [0 if 0 < int(c) < k else int(c) for c in counts]
    return out, sum(1 for a, b in zip(counts, out) if a != b)
