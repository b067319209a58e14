"""Load a job file: YAML -> overrides -> the kind's schema, with errors a person can act on.

Every problem is reported at once, each naming the file, the line, the field path and what was
expected. Nothing here executes text from the file: YAML is read with the safe loader and the
override values are parsed as YAML scalars or flow collections.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from trainyard.spec import JobBase
from trainyard.workloads import get_workload, workloads

Loc = tuple[str | int, ...]


class SpecError(Exception):
    """A job spec that cannot be used. The message is the whole report for the user."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' * (len(problems) != 1)}"
        body = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"job spec {source}: {count}\n{body}")


@dataclass
class LoadedSpec:
    """A validated job, with where it came from."""

    spec: JobBase
    source: str
    overrides: list[str] = field(default_factory=list)


def _line_map(text: str) -> tuple[dict[Loc, int], list[str]]:
    """Map each key path of the YAML document to its 1-based line; report duplicate keys."""
    lines: dict[Loc, int] = {}
    duplicates: list[str] = []

    def walk(node: yaml.Node, path: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                child = path + (key,)
                line = key_node.start_mark.line + 1
                if key in seen:
                    duplicates.append(f"line {line}: {_dotted(child)}: key appears twice; "
                                      "keep one")
                seen.add(key)
                lines[child] = line
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[path + (index,)] = item.start_mark.line + 1
                walk(item, path + (index,))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines, duplicates


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_override(text: str) -> tuple[list[str], Any]:
    """'agent.lr=3e-4' -> (['agent', 'lr'], '3e-4'); values are YAML (lists: '[0, 1]')."""
    path, sep, raw = text.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise ValueError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. -o train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text and let the schema judge it
    return [k.strip() for k in keys], value


def apply_overrides(data: dict, overrides: list[str]) -> dict[Loc, str]:
    """Set each override in `data` (in place); return {path: the override text} for errors."""
    origin: dict[Loc, str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), dict):
                if key in node and node[key] is not None:
                    where = _dotted(tuple(keys[: depth + 1]))
                    raise ValueError(f"override {text!r}: {where} is not a section")
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
        origin[tuple(keys)] = f"-o {text}"
    return origin


def _value_at(data: Any, loc: Loc) -> tuple[Loc, Any]:
    """Follow pydantic's `loc` into `data`; (the path in the user's terms, the value there).

    Union members add a tag to the loc (the discriminator's value, such as 'resnet', a
    callable discriminator's tag, or 'function-after[...]'): those parts are not keys of the
    file and are skipped.
    """
    path: Loc = ()
    for index, part in enumerate(loc):
        following = loc[index + 1] if index + 1 < len(loc) else None
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        elif isinstance(data, dict) and (part in data.values() or "[" in str(part)
                                         or (following is not None and following in data)):
            continue  # a tag: not a key, and the next part is one
        else:
            return path + (part,), None
        path += (part,)
    return path, data


def _expected(error: dict, model: type[BaseModel], loc: Loc, data: Any) -> str:
    """The human half of one pydantic error."""
    kind = error["type"]
    if kind == "extra_forbidden":
        section = _section_model(model, loc[:-1], data)
        allowed = sorted(section.model_fields) if section else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        guess = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown field{guess}; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        section = _section_model(model, loc[:-1], data)
        info = section.model_fields.get(str(loc[-1])) if section else None
        doc = f" ({info.description})" if info and info.description else ""
        return f"required field is missing{doc}"
    if kind == "union_tag_invalid":
        return f"expected one of {error['ctx']['expected_tags']} (got {error['ctx']['tag']!r})"
    if kind == "union_tag_not_found":
        parent = _section_model(model, loc[:-2], data) if len(loc) > 1 else model
        info = parent.model_fields.get(str(loc[-2])) if parent else None
        tags = [repr(tag) for member in _models_in(info.annotation if info else None)
                for tag in typing.get_args(member.model_fields[str(loc[-1])].annotation)]
        return f"required field is missing: one of {', '.join(tags)}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and not loc_is_field(model, tuple(error["loc"]), data):
        return message  # our own cross-field checks say what to do in full (not the input)
    return f"{message[0].lower()}{message[1:]} (got {error.get('input')!r})"


def loc_is_field(model: type[BaseModel], loc: Loc, data: Any = None) -> bool:
    section = _section_model(model, loc[:-1], data) if loc else None
    return section is not None and str(loc[-1]) in section.model_fields


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _tag_matches(candidate: type[BaseModel], values: Any) -> bool:
    """Does the user's section carry the Literal tag (arch:, name:) of this union member?"""
    if not isinstance(values, dict):
        return False
    for name, info in candidate.model_fields.items():
        if typing.get_origin(info.annotation) is Literal and name in values:
            return values[name] in typing.get_args(info.annotation)
    return False


def _section_model(model: type[BaseModel], loc: Loc, data: Any = None) -> type[BaseModel] | None:
    """The pydantic model that describes the section at `loc` (the union member the user's
    data picks, when the section is a union)."""
    current: type[BaseModel] | None = model
    for part in loc:
        fields = current.model_fields if current else {}
        if part not in fields:
            return None
        data = data.get(part) if isinstance(data, dict) else None
        candidates = _models_in(fields[part].annotation)
        current = next((c for c in candidates if _tag_matches(c, data)),
                       candidates[0] if len(candidates) == 1 else None)
    return current


