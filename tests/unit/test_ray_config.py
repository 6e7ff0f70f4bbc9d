"""Ray job specs: bad addresses and impossible placements are refused before any work starts."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.spec.errors import ConfigError, UserError
from orchestrator.spec.loading import load_job
from orchestrator.jobs.ray.session import check_placement
from orchestrator.jobs.ray.worker import _shard_batches

ROOT = Path(__file__).resolve().parents[2]
DDP = ROOT / "configs/cluster_ddp.yaml"


@pytest.mark.parametrize("address", ["http//bad", "127.0.0.1", "host:port", "a b:1"])
def test_malformed_address_is_a_config_error(address):
    with pytest.raises(ConfigError, match="ray.address"):
        load_job(DDP, [f"ray.address={address}"])


@pytest.mark.parametrize("address", [None, "auto", "127.0.0.1:6379", "ray://head.local:10001"])
def test_valid_addresses(address):
    assert load_job(DDP, [f"ray.address={address or 'null'}"]).ray.address == address


def test_mixed_precision_needs_gpu():
    with pytest.raises(ConfigError, match="ray.mixed_precision"):
        load_job(DDP, ["ray.mixed_precision=true"])
    job = load_job(DDP, ["ray.use_gpu=true", "ray.mixed_precision=true"])
    assert job.ray.use_gpu and job.ray.mixed_precision


def test_gpu_job_on_a_cluster_without_gpus_is_refused():
    job = load_job(DDP, ["ray.use_gpu=true"])
    with pytest.raises(UserError, match="no GPU"):
        check_placement(job, [{"CPU": 16.0}])
    check_placement(job, [{"CPU": 16.0, "GPU": 2.0}])  # fits: no error


def test_more_workers_than_the_cluster_can_ever_place_is_refused():
    job = load_job(DDP, ["ray.num_workers=3", "ray.resources_per_worker={CPU: 2}"])
    with pytest.raises(UserError, match="at most 2 fit"):
        check_placement(job, [{"CPU": 3.0}, {"CPU": 2.0}])  # 1 + 1 workers fit, not 3
    check_placement(job, [{"CPU": 4.0}, {"CPU": 2.0}])


def test_gpu_workers_ask_for_one_gpu_each_by_default():
    job = load_job(DDP, ["ray.use_gpu=true", "ray.num_workers=2"])
    with pytest.raises(UserError, match="at most 1 fit"):
        check_placement(job, [{"CPU": 8.0, "GPU": 1.0}])


def test_unreachable_address_fails_fast_with_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(DDP), "ray.address=127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert "nothing answers at 127.0.0.1:1" in result.output
    assert not (tmp_path / "mlruns.db").exists()


def test_shards_cover_every_row_with_equal_batch_counts():
    import torch

    for n, world, batch in [(100, 2, 16), (101, 3, 7), (5, 4, 2)]:
        shards = [_shard_batches(n, batch, seed=1, epoch=2, rank=r, world=world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # DDP needs every rank to step equally often
        rows = torch.cat([torch.cat(s) for s in shards])
        assert set(rows.tolist()) == set(range(n)) and len(rows) == -(-n // world) * world


class _Run:
    def __init__(self):
        self.metrics, self.tags, self.flushes = [], {}, 0

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def set_tags(self, tags):
        self.tags.update(tags)

    def flush(self, wait=0.0):
        self.flushes += 1
        return True


def test_rank_zero_reports_reach_the_driver_in_order_and_a_stranger_is_ignored():
    """What rank 0 sends is logged by the driver before close() returns; a connection without this
    job's token logs nothing, and a line that is not JSON costs that line only."""
    import socket

    from orchestrator.jobs.ray.inbox import Inbox, Outbox

    run = _Run()
    inbox = Inbox(run, 3, "127.0.0.1")
    host, port, token = inbox.for_workers()
    with socket.create_connection((host, port)) as stranger:
        stranger.sendall(b"not-the-token\n" + b'{"step": 9, "metrics": {"eval/accuracy": 0.0}}\n')
    out = Outbox([host, port, token])
    out.set_tags({"ray.num_nodes": 1})
    for epoch in (1, 2, 3):
        out.log_metrics({"eval/accuracy": epoch / 10, "time/epoch_s": 0.1}, epoch)
    out._sock.sendall(b"{not json\n")
    out.log_metrics({"early_stopping/best_epoch": 2}, 0)
    out.close()
    inbox.close()
    assert [s for s, _ in run.metrics] == [1, 2, 3, 0]
    assert run.metrics[2][1] == {"eval/accuracy": 0.3, "time/epoch_s": 0.1}
    assert run.tags == {"ray.num_nodes": "1"} and run.flushes == 4 and inbox.received == 4


def test_a_driver_nobody_can_reach_is_named_in_rank_zeros_error():
    import socket

    from orchestrator.jobs.ray.inbox import Outbox

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # bound, not listening: refused
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
            Outbox(["127.0.0.1", port, "t"], timeout=2)
