"""Typed options: the one mechanism by which the engine's settings and every model's options are declared,
read from flags, config files and presets, checked and saved.

A model declares its options as one dataclass next to its code (flow/options.py, baselines/knn.py, each
plugin), every field made with `option(default, help, ...)`:

    @dataclass(frozen=True)
    class KNNOptions:
        k: int = option(1, "neighbours averaged into a patch's score", minimum=1)
        rules: ClassVar[tuple[Rule, ...]] = ()          # which option needs which (inert rules)
        def validate(self, context: Any): ... # optional: checks across fields

and the model class names it: `options_class = KNNOptions`. From that one declaration `moleflow train --model
knn` gets `--k N` (help, default, range in `--help`), `--model_opt k=N` and a config file's `{"model":
{"name": "knn", "options": {"k": N}}}` get the same typed value, a version preset's overrides are checked
against it, `config.json` stores it typed, and `moleflow compare` diffs it by name.

The field's type follows its default (bool, int, float, str, list, tuple); `minimum`, `maximum`, `above` and
`choices` are checked before any image is read; a rule's options, when requested but inactive, are refused
(a flag that would change nothing is an error, never ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from typing import Any, Callable

from moleflow.errors import MoleflowError


def option(default: Any, help: str, **extra: Any) -> Any:
    """One dataclass field of a setting or model option: its default, its help and its checks/argparse extras
    (`minimum`, `maximum`, `above`, `below`, `choices`, `nargs`, `type` of list items, `action`, `key_value`)."""
    meta = {"help": help, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Rule:
    """`options` are read only when `active(options_object, context)` (context: contract.ModelContext, what the
    run around the model decides); `needs` says what would make them count."""

    options: tuple[str, ...]
    active: Callable[[Any, Any], bool]
    needs: str


def option_fields(options_class: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(options_class)}


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def spell(name: str, value: Any) -> str:
    """How a setting is written on the command line: `--lr 0.001`, `--use_cpcf`, `--no_report`."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no_{name}"
    if isinstance(value, (list, tuple)):
        return f"--{name} {' '.join(map(str, value))}"
    return f"--{name} {value}"


def _item_type(f: dataclasses.Field, default: Any) -> type:
    if "type" in f.metadata:
        return f.metadata["type"]
    return type(default[0]) if default else str


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("1", "0", "true", "false", "yes", "no"):
            return value.lower() in ("1", "true", "yes")
        if isinstance(value, bool):
            return value
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, str):
            return int(value)
        if isinstance(value, Integral) or (isinstance(value, Real) and float(value).is_integer()):
            return int(value)
        raise ValueError(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if kind is str:
        if isinstance(value, (list, dict)):
            raise ValueError(value)
        return str(value)
    return kind(value)


def coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    """`value` (from a flag, a JSON/TOML file or a preset) as the field's type, or one MoleflowError."""
    default = default_of(f)
    try:
        if isinstance(default, (list, tuple)):
            if isinstance(value, dict) and f.metadata.get("key_value"):
                return flatten_options(value)
            if isinstance(value, str) and "," in value and not f.metadata.get("key_value"):
                # --model_opt anomalies=cutpaste,noise; never a KEY=VALUE item, whose JSON value may hold commas
                value = [v.strip() for v in value.split(",") if v.strip()]
            items = value if isinstance(value, (list, tuple)) else [value]
            kind = _item_type(f, default)
            out = [_scalar(kind, v) for v in items]
            return tuple(out) if isinstance(default, tuple) else out
        return _scalar(type(default), value)
    except (TypeError, ValueError):
        kind = type(default).__name__
        raise MoleflowError(f"--{name}: cannot use {value!r} (expected {'a list' if kind in ('list', 'tuple') else kind}"
                            f", e.g. {spell(name, default)})") from None


def check_value(name: str, f: dataclasses.Field, value: Any) -> None:
    """The range and choices a field declares, or one MoleflowError naming the flag and its help."""
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None:
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if item not in choices:
                raise MoleflowError(f"{spell(name, value)}: use one of {', '.join(map(str, choices))} ({meta['help']})")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi, above, below = meta.get("minimum"), meta.get("maximum"), meta.get("above"), meta.get("below")
    if lo is None and hi is None and above is None and below is None:
        return
    wrong = (not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi)
             or (above is not None and value <= above) or (below is not None and value >= below))
    if wrong:
        low = f"[{lo}" if lo is not None else f"({above}" if above is not None else None
        high = f"{hi}]" if hi is not None else f"{below})" if below is not None else None
        need = (f"in {low}, {high}" if low and high else f">= {lo}" if lo is not None else
                f"> {above}" if above is not None else f"<= {hi}" if hi is not None else f"< {below}")
        raise MoleflowError(f"--{name} {value}: must be {need} ({meta['help']})")


