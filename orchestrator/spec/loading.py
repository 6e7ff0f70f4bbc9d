"""YAML + dotted overrides -> a validated JobSpec, or a ConfigError listing every problem."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.spec.errors import ConfigError, Problems
from orchestrator.spec.job import JobSpec
from strategies.registry import STRATEGIES, owners


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read a job YAML, apply `key.sub=value` overrides, validate. Raises ConfigError."""
    return load_raw(read_yaml(path), str(path), overrides)


def load_raw(raw: dict[str, Any], source: str = "config",
             overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """A job given as a dict (the YAML's content), with overrides, validated. Raises ConfigError."""
    import copy

    raw = copy.deepcopy(raw)
    problems: list[str] = []
    for item in overrides:
        try:
            apply_override(raw, item)
        except ValueError as exc:
            problems.append(str(exc))
    try:
        spec = validate(raw, source)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(source, problems)
    return spec


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise ConfigError(str(path), [f"file {what}: expected a job YAML file"])
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc}"]) from None
    try:
        raw = yaml.safe_load(text)  # safe_load: tags such as !!python/object are refused
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(str(path), [f"not valid YAML{where}: {reason}"]) from None
    if raw is None:
        raise ConfigError(str(path), ["file is empty: expected a mapping with at least 'kind' and 'data'"])
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [f"top level must be a mapping of keys, got {type(raw).__name__}"])
    return raw


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in place; the value is parsed as YAML (`[128,64]`, `0.1`, `null`)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ValueError(f"override '{item}': expected dotted.key=value, e.g. federated.rounds=5")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise ValueError(f"{key}: override value {text!r} is not valid YAML") from None
    set_dotted(raw, key, value)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw[a][b][c] = value for key 'a.b.c', creating sections on the way."""
    if not _KEY.match(key):
        raise ValueError(f"'{key}': expected a dotted key such as train.optimizer.lr")
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])}: is a value, cannot set '{key}' inside it")
        node = child
    node[parts[-1]] = value


def validate(raw: dict[str, Any], source: str = "config") -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, problems_of(exc)) from None


def problems_of(exc: ValidationError) -> list[str]:
    """One line per problem; the cross-section checks' `Problems` give one line each too."""
    out = []
    for err in exc.errors():
        error = err.get("ctx", {}).get("error")
        if err["type"] == "value_error" and isinstance(error, Problems):
            out += [_describe({**err, "ctx": {"error": problem}}) for problem in error.problems]
        else:
            out.append(_describe(err))
    return out


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    kind = err["type"]
    got = err.get("input")
    strategy = _strategy_tag(loc)
    if strategy is not None:  # federated.strategy is a union on name: drop the tag pydantic adds
        del loc[2]
        if kind == "extra_forbidden" and owners(loc[-1]):
            return (f"{'.'.join(loc)}: not used by '{strategy}' "
                    f"(it belongs to {', '.join(owners(loc[-1]))})")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        options = list(STRATEGIES)
        got = got.get("name") if isinstance(got, dict) else got
        if got is None:
            return f"{'.'.join(loc)}.name: required key is missing (one of {', '.join(options)})"
        close = difflib.get_close_matches(str(got), options, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{'.'.join(loc)}.name: expected one of {', '.join(options)} (got {got!r}){hint}"
    if kind == "extra_forbidden":
        hint = ""
        model = STRATEGIES[strategy].Options if strategy is not None and len(loc) == 3 else _model_at(loc[:-1])
        if model is not None:
            close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
            if close:
                hint = f" (did you mean '{close[0]}'?)"
            else:
                hint = f" (expected one of: {', '.join(model.model_fields)})"
        return f"{'.'.join(loc)}: unknown key{hint}"
    if kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        m = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg, re.S)
        if m:
            key = m.group(1)
            # A cross-section check names the full dotted key itself.
            full = key if "." in key else ".".join([*loc, key])
            return f"{full}: {m.group(2)}"
        return f"{'.'.join(loc) or '(top level)'}: {msg}"
    msg = err["msg"]
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        close = difflib.get_close_matches(str(got), options, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{'.'.join(loc)}: {msg[0].lower()}{msg[1:]} (got {got!r}){hint}"
    if kind == "missing":
        return f"{'.'.join(loc)}: required key is missing"
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{'.'.join(loc) or '(top level)'}: {msg[0].lower()}{msg[1:]}{shown}"


def _strategy_tag(loc: list[str]) -> str | None:
    """'fedavg' in ['federated', 'strategy', 'fedavg', 'mu']: the union member an error is about."""
    if loc[:2] == ["federated", "strategy"] and len(loc) > 3 and loc[2] in STRATEGIES:
        return loc[2]
    return None


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = JobSpec
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the resolved config as MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dump_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
