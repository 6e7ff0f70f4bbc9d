"""Everything under deploy/ is checked, not only written: the Dockerfile is linted (hadolint) and
built where a Docker daemon answers; every compose service's image, command, volume and port is
found in the repo or the image; the Ray cluster YAMLs pass Ray's own cluster schema; the KubeRay
RayJob passes a schema of KubeRay's v1 API; and every `consortium` command they name parses and
its job validates."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
COMPOSE_FILES = [ROOT / "deploy" / "mlflow" / "compose.yaml", ROOT / "deploy" / "federation" / "compose.yaml"]
CLUSTERS = [ROOT / "deploy" / "ray" / "cluster-aws.yaml", ROOT / "deploy" / "ray" / "cluster-local.yaml"]
RAYJOB = ROOT / "deploy" / "ray" / "rayjob.yaml"
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- consortium commands
def parse_cli(args: list[str]) -> tuple[list[str], dict]:
    """Parse a `consortium ...` argument list exactly as the CLI would, without running it: the
    subcommand path and its parsed parameters (unknown options, missing arguments, bad types fail)."""
    import click
    from typer.main import get_command

    from orchestrator.cli import app

    cmd, path, rest = get_command(app), [], list(args)
    while isinstance(cmd, click.Group):
        name, sub, rest = cmd.resolve_command(click.Context(cmd), rest)
        assert sub is not None, f"consortium has no command {name!r} ({args})"
        path.append(name)
        cmd = sub
    ctx = cmd.make_context(" ".join(["consortium", *path]), rest)
    return path, ctx.params


def check_consortium_command(args: list[str], where: str) -> list[str]:
    """Parse it; a `run`/`validate`/`submit` command's job (with its overrides) must validate."""
    path, params = parse_cli(args)
    if path and path[0] in ("run", "validate", "submit"):
        from orchestrator.cli.session import load

        job = load(str(ROOT / params["config"]), params.get("overrides"))
        assert job.name, where
    return path


def _image_paths() -> set[str]:
    """Directories the image has: WORKDIR, what it makes (mkdir) and the repo folders it copies."""
    text = DOCKERFILE.read_text()
    dirs = {"/opt/consortium"}
    for m in re.finditer(r"mkdir -p ([^\n\\&]+)", text):
        dirs.update(m.group(1).split())
    for m in re.finditer(r"^COPY (?:--chown=\S+ )?(\S+)/ (\S+)/$", text, re.M):
        dirs.add(f"/opt/consortium/{m.group(2)}")
    return dirs


# --------------------------------------------------------------------------- Dockerfile
def test_dockerfile_passes_hadolint():
    out = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_copies_what_exists_and_runs_consortium():
    text = DOCKERFILE.read_text()
    for m in re.finditer(r"^COPY (?:--chown=\S+ )?(.+) \S+$", text, re.M):
        for src in m.group(1).split():
            assert (ROOT / src.rstrip("/")).exists(), f"Dockerfile copies {src}, which the repo lacks"
    assert 'ENTRYPOINT ["consortium"]' in text
    assert "consortium = \"orchestrator.cli:main\"" in (ROOT / "pyproject.toml").read_text()
    assert "requirements.lock" in text and "scripts/setup.sh" in text  # the locked environment
    assert re.search(r"^USER (?!root|0\b)", text, re.M), "the image must not run as root"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def _docker_daemon() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _docker_daemon(), reason="no Docker daemon on this machine (the docker client only): "
                                                 "the image is linted and its inputs checked, not built")
def test_image_builds_and_validates_a_job():  # pragma: no cover - needs a Docker daemon
    tag = "consortium:test"
    subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)], check=True, timeout=3600)
    out = subprocess.run(["docker", "run", "--rm", tag, "validate", "configs/hospitals_fedavg.yaml"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr


# --------------------------------------------------------------------------- compose
def _exposed() -> set[int]:
    m = re.search(r"^EXPOSE (.+)$", DOCKERFILE.read_text(), re.M)
    return {int(p) for p in m.group(1).split()}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_compose_names_only_what_the_repo_and_the_image_have(path):
    compose = yaml.safe_load(path.read_text())
    named_volumes = set(compose.get("volumes") or {})
    image_dirs = _image_paths()
    for name, svc in compose["services"].items():
        where = f"{path.relative_to(ROOT)}: service {name}"
        ours = "build" in svc
        if ours:
            context = (path.parent / svc["build"]["context"]).resolve()
            assert context == ROOT, where
            assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE, where
            assert svc["image"].startswith("consortium:"), where
        else:
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), f"{where}: pin the image's tag ({image})"
        mounts = []
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith((".", "/")):
                assert (path.parent / source).resolve().exists(), f"{where}: mounts {source}, which does not exist"
            else:
                assert source in named_volumes, f"{where}: volume {source} is not declared"
            if ours and not source.startswith((".", "/")):
                assert target in image_dirs, f"{where}: {target} does not exist in the image (owned by its user)"
            mounts.append(target)
        if ours:
            args = [str(a) for a in svc["command"]]
            # compose substitutes ${VAR:?...} from the environment; a value stands in here
            args = [re.sub(r"\$\{(\w+)(:\?[^}]*|:-([^}]*))?\}", lambda m: m.group(3) or "x", a) for a in args]
            path_, params = parse_cli(args)
            if path_[0] in ("run", "validate"):
                check_consortium_command(args, where)
            for a in args:  # every absolute path it names is mounted (or made by the image)
                for p in re.findall(r"(?:^|=)(/[\w./-]+)", a):
                    assert any(p == m or p.startswith(m.rstrip("/") + "/") for m in [*mounts, *image_dirs]), \
                        f"{where}: {p} is neither mounted nor in the image"
            listens = int(params.get("port") or 0)
        for port in svc.get("ports", []):
            # compose's default for ${VAR:-default} stands for an unset variable
            port = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(port))
            parts = port.split(":")
            assert len(parts) == 3, f"{where}: publish on an explicit host address ({port})"
            host, _, container = parts
            assert host == "127.0.0.1", f"{where}: {port} binds beyond 127.0.0.1 by default"
            if ours:
                assert int(container) == listens and int(container) in _exposed(), f"{where}: {port}"


