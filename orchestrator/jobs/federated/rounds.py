"""Round logging: Flower's round reports become the run's metrics, one batch per round.

The consortium's eval metrics are pooled exactly from the hospitals' sums (confusion counts,
regression sums); AUROC, which sums cannot give, is the row-weighted mean over hospitals.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.core import metrics as M
from orchestrator.core.protocol import DP_EPSILON, NUM_EXAMPLES, PERSONAL_SUMS, SITE, SUMS_KEY, SUMS_RECORD, read_sums
from strategies.base import RoundReport

if TYPE_CHECKING:
    from orchestrator.tracking.store import TrackedRun


def _weighted(hospitals: dict[int, dict[str, float]], key: str) -> float | None:
    pairs = [(m[key], m.get(NUM_EXAMPLES, 0.0)) for m in hospitals.values() if key in m and not np.isnan(m[key])]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return float(sum(v * w for v, w in pairs) / total)


class RoundLogger:
    """Turns Flower round reports into the run's metrics, one log_batch per round."""

    def __init__(self, run: TrackedRun, names: dict[int, str] | list[str], num_classes: int,
                 task: str = "classification", labels: tuple[str, ...] = ()):
        self.run, self.num_classes, self.task, self.labels = run, num_classes, task, tuple(labels)
        self.names = names if isinstance(names, dict) else dict(enumerate(names))  # partition id -> hospital
        self.confusion: np.ndarray | None = None
        self.node_names: dict[int, str] = {}           # node id -> hospital, once the census has answered
        self.failed: dict[str, list[str]] = {}         # phase -> the hospitals that failed it, last round
        self.refusals: list[str] = []                  # what hospitals' site policies refused, each reason once
        self.policies: dict[str, str] = {}             # hospital -> its site policy's digest (never its content)

    def __call__(self, report: RoundReport) -> None:
        step, m = report.server_round, {}
        self.failed[report.phase] = [self.node_names.get(n, f"node {n}") for n in report.failed_nodes]
        prefix = "train" if report.phase == "train" else "eval"
        key = "train_loss" if report.phase == "train" else "eval_loss"
        if (v := _weighted(report.hospitals, key)) is not None:
            m[f"{prefix}/loss"] = v
        pooled_exactly = any(name in e for e in report.extras.values() for name in SUMS_KEY)
        extra_keys = {k for hm in report.hospitals.values() for k in hm
                      if k.startswith(f"{prefix}_") and k != key and (report.phase == "train" or not pooled_exactly)}
        for k in sorted(extra_keys):   # e.g. a GAN's d_loss and g_loss: row-weighted over hospitals
            if (v := _weighted(report.hospitals, k)) is not None:
                m[f"{prefix}/{k[len(prefix) + 1:]}"] = v
        for pid, hm in report.hospitals.items():
            name = self.names.get(pid, str(pid))
            m[f"hospital_{name}/{prefix}/num_examples"] = hm.get(NUM_EXAMPLES, 0.0)
            for k, v in hm.items():
                if k.startswith(f"{prefix}_") and not np.isnan(v):
                    m[f"hospital_{name}/{prefix}/{k[len(prefix) + 1:]}"] = v
                elif k.startswith("personal_") and not np.isnan(v):   # its personal model's
                    m[f"hospital_{name}/personal/{k[len('personal_'):]}"] = v
        if report.phase == "evaluate":
            # each hospital counts once (FLamby's mean over hospitals), beside the pooled eval/
            per_site = [{k[len("eval_"):]: v for k, v in hm.items() if k.startswith("eval_")}
                        for hm in report.hospitals.values()]
            m.update({f"site_mean/{k}": v for k, v in M.site_mean(per_site).items()})
            for key in dict.fromkeys(k for hm in report.hospitals.values() for k in hm if k.startswith("eval_auroc")):
                if (v := _weighted(report.hospitals, key)) is not None and not np.isnan(v):
                    m[f"eval/{key[len('eval_'):]}"] = v   # AUROC (each finding's too): row-weighted
            own = [e[PERSONAL_SUMS] for e in report.extras.values() if PERSONAL_SUMS in e]
            if own:
                m.update(self._personal(report, own))
            found = [s for e in report.extras.values() if (s := read_sums(e, self.num_classes)) is not None]
            if found:
                task, total = found[0][0], np.sum([s for _, s in found], axis=0)
                if task == "classification":
                    self.confusion = total.astype(np.int64)
                m.update({f"eval/{name}": v for name, v in M.from_sums(total, task, self.labels).items()})
        m.update(self._sites(report))
        m.update(self._comm(report))
        eps = [hm[DP_EPSILON] for hm in report.hospitals.values() if DP_EPSILON in hm]
        if eps:  # local DP: the most any hospital has spent
            m["dp/epsilon"] = max(eps)
        m[f"{prefix}/failures"] = len(report.failures)
        m[f"{prefix}/hospitals"] = len(report.hospitals)
        self.run.log_metrics(m, step)

    def _comm(self, report: RoundReport) -> dict[str, float]:
        """Bytes on the wire this round (the train phase's as comm/bytes_*, evaluation's as
        comm/eval_bytes_*): in all, and each hospital's."""
        if not report.bytes_up and not report.bytes_down:
            return {}
        tag = "" if report.phase == "train" else "eval_"
        m = {f"comm/{tag}bytes_up": float(sum(report.bytes_up.values())),
             f"comm/{tag}bytes_down": float(sum(report.bytes_down.values()))}
        for pid, n in report.bytes_up.items():
            m[f"hospital_{self.names.get(pid, str(pid))}/comm/{tag}bytes_up"] = float(n)
        for node, n in report.bytes_down.items():
            if node in self.node_names:
                m[f"hospital_{self.node_names[node]}/comm/{tag}bytes_down"] = float(n)
        return m

    def _sites(self, report: RoundReport) -> dict[str, float]:
        """What the hospitals' own controls said (`clients.site`): each policy's digest (a tag per
        hospital), the epsilon each spent by its own ledger, and every refusal's reason (the tag
        `site.refusals` and site/refusals.json), as the server heard them."""
        m: dict[str, float] = {}
        tags: dict[str, str] = {}
        for pid, extras in report.extras.items():
            site = extras.get(SITE)
            if site is None:
                continue
            name = self.names.get(pid, str(pid))
            if self.policies.get(name) != site.get("policy"):
                self.policies[name] = str(site.get("policy"))
                tags[f"site.{name}.policy"] = self.policies[name]
            for key in ("epsilon_run", "epsilon_dataset"):
                if key in site:
                    m[f"hospital_{name}/site/{key}"] = float(site[key])
        new = [r for r in dict.fromkeys(f.split(": ", 1)[-1].strip() for f in report.failures if " refuses: " in f)
               if r not in self.refusals]
        for reason in new:   # "hospital NAME refuses: WHY (policy DIGEST)": a refusing hospital's digest too
            found = re.match(r"hospital (.+?) refuses: .*\(policy (\w+)\)$", reason, re.S)
            if found and self.policies.get(found[1]) != found[2]:
                self.policies[found[1]] = found[2]
                tags[f"site.{found[1]}.policy"] = found[2]
        if new:
            self.refusals += new
            tags["site.refusals"] = "\n".join(self.refusals)[:5000]
            self.run.log_dict({"refusals": self.refusals}, "site/refusals.json")
        if tags:
            self.run.set_tags(tags)
        if self.refusals or new:
            m[f"{'train' if report.phase == 'train' else 'eval'}/refusals"] = float(
                sum(" refuses: " in f for f in report.failures))
        return m

    def _personal(self, report: RoundReport, sums: list) -> dict[str, float]:
        """The hospitals' personal models this round: pooled exactly from their sums, and the plain
        mean over hospitals (federated.personalize with a stateful method)."""
        k, task = self.num_classes, self.task
        key = SUMS_KEY[SUMS_RECORD[task]]
        values = [np.asarray(s[key], dtype=np.float64) for s in sums]
        pooled = M.from_sums(np.sum([v.reshape(k, k) if task == "classification" else v for v in values], 0), task, self.labels)
        m = {f"personal/{name}": v for name, v in pooled.items()}
        if (v := _weighted(report.hospitals, "personal_loss")) is not None:
            m["personal/loss"] = v
        per_site = [{key[len("personal_"):]: v for key, v in hm.items() if key.startswith("personal_")}
                    for hm in report.hospitals.values()]
        m.update({f"personal_site_mean/{name}": v for name, v in M.site_mean(per_site).items()})
        return m
