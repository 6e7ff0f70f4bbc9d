"""The YAML key reference (configs/REFERENCE.md) and JSON Schema (configs/schema.json, for editors:
every shipped config names it on its `yaml-language-server` line), generated from the spec's field
descriptions so they cannot drift from the code: `python -m orchestrator.spec.reference` rewrites
both (tests/unit/test_config.py fails when a committed one is stale)."""
from __future__ import annotations

import json
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from orchestrator.spec.job import JobSpec
from strategies.registry import STRATEGIES


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, dict) and set(value) == {"name"}:
            return value["name"]   # federated.strategy
        return json.dumps(value)
    if field.default is PydanticUndefined:
        return "required"
    return json.dumps(field.default)


def _text(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _section(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _rows(model: type[BaseModel], prefix: str, out: list[tuple[str, str, str]], sections: list) -> None:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _section(field.annotation)
        if sub is not None and key != "federated.strategy":
            sections.append((key, sub))
            continue
        out.append((key, _default(field), _text(field.description)))


def render() -> str:
    lines = ["# Job YAML reference", "",
             "Generated from the job spec (`orchestrator/spec/`) by `python -m orchestrator.spec.reference`, with `schema.json`; "
             "do not edit by hand. Every key is optional unless marked required; an unknown key is an error "
             "that suggests the closest known one. Override any key on the command line: "
             "`consortium run CONFIG federated.rounds=5 model.hidden=[128,64]`.", ""]
    sections: list = [("", JobSpec)]
    while sections:
        prefix, model = sections.pop(0)
        rows: list = []
        _rows(model, f"{prefix}." if prefix else "", rows, sections)
        title = f"`{prefix}:`" if prefix else "top level"
        doc = _text((model.__doc__ or "").strip().split("\n\n")[0])
        lines += [f"## {title}", ""] + ([doc, ""] if prefix and doc and not doc.startswith("Create a new") else [])
        lines += ["| key | default | what it does |", "|---|---|---|"]
        lines += [f"| `{k}` | {('`' + d + '`') if d else ''} | {text} |" for k, d, text in rows]
        lines.append("")
    lines += ["## `federated.strategy:` one section per strategy", "",
              "`name` picks the strategy; only that strategy's own options are accepted.", "",
              "| name | option | default | what it does |", "|---|---|---|---|"]
    for name, module in STRATEGIES.items():
        doc = _text((module.__doc__ or "").strip().splitlines()[0])
        options = [(k, f) for k, f in module.Options.model_fields.items() if k != "name"]
        lines.append(f"| `{name}` | | | {doc} |")
        lines += [f"| | `{k}` | `{_default(f)}` | {_text(f.description)} |" for k, f in options]
    return "\n".join(lines) + "\n"


def schema() -> str:
    return json.dumps(JobSpec.model_json_schema(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    (configs / "REFERENCE.md").write_text(render())
    (configs / "schema.json").write_text(schema())
    print(f"wrote {configs / 'REFERENCE.md'} and {configs / 'schema.json'}")
