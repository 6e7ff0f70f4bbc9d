"""`consortium compare`, `runs` and `models`: the runs of an experiment side by side."""
from __future__ import annotations

import datetime as dt

from rich.table import Table

from orchestrator.spec.errors import UserError

# Params that are bookkeeping rather than choices: never shown as "what differs".
_QUIET = ("tracking.", "data.missing_cells", "data.num_", "federated.hospital_sizes", "name")
LOWER_IS_BETTER = ("loss", "mse", "mae", "time")


def _differing(runs) -> list[str]:
    keys = sorted({k for r in runs for k in r.data.params})
    out = []
    for k in keys:
        if k.startswith(_QUIET):
            continue
        values = {r.data.params.get(k) for r in runs}
        if len(values) > 1:
            out.append(k)
    return out


def comparison(uri: str, runs, metric: str) -> tuple[Table, list[dict]]:
    from orchestrator.tracking.runs import metric_history

    lower = any(w in metric for w in LOWER_IS_BETTER)
    differ = _differing(runs) if len(runs) > 1 else []
    table = Table(title=f"{len(runs)} run(s), metric {metric}", header_style="bold")
    for col in ("run", "kind", "strategy", "partition", "differs", f"final {metric}", f"best {metric}",
                "wall s", "model"):
        table.add_column(col, justify="right" if col.startswith(("final", "best", "wall")) else "left",
                         overflow="fold")  # never elide a run name or a parameter value
    rows = []
    for r in runs:
        hist = metric_history(uri, r.info.run_id, metric)
        final = hist[-1][1] if hist else None
        best = (min if lower else max)((v for _, v in hist), default=None)
        tags, params = r.data.tags, r.data.params
        row = {"run_id": r.info.run_id, "name": r.info.run_name, "kind": tags.get("kind", ""),
               "strategy": tags.get("strategy", "-"), "partition": tags.get("partition", "-"),
               "differs": {k: params.get(k) for k in differ}, "final": final, "best": best,
               "wall_s": r.data.metrics.get("time/wall_s"), "model": tags.get("registered_model", "")}
        rows.append(row)
        table.add_row(f"{row['name']} {row['run_id'][:8]}", row["kind"], row["strategy"], row["partition"],
                      "\n".join(f"{k}={v}" for k, v in row["differs"].items())[:400] or "-",
                      _fmt(final), _fmt(best), _fmt(row["wall_s"], 1), row["model"] or "-")
    return table, rows


def plot(uri: str, runs, metric: str, path: str) -> None:
    from orchestrator.tracking import plots
    from orchestrator.tracking.runs import metric_history

    series = {f"{r.info.run_name} ({r.info.run_id[:6]})": metric_history(uri, r.info.run_id, metric) for r in runs}
    if not any(series.values()):
        raise UserError("--metric", [f"none of the chosen runs logged '{metric}'"])
    kinds = {r.data.tags.get("kind") for r in runs}
    xlabel = "round" if kinds == {"federated"} else "epoch" if "federated" not in kinds else "round / epoch"
    fig = plots.curves(series, metric, xlabel, metric)
    fig.savefig(path)
    plots.close(fig)


def runs_table(runs) -> Table:
    table = Table(title="recent runs", header_style="bold")
    for col in ("started", "run", "id", "status", "kind", "eval/accuracy"):
        table.add_column(col, justify="right" if col == "eval/accuracy" else "left", overflow="fold")
    for r in runs:
        started = dt.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        table.add_row(started, r.info.run_name, r.info.run_id, r.info.status, r.data.tags.get("kind", ""),
                      _fmt(r.data.metrics.get("eval/accuracy")))
    return table


def models_table(rows: list[dict]) -> Table:
    table = Table(title="registered models", header_style="bold")
    for col in ("model", "version", "uri", "run id", "status", "created"):
        table.add_column(col, overflow="fold")
    for m in rows:
        created = dt.datetime.fromtimestamp(m["created"] / 1000).strftime("%Y-%m-%d %H:%M")
        table.add_row(m["name"], str(m["version"]), f"models:/{m['name']}/{m['version']}", m["run_id"] or "-",
                      m["status"], created)
    return table


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