def test_federation_demo_admits_exactly_the_hospitals_that_join():
    compose = yaml.safe_load((ROOT / "deploy" / "federation" / "compose.yaml").read_text())
    services = compose["services"]
    certs = services["certs"]["command"]
    made = {certs[i + 1] for i, a in enumerate(certs) if a == "--hospital"}
    registered = {Path(a).stem for a in services["admit"]["command"] if str(a).endswith(".pub")}
    nodes = {n: s["command"] for n, s in services.items() if s.get("command", [])[:2] == ["federation", "supernode"]}
    keys = {Path(c[c.index("--key") + 1]).name for c in nodes.values()}
    assert made == registered == keys == set(nodes) and len(nodes) == 3
    ids = sorted(int(c[c.index("--partition-id") + 1]) for c in nodes.values())
    assert ids == [0, 1, 2] and all(c[c.index("--num-partitions") + 1] == "3" for c in nodes.values())
    job = services["job"]["command"]
    # hospitals dial the front; the operator's services share the SuperLink's host to reach its control port
    assert all(c[c.index("--superlink") + 1] == "superlink:9093" for c in nodes.values())
    assert "federated.num_clients=3" in job and "federated.superlink=127.0.0.1:9099" in job
    for operator in ("admit", "job"):
        assert services[operator]["network_mode"] == "service:superlink", operator
    assert services["admit"]["command"][services["admit"]["command"].index("--superlink") + 1] == "127.0.0.1:9099"
    assert "superlink" in certs[certs.index("--san") + 1]  # the name the hospitals dial is in the certificate


# --------------------------------------------------------------------------- Ray
def _documented_commands(path: Path) -> list[list[str]]:
    """The `consortium ...` commands a file's header tells a person to run (continuations joined)."""
    lines = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("consortium ")]


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.stem)
def test_ray_cluster_yaml_passes_rays_schema_and_runs_a_real_job(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))   # Ray's own ray-schema.json, as `ray up` checks it
    assert config["docker"]["image"].split("/")[-1].startswith("consortium:")
    commands = _documented_commands(path)
    assert commands, f"{path.name} says which consortium command to run on it"
    for args in commands:
        assert check_consortium_command(args, path.name)[0] == "submit"
    if config["provider"]["type"] == "aws":
        gpu = [t for t in config["available_node_types"].values() if t.get("resources", {}).get("GPU")]
        assert gpu, "the AWS cluster has GPU workers"


def test_ray_cluster_schema_check_can_fail():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTERS[0].read_text())
    config["available_node_types"]["gpu_worker"]["resourcez"] = {"GPU": 1}
    with pytest.raises(Exception, match="resourcez"):
        validate_config(prepare_config(config))


def _rayjob_schema() -> dict:
    return json.loads((ROOT / "tests" / "schemas" / "kuberay-rayjob-v1.schema.json").read_text())


def test_kuberay_rayjob_passes_the_schema_and_its_entrypoint_validates():
    import jsonschema

    manifest = yaml.safe_load(RAYJOB.read_text())
    jsonschema.Draft202012Validator.check_schema(_rayjob_schema())
    jsonschema.validate(manifest, _rayjob_schema())
    args = shlex.split(manifest["spec"]["entrypoint"])
    assert args[0] == "consortium"
    assert check_consortium_command(args[1:], "rayjob entrypoint") == ["run"]
    images = {c["image"] for g in [manifest["spec"]["rayClusterSpec"]["headGroupSpec"],
                                   *manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert all(i.split("/")[-1].startswith("consortium:") for i in images)


@pytest.mark.parametrize("mutate,message", [
    (lambda m: m["spec"].update(entrypointt="x"), "entrypointt"),
    (lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "is not of type 'string'"),
    (lambda m: m["spec"].update(submissionMode="K8sJob"), "K8sJob"),
], ids=["misspelt-key", "non-string-ray-start-param", "unknown-submission-mode"])
def test_kuberay_schema_check_can_fail(mutate, message):
    import jsonschema

    manifest = yaml.safe_load(RAYJOB.read_text())
    mutate(manifest)
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(manifest, _rayjob_schema())


def test_the_example_site_policy_is_a_valid_policy():
    from orchestrator.spec.policy import load_policy

    policy = load_policy(ROOT / "deploy" / "federation" / "site-policy.yaml")
    assert policy.min_count == 5 and policy.privacy.epsilon_budget == 8.0 and policy.allow.max_rounds == 50