def build_options(options_class: type, values: dict[str, Any], owner: str) -> Any:
    """An instance of `options_class` from `values` by field name: unknown names, wrong types and values out
    of range are one error line each. `owner` names whose options they are ("model 'knn'")."""
    known = option_fields(options_class)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise MoleflowError(f"--{unknown[0]}: not an option of {owner} (its options: "
                            f"{', '.join(known) or 'none'})")
    typed = {name: coerce(name, known[name], value) for name, value in values.items()}
    instance = options_class(**typed)
    for name, f in known.items():
        check_value(name, f, getattr(instance, name))
    return instance


def to_plain(options: Any) -> dict[str, Any]:
    """The options as JSON-ready values by name (tuples as lists): what config.json stores."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in dataclasses.asdict(options).items()}


def rules_of(options_class: type) -> tuple[Rule, ...]:
    return tuple(getattr(options_class, "rules", ()) or ())


def refuse_inert(subject: Any, requested: set[str], context: Any, rules: tuple[Rule, ...] | None = None) -> None:
    """One MoleflowError naming the first requested option that `subject` would not read: `rules`, by default
    those of the subject's options class."""
    for rule in rules_of(type(subject)) if rules is None else rules:
        for name in rule.options:
            if name in requested and not rule.active(subject, context):
                raise MoleflowError(f"--{name} changes nothing unless {rule.needs}; change that or drop --{name}")


def inactive_defaults(options: Any, context: Any) -> dict[str, Any]:
    """name -> default of every option whose rule does not hold for `options` in `context` (it is not read).
    Repeated until nothing changes: resetting one option can switch off what depends on it (a preset's task
    blocks under SC-LoRA, then their width)."""
    known = option_fields(type(options))
    reset: dict[str, Any] = {}
    while True:
        current = dataclasses.replace(options, **reset) if reset else options
        more = {name: default_of(known[name]) for rule in rules_of(type(options)) if not rule.active(current, context)
                for name in rule.options}
        if more.keys() <= reset.keys():
            return reset
        reset.update(more)


def check_options(options: Any, context: Any) -> None:
    """An options object made in code (not through build_options): every field in its range, and no option
    off its default where its rule says it is not read. The same checks as the command line's, stated once."""
    known = option_fields(type(options))
    for name, f in known.items():
        check_value(name, f, getattr(options, name))
    off_default = {name for name in inactive_defaults(options, context)
                   if getattr(options, name) != default_of(known[name])}
    refuse_inert(options, off_default, context)


def validate(options: Any, context: Any) -> None:
    """The options class's own checks across fields (its optional `validate(context)`)."""
    hook = getattr(options, "validate", None)
    if callable(hook):
        hook(context)


def add_arguments(group: Any, options_class: type, owner: str = "") -> None:
    """One flag per field (hyphenated alias too; `--no_X` for booleans); defaults SUPPRESSed so the parser
    tells which flags were given."""
    for f in fields(options_class):
        default = default_of(f)
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = f"{owner}{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        if isinstance(default, bool):
            group.add_argument(*names, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
            group.add_argument(f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}", dest=f.name,
                               action="store_false", default=argparse.SUPPRESS, help=f"turn off --{f.name}")
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if isinstance(default, (list, tuple)):
            kwargs["nargs"] = f.metadata.get("nargs", "+")
            kwargs["type"] = _item_type(f, default)
        else:
            kwargs["type"] = type(default)
        for key in ("action", "choices", "metavar"):
            if key in f.metadata:
                kwargs[key] = f.metadata[key]
        group.add_argument(*names, **kwargs)


def parse_key_values(items: list[str], flag: str = "--model_opt") -> dict[str, Any]:
    """['k=3', 'name=x', 'on=true'] -> {'k': 3, 'name': 'x', 'on': True} (values read as JSON when they parse)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MoleflowError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            parsed[key.strip()] = json.loads(raw)
        except ValueError:
            parsed[key.strip()] = raw
    return parsed


def flatten_options(table: dict, prefix: str = "") -> list[str]:
    """{"bce": {"pos_weight": 5}} -> ["bce.pos_weight=5"]: a config file's table as KEY=VALUE items."""
    items: list[str] = []
    for key, value in table.items():
        if isinstance(value, dict):
            items.extend(flatten_options(value, f"{prefix}{key}."))
        else:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items
