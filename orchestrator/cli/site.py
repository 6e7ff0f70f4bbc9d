"""`consortium federation ledger` and `consortium federation audit verify | report`: what a hospital's
own records say (clients.ledger, clients.audit), read on the hospital's machine from its SuperNode's
--state directory, or from a simulated hospital's folder (federated.sites)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.federation import _say, _site_policy, _user_error, fed_app


def _site_dir(state: Path) -> Path:
    """A SuperNode's --state directory (its site/ inside) or a simulated hospital's folder itself."""
    return state / "site" if (state / "site").is_dir() else state


@fed_app.command()
def ledger(state: Path = typer.Option(Path("supernode-state"), "--state", help="The SuperNode's --state directory, "
                                                                            "or a simulated hospital's folder (SITES/NAME)"),
           policy: Optional[Path] = typer.Option(None, help="The site policy: its budget and delta"),
           delta: float = typer.Option(1e-5, help="The delta epsilon is reported at (the policy's, if given)")) -> None:
    """This hospital's privacy ledger: epsilon spent per dataset and per run, composed (RDP)."""
    from clients.ledger import Ledger, epsilon

    site = _site_dir(state)
    if not (site / "ledger.db").is_file():
        _user_error(str(state), "no privacy ledger here (site/ledger.db): no DP round has been answered by this hospital")
    budget = None
    if policy is not None:
        p = _site_policy(policy)
        delta, budget = p.privacy.delta, p.privacy.epsilon_budget
    book = Ledger(site / "ledger.db")
    try:
        runs = book.summary()
        for dataset in dict.fromkeys(r["dataset"] for r in runs):
            total = epsilon(book.releases(dataset), delta)
            limit = f" of its budget {budget:g}" if budget else ""
            _say(f"dataset {dataset}: epsilon {total:.4g} spent{limit} (delta {delta:g}, RDP over every release)")
            for r in (r for r in runs if r["dataset"] == dataset):
                eps = epsilon(book.releases(dataset, r["run"]), delta)
                _say(f"  run {r['run']}  job {r['job']}  {r['mode']} DP  {r['rounds']} rounds  epsilon {eps:.4g}")
    finally:
        book.close()


audit_app = typer.Typer(no_args_is_help=True, help="This hospital's audit log of every message in and out.")


@audit_app.command("verify")
def audit_verify(state: Path = typer.Option(Path("supernode-state"), "--state", help="The SuperNode's --state "
                                                                                  "directory, or SITES/NAME")) -> None:
    """Check the hash chain: find an entry changed, removed or reordered (exit 1)."""
    from clients.audit import verify

    log = _site_dir(state) / "audit.jsonl"
    n, problems = verify(log)
    if problems:
        for p in problems:
            _say(f"consortium: {log}: {p}", err=True)
        raise typer.Exit(1)
    _say(f"{log}: {n} entries, the chain is whole")


@audit_app.command("report")
def audit_report(run: str = typer.Argument(..., help="The run's MLflow run id (or its Flower run id)"),
                 state: Path = typer.Option(Path("supernode-state"), "--state", help="The SuperNode's --state "
                                                                                   "directory, or SITES/NAME")) -> None:
    """What left this hospital in one run, in words and numbers, for its ethics board."""
    from clients.audit import report

    log = _site_dir(state) / "audit.jsonl"
    if not log.is_file():
        _user_error(str(state), "no audit log here (site/audit.jsonl)")
    _say(report(log, run))


fed_app.add_typer(audit_app, name="audit")