def _report(error: ValidationError, model: type[BaseModel], data: dict, name: str,
            lines: dict[Loc, int], origin: dict[Loc, str]) -> list[str]:
    problems = []
    for item in error.errors():
        path, _ = _value_at(data, tuple(item["loc"]))
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path += (item["ctx"]["discriminator"].strip("'"),)  # point at `arch:` / `name:`
        if not path:  # a check across sections: point at the first field its message names
            named = re.findall(r"\b([a-z_]+(?:\.[a-z_]+)+)\b", item["msg"])
            path = next((tuple(n.split(".")) for n in named if tuple(n.split(".")) in lines),
                        path)
        where = next((origin[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origin),
                     None)
        if where is None:
            line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines),
                        None)
            where = f"{name}:{line}" if line else name
        problems.append(f"{where}: {_dotted(path)}: {_expected(item, model, path, data)}")
    return problems


def validate_data(data: Any, source: str, overrides: list[str] | None = None,
                  lines: dict[Loc, int] | None = None, user_code: bool = False) -> LoadedSpec:
    """Validate an already-parsed document (a dict) against its kind's schema. With
    `user_code`, the user's own modules the spec names are imported and checked too (see
    trainyard.usercode); without, only found."""
    lines = lines or {}
    name = Path(source).name
    if not isinstance(data, dict):
        raise SpecError(source, [f"{name}: the file must be a YAML mapping of sections "
                                 f"(name:, kind:, ...), got {type(data).__name__}"])
    try:
        origin = apply_overrides(data, list(overrides or []))
    except ValueError as err:
        raise SpecError(source, [str(err)]) from None
    kind = data.get("kind")
    known = sorted(workloads())
    if kind not in known:
        line = lines.get(("kind",))
        where = f"{name}:{line}" if line else name
        got = "is missing" if kind is None else f"is {kind!r}"
        raise SpecError(source, [f"{where}: kind: {got}; expected one of: {', '.join(known)}"])
    model = get_workload(kind).spec_model
    try:
        spec = model.model_validate(data, context={"user_code": user_code})
    except ValidationError as err:
        raise SpecError(source, _report(err, model, data, name, lines, origin)) from None
    if spec.sweep is not None and (problems := _check_sweep_space(spec, model, name, lines)):
        raise SpecError(source, problems)
    return LoadedSpec(spec=spec, source=source, overrides=list(overrides or []))


def _check_sweep_space(spec: JobBase, model: type[BaseModel], name: str,
                       lines: dict[Loc, int]) -> list[str]:
    """Each swept path must name a field of this job, and every value the sweep can try
    (a choice, a grid point, a range's ends) must be valid there."""
    from trainyard.spec import flatten, with_values
    from trainyard.sweep_space import parse_space_expr, values_to_check

    resolved = spec.model_dump(mode="json")
    fields = sorted(k for k in flatten(resolved) if not k.startswith(("sweep.", "seeds")))
    problems = []
    for path, expr in spec.sweep.space.items():
        line = lines.get(("sweep", "space", path)) or lines.get(("sweep", "space"))
        where = f"{name}:{line}" if line else name
        if path in ("seeds", "seed") or path.startswith("sweep"):
            problems.append(f"{where}: sweep.space.{path}: cannot be swept; list the seeds in "
                            "`seeds: [0, 1, 2]` (each configuration runs once per seed)")
            continue
        if path not in fields:
            hint = difflib.get_close_matches(path, fields, n=1)
            guess = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(f"{where}: sweep.space.{path}: no such field in this job{guess}; "
                            "give the dotted path of a field, e.g. train.lr or agent.gamma")
            continue
        for value in values_to_check(parse_space_expr(expr)):
            try:
                model.model_validate(with_values(resolved, {path: value}))
            except ValidationError as err:
                first = err.errors()[0]
                message = first["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: sweep.space.{path}: the sweep can try {value!r}, "
                                f"which is not valid there: {message}")
                break
    return problems


def load_spec(path: str | Path, overrides: list[str] | None = None,
              user_code: bool = False) -> LoadedSpec:
    """Read, override and validate the job file at `path`; SpecError on any problem.
    `user_code`: import and check the user's own env or model too (see validate_data)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise SpecError(source, [f"{source}: the file {what} (looked at {path.resolve()}); "
                                 "pass a job YAML such as supervised/configs/cnn_digits.yaml"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(source, [f"{source}: cannot read the file: {err}"]) from None
    try:
        data = yaml.safe_load(text)
        lines, duplicates = _line_map(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}" if mark else path.name
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(source, [f"{where}: YAML syntax error: {problem}; check the indentation "
                                 "and the ':' after each key on that line"]) from None
    if duplicates:
        raise SpecError(source, [f"{path.name}:{d.removeprefix('line ')}" for d in duplicates])
    return validate_data(data if data is not None else {}, source, overrides, lines, user_code)


def dump_spec(spec: JobBase) -> str:
    """The resolved spec as YAML: every default written out, enough to re-run the job."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
