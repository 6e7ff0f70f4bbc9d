"""`federated.personalize`, the server's side: after the last round every hospital adapts the final
global model to its own rows (`clients.personal`) and answers with its scores on its own test rows,
and, only where the job says hospitals share them, its personal weights. Logged at the last round:
`hospital_<name>/personal/<metric>`, the pooled `personal/<metric>` (exact from the hospitals'
sums, as eval/ is) and `personal_site_mean/<metric>` (each hospital counts once)."""
from __future__ import annotations

import io

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from orchestrator.core import protocol as P
from orchestrator.core.metrics import site_mean
from orchestrator.jobs.sites import ROWS, pooled


def personalize(grid, nodes: list[int], config, arrays, names: dict[int, str], num_classes: int,
                timeout: float) -> dict[str, tuple[dict, np.ndarray, object]]:
    """hospital name -> (its scores, its sums, its personal weights as an ArrayRecord or None)."""
    asked = ConfigRecord(dict(config))
    asked[P.PERSONALIZE] = 1
    content = RecordDict({P.CONFIG: asked, P.ARRAYS: arrays})
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    found = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            continue   # a hospital that fails here has no personal row; the others count
        m = reply.content[P.METRICS]
        res = {k[len(P.EVAL_PREFIX):]: float(v) for k, v in m.items() if k.startswith(P.EVAL_PREFIX)}
        res[ROWS] = float(m[P.NUM_EXAMPLES])
        found_sums = P.read_sums(reply.content, num_classes)
        if found_sums is None:
            continue
        sums = found_sums[1]
        found[names.get(int(m[P.PARTITION_ID]), str(m[P.PARTITION_ID]))] = (
            res, sums, reply.content[P.ARRAYS] if P.ARRAYS in reply.content else None)
    order = {name: i for i, name in enumerate(names.values())}
    return dict(sorted(found.items(), key=lambda item: order.get(item[0], len(order))))


def log_personal(run, found: dict, step: int, task: str, keep_models: bool, labels: tuple[str, ...] = ()) -> None:
    m = {}
    for name, (res, _, _) in found.items():
        m.update({f"hospital_{name}/personal/{k}": v for k, v in res.items() if not np.isnan(v)})
    m.update({f"personal/{k}": v for k, v in pooled([(r, s) for r, s, _ in found.values()], task, labels).items()})
    m.update({f"personal_site_mean/{k}": v for k, v in site_mean([r for r, _, _ in found.values()]).items()})
    m["personal/hospitals"] = len(found)
    run.log_metrics(m, step)
    if keep_models:
        import torch

        for name, (_, _, arrays) in found.items():
            if arrays is not None:
                buf = io.BytesIO()
                torch.save(arrays.to_torch_state_dict(), buf)
                run.log_bytes(buf.getvalue(), f"personal_models/{name}.pt")
