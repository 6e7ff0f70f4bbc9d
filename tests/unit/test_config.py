"""The job spec as a user meets it: shipped configs validate, overrides apply, mistakes are explained."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.spec.errors import ConfigError
from orchestrator.spec.loading import apply_override, flatten, load_job

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates_with_its_data(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # shipped configs use paths relative to the repository root
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_text().startswith(f"# consortium run configs/{path.name}")


def test_overrides_take_yaml_typed_values():
    job = load_job(ROOT / "configs/hospitals_fedavg.yaml",
                   ["federated.partition.alpha=0.1", "model.hidden=[128,64]", "tracking.register_model=null",
                    "federated.rounds=5"])
    assert job.federated.partition.alpha == 0.1
    assert job.model.hidden == [128, 64]
    assert job.tracking.register_model is None
    assert job.federated.rounds == 5


def test_override_creates_missing_sections_but_not_inside_values():
    raw = {"model": {"hidden": [3]}}
    apply_override(raw, "train.optimizer.lr=0.1")
    assert raw["train"]["optimizer"]["lr"] == 0.1
    with pytest.raises(ValueError, match="model.hidden"):
        apply_override(raw, "model.hidden.x=1")


def test_all_problems_are_reported_at_once_with_suggestions():
    with pytest.raises(ConfigError) as info:
        load_job(ROOT / "configs/hospitals_fedavg.yaml",
                 ["model.hiden=[3]", "federated.partition.alpha=-1", "data.source=breast"])
    problems = info.value.problems
    assert len(problems) == 3
    text = "\n".join(problems)
    assert "model.hiden: unknown key (did you mean 'hidden'?)" in text
    assert "federated.partition.alpha" in text and "greater than 0" in text
    assert "did you mean 'breast_cancer'?" in text


def test_every_cross_section_problem_is_reported_at_once_with_the_strategys_own_requirements():
    with pytest.raises(ConfigError) as info:
        load_job(ROOT / "configs/hospitals_fedavg.yaml",
                 ["federated.strategy.name=scaffold", "train.optimizer.name=adam", "federated.dp.mode=local",
                  "model.head=linear", "train.class_weights=balanced"])
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) >= 4, text
    # SCAFFOLD's module says what it needs (strategies/scaffold.py), beside the spec's own checks
    assert "train.optimizer.name: scaffold corrects plain SGD steps" in text
    assert "federated.dp: local DP-SGD does not combine with scaffold's corrected gradients" in text
    assert "train.class_weights: a regression (model.head linear) has no classes" in text
    assert "model.head: linear is for regression, but breast_cancer has class labels" in text


@pytest.mark.parametrize("overrides, says", [
    (["federated.dp.mode=local"], "federated.dp: local DP-SGD trains without fedprox's proximal term"),
    (["federated.personalize.method=fedrep"], "federated.personalize.method: fedrep trains its own loop without "
                                              "fedprox's proximal term"),
])
def test_fedprox_refuses_a_local_loop_that_would_drop_its_term(overrides, says):
    with pytest.raises(ConfigError) as info:
        load_job(ROOT / "configs/hospitals_fedavg.yaml", ["federated.strategy.name=fedprox", *overrides])
    assert any(p.startswith(says) for p in info.value.problems), info.value.problems


def test_params_are_the_resolved_config_flattened_with_dots():
    job = load_job(ROOT / "configs/hospitals_fedavg.yaml")
    params = flatten(job.model_dump(mode="json"))
    assert params["federated.partition.alpha"] == 0.5
    assert params["train.optimizer.lr"] == 0.05
    assert params["model.hidden"] == [64]


GOOD = (ROOT / "configs/hospitals_fedavg.yaml").read_text()


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# (case id, YAML text or None for the shipped one, overrides, text the message must contain)
BAD_INPUTS = [
    ("malformed-yaml", "kind: federated\nmodel: {name: mlp\n", [], "not valid YAML (line"),
    ("empty-file", "", [], "file is empty"),
    ("top-level-list", "- kind\n- federated\n", [], "top level must be a mapping"),
    ("python-tag", "kind: !!python/object/apply:os.system ['echo hacked']\n", [], "not valid YAML"),
    ("unknown-key", None, ["model.hiden=[32]"], "model.hiden: unknown key (did you mean 'hidden'?)"),
    ("wrong-type", None, ["train.batch_size=lots"], "train.batch_size"),
    ("out-of-range", None, ["federated.partition.alpha=-1"], "federated.partition.alpha"),
    ("bad-fraction", None, ["data.test_fraction=1.5"], "data.test_fraction"),
    ("unknown-kind", None, ["kind=federatd"], "did you mean 'federated'?"),
    ("unknown-strategy", None, ["federated.strategy.name=fedsgd"], "federated.strategy.name"),
    ("bad-override-syntax", None, ["federated.rounds"], "expected dotted.key=value"),
    ("csv-without-path", None, ["data.source=csv"], "data.path"),
    ("natural-without-csv", None, ["federated.partition.name=natural"], "federated.partition.name"),
    ("too-many-hospitals", None, ["federated.num_clients=200"], "federated.num_clients"),
    ("missing-csv-file", None, ["data.source=csv", "data.path=nowhere.csv"], "nowhere.csv"),
    ("missing-target", None, ["data.source=csv", "data.path={tmp}/a.csv", "data.target=label"], "'label' not found"),
    ("identifier-column", None, ["data.source=csv", "data.path={tmp}/words.csv"],
     "column 'record' looks like an identifier"),
    ("drop-unknown-column", None, ["data.source=csv", "data.path={tmp}/words.csv", "data.drop=[colour]"],
     "data.drop: ['colour'] not among the file's columns"),
    ("empty-csv", None, ["data.source=csv", "data.path={tmp}/empty.csv"], "file is empty"),
    ("corrupt-csv", None, ["data.source=csv", "data.path={tmp}/corrupt.csv"], "cannot parse as CSV"),
    ("hospital-too-small", None, ["data.source=csv", "data.path={tmp}/sites", "federated.partition.name=natural",
                                  "federated.num_clients=null"], "tiny.csv: 3 rows"),
    ("num-clients-vs-files", None, ["data.source=csv", "data.path={tmp}/ok_sites", "federated.partition.name=natural",
                                    "federated.num_clients=5"], "holds 2 hospital files"),
    ("missing-config-file", "<missing>", [], "does not exist"),
    # the deep-learning toolbox
    ("loss-head-mismatch", None, ["train.loss=mse"], "train.loss: 'mse' trains a linear head"),
    ("nesterov-without-momentum", None, ["train.optimizer.nesterov=true"], "nesterov: needs optimizer.name sgd with momentum"),
    ("unknown-activation", None, ["model.activation=relu6"], "model.activation"),
    ("regression-data-softmax", None, ["data.source=diabetes"], "diabetes is a regression target"),
    ("regression-dirichlet", None, ["data.source=diabetes", "model.head=linear", "train.loss=null"], "needs iid or natural"),
    ("sequence-model-on-tabular", None, ["model.name=lstm"], "lstm reads sequences"),
    ("bad-init-from", None, ["model.init_from=digits-cnn"], "model.init_from: expected models:/NAME/VERSION"),
    ("unknown-frozen-layer", None, ["model.freeze=[encoder]"], "['encoder'] name no layer of this model"),
    ("sigmoid-three-classes", None, ["data.source=wine", "model.head=sigmoid", "train.loss=bce"], "sigmoid is for two classes"),
    ("class-weights-length", None, ["train.class_weights=[1,2,3]"], "3 weights for 2 classes"),
    ("unknown-class", None, ["data.classes=[benign,cat]"], "['cat'] not among the classes"),
    ("steps-do-not-divide", None, ["data.source=sequences", "model.name=gru", "model.input_size=3"],
     "model.input_size: 3 features per step"),
    ("early-stopping-federated", None, ["train.early_stopping.enabled=true"], "train.early_stopping"),
    ("early-stopping-metric", None, ["kind=centralized", "train.early_stopping.metric=eval/loss"],
     "watches a validation metric"),
    ("sweep-without-space", None, ["kind=sweep"], "sweep: kind sweep needs a sweep section"),
    ("sweep-bad-value", None, ["kind=sweep", "sweep.space={train.optimizer.lr: [0.1, -1]}"],
     "train.optimizer.lr=-1 makes an invalid job"),
    ("sweep-unknown-key", None, ["kind=sweep", "sweep.space={train.optimiser.lr: [0.1]}"],
     "'train.optimiser.lr' is not a key of the job"),
    # federated depth
    ("scaffold-needs-sgd", None, ["federated.strategy.name=scaffold", "train.optimizer.name=adam"],
     "scaffold corrects plain SGD steps"),
    ("scaffold-option-on-fedavg", None, ["federated.strategy.server_lr=0.5"], "server_lr: not used by 'fedavg'"),
    ("central-dp-needs-fedavg", None, ["federated.strategy.name=krum", "federated.dp={mode: central}"],
     "central DP clips and noises FedAvg's average"),
    ("central-dp-budget", None, ["federated.dp={mode: central, noise_multiplier: 1.0, target_epsilon: 1}"],
     "target_epsilon: 1 cannot be met: 20 rounds at noise_multiplier 1"),
    ("local-dp-budget", None, ["federated.dp={mode: local, noise_multiplier: 0.8, target_epsilon: 3}"],
     "target_epsilon: 3 cannot be met"),
    ("local-dp-batchnorm", None, ["federated.dp={mode: local}", "model.batchnorm=true"], "model.batchnorm"),
    ("attack-hospital-out-of-range", None, ["federated.attack={hospitals: [12]}"],
     "federated.attack.hospitals: [12] out of range for 10 hospitals"),
    ("fault-round-beyond-the-run", None, ["federated.faults={hospitals: [1], rounds: [50]}"],
     "federated.faults.rounds: [50] beyond federated.rounds"),
    ("secagg-threshold", None, ["federated.secagg={num_shares: 3, reconstruction_threshold: 5}"],
     "reconstruction_threshold: 5 is more than num_shares"),
    ("secagg-with-krum", None, ["federated.secagg={enabled: true}", "federated.strategy.name=krum"],
     "SecAgg+ sums masked updates"),
    ("site-column-without-natural", None, ["federated.partition.site_column=site"], "only used with name natural"),
    ("site-column-missing", None, ["data.source=csv", "data.path={tmp}/a.csv", "federated.partition.name=natural",
                                   "federated.num_clients=null", "federated.partition.site_column=hospital"],
     "column 'hospital' not found"),
    ("shards-more-labels-than-classes", None, ["federated.partition.name=shards",
                                               "federated.partition.labels_per_hospital=3"],
     "labels_per_hospital: 3 exceeds the 2 classes"),
    ("min-fit-above-hospitals", None, ["federated.min_fit_clients=11"], "federated.min_fit_clients: 11 is more"),
]


@pytest.mark.parametrize("case,text,overrides,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_exits_2_with_a_message_naming_the_key_or_file(tmp_path, monkeypatch, case, text, overrides,
                                                                   expected, command):
    monkeypatch.chdir(tmp_path)
    rows = "\n".join(f"{i},{i % 2}" for i in range(40))
    _csv(tmp_path / "a.csv", "x,target\n" + rows + "\n")
    _csv(tmp_path / "words.csv", "x,record,target\n" + "\n".join(f"{i},R{i:03d},{i % 2}" for i in range(40)) + "\n")
    _csv(tmp_path / "empty.csv", "")
    _csv(tmp_path / "corrupt.csv", "x,y,target\n1,2,0\n1,2,3,4,5\n")
    (tmp_path / "sites").mkdir()
    _csv(tmp_path / "sites/big.csv", "x,target\n" + rows + "\n")
    _csv(tmp_path / "sites/tiny.csv", "x,target\n1,0\n2,1\n3,0\n")
    (tmp_path / "ok_sites").mkdir()
    for name in ("one", "two"):
        _csv(tmp_path / f"ok_sites/{name}.csv", "x,target\n" + rows + "\n")
    config = tmp_path / "job.yaml"
    if text == "<missing>":
        config = tmp_path / "absent.yaml"
    else:
        config.write_text(GOOD if text is None else text)
    args = [command, str(config), *(o.replace("{tmp}", str(tmp_path)) for o in overrides)]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2, result.output
    assert expected in result.output.replace("\n", " ") or expected in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "mlruns.db").exists(), "a rejected job must not create anything in MLflow"


def test_the_committed_key_reference_and_schema_are_generated_from_the_spec():
    from orchestrator.spec.reference import render, schema

    configs = Path(__file__).resolve().parents[2] / "configs"
    stale = "is stale: run python -m orchestrator.spec.reference"
    assert (configs / "REFERENCE.md").read_text() == render(), f"configs/REFERENCE.md {stale}"
    assert (configs / "schema.json").read_text() == schema(), f"configs/schema.json {stale}"


def test_every_shipped_config_opens_with_its_command_and_the_schema_line():
    for path in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")):
        first, second = path.read_text().splitlines()[:2]
        assert first == f"# consortium run configs/{path.name}", path.name
        assert second == "# yaml-language-server: $schema=schema.json", path.name
