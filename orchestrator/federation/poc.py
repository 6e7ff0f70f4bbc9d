"""`consortium federation poc CONFIG`: a whole federation on this machine, then the job through it.

In a temporary directory: a CA, a SuperLink certificate for 127.0.0.1 and one key pair per
hospital; a SuperLink with TLS, SuperNode authentication and a state database; every hospital's
public key registered; one SuperNode per hospital, each given only its own CSV (natural silos) or
its partition id (bundled demo data, which each hospital partitions itself). Then the job runs
through the deployment engine exactly as `consortium run` submits it, and everything started here
is stopped, on success, failure or Ctrl-C. NVIDIA FLARE's `nvflare poc` is the model.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from orchestrator.federation.certs import make_certs
from orchestrator.federation.daemons import Daemon, start_superlink, start_supernode
from orchestrator.federation.flower import Link, free_port, register


@dataclass
class Hospital:
    partition_id: int
    name: str
    data: Path | None           # its own CSV, or None (bundled demo data)


@dataclass
class Federation:
    """What `local_federation` started: the SuperLink, the SuperNodes and how to reach them."""
    root: Path
    link: Link
    superlink: Daemon
    hospitals: list[Hospital]
    nodes: dict[int, Daemon] = field(default_factory=dict)
    keys: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def start_node(self, h: Hospital, num: int) -> Daemon:
        d = start_supernode(self.link, self.keys[h.name][0], h.partition_id, num, h.data, free_port(),
                            self.root / "hospitals" / h.name)
        self.nodes[h.partition_id] = d
        return d

    def stop(self) -> None:
        for d in self.nodes.values():
            d.stop()
        self.superlink.stop()


def hospitals_of(job, workdir: Path) -> list[Hospital]:
    """Who takes part, and the one file each is given."""
    from orchestrator.core.csvfiles import csv_files
    from orchestrator.core.splits import hospital_name

    part = job.federated.partition
    if job.data.source == "images":   # one folder per hospital
        from orchestrator.core.data import hospital_paths

        return [Hospital(i, hospital_name(f.name), f) for i, f in enumerate(hospital_paths(job))]
    if job.data.source != "csv":
        return [Hospital(i, str(i), None) for i in range(int(job.federated.num_clients or 1))]
    files = csv_files(job.data)
    if part.site_column is None:
        return [Hospital(i, hospital_name(f.stem), f) for i, f in enumerate(files)]
    import pandas as pd  # one file naming each row's site: each hospital gets its own rows only

    df = pd.read_csv(files[0])
    if part.site_column not in df.columns:
        from orchestrator.spec.errors import DataError

        raise DataError(str(files[0]), [f"federated.partition.site_column: column '{part.site_column}' not found"])
    out = []
    for i, (site, rows) in enumerate(sorted(df.groupby(part.site_column), key=lambda kv: str(kv[0]))):
        path = workdir / "sites" / f"{hospital_name(str(site))}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(path, index=False)
        out.append(Hospital(i, hospital_name(str(site)), path))
    return out


@contextmanager
def local_federation(job, root: Path | None = None) -> Iterator[Federation]:
    """Start a TLS + authenticated federation for `job`'s hospitals on 127.0.0.1; stop it after."""
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="consortium-poc-")) if own else root
    fed = None
    try:
        hospitals = hospitals_of(job, root)
        certs = make_certs(root / "certs", ["127.0.0.1"], [h.name for h in hospitals])
        port = free_port()
        link = Link(f"127.0.0.1:{port}", certs.ca)
        superlink = start_superlink("127.0.0.1", port, root / "superlink", root / "certs")
        fed = Federation(root, link, superlink, hospitals, keys=certs.hospitals)
        for h in hospitals:
            register(link, certs.hospitals[h.name][1], name=h.name)
        for h in hospitals:
            fed.start_node(h, len(hospitals))
        yield fed
    finally:
        if fed is not None:
            fed.stop()
        if own:
            shutil.rmtree(root, ignore_errors=True)


def poc_job(job, fed: Federation):
    """The job as it runs through `fed`: deployment engine, this SuperLink, its CA, every hospital."""
    from orchestrator.spec.loading import set_dotted, validate

    raw = job.model_dump(mode="json")
    for key, value in {"federated.engine": "deployment", "federated.superlink": fed.link.address,
                       "federated.root_certificates": str(fed.link.ca), "federated.insecure": False,
                       "federated.num_clients": len(fed.hospitals)}.items():
        set_dotted(raw, key, value)
    return validate(raw, "federation poc")
