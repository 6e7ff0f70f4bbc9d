"""Each adapter (orchestrator/adapters/<library>.py) was written against one version of its library:
on another, this fails and names the module to re-check, before anything else notices. The
adapters' behaviour is tested where it is used (tests/unit/test_records.py: Flower's records and
arrays; the engines' and tracking tests: the rest)."""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil

import pytest

import orchestrator.adapters

ADAPTERS = sorted(m.name for m in pkgutil.iter_modules(orchestrator.adapters.__path__))


def test_there_is_one_adapter_per_library():
    assert ADAPTERS == ["flower", "mlflow", "ray", "torch"]
    libraries = [importlib.import_module(f"orchestrator.adapters.{name}").WRITTEN_FOR[0] for name in ADAPTERS]
    assert len(set(libraries)) == len(libraries), libraries


@pytest.mark.parametrize("name", ADAPTERS)
def test_the_installed_library_is_the_version_its_adapter_was_written_against(name):
    library, version = importlib.import_module(f"orchestrator.adapters.{name}").WRITTEN_FOR
    installed = importlib.metadata.version(library).split("+")[0]   # torch's local tag: +cpu, +cu128
    assert installed == version, (
        f"orchestrator/adapters/{name}.py was written against {library} {version}, and {installed} is "
        f"installed: re-check every private use in that module against {library} {installed}, then "
        f"update its WRITTEN_FOR")


def test_ray_cluster_addressing_is_set_in_rays_constants():
    from ray._private import ray_constants

    from orchestrator.adapters.ray import cluster_addressing

    before = ray_constants.ENABLE_RAY_CLUSTER
    try:
        cluster_addressing(True)
        assert ray_constants.ENABLE_RAY_CLUSTER is True
        cluster_addressing(False)
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
