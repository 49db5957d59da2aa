"""Flags that models declare for their own options, e.g. the AE plugin's `--ae_score both`.

A model class may set

    cli_flags = {"ae_score": {"option": "score", "choices": ["recon", "latent", "both"], "help": "..."}}

and `moleflow train` then accepts `--ae_score both` as a spelling of `--model_opt score=both` (the value
is read like any --model_opt value, as JSON when it parses). The option is still validated by the
model, and a flag given for another model than the run's is an error, never ignored. Flags come from the
installed model components when the parser is built; a model that fails to import adds none (`moleflow
plugins` shows its error), and a flag that would shadow an existing one is skipped.
"""

from __future__ import annotations

import argparse
from typing import Any

from moleflow.contract import model_traits
from moleflow import registry
from moleflow.errors import MoleflowError

DEST_PREFIX = "model_flag::"


def declared_flags() -> list[tuple[str, str, dict[str, Any]]]:
    """(model name, flag name, spec) for every installed model that declares `cli_flags`."""
    found = []
    for component in registry.components("models"):
        try:
            model_class = registry.get("models", component.name)
        except Exception:  # noqa: BLE001 - a broken plugin must not break the parser
            continue
        for flag, spec in model_traits(model_class).cli_flags.items():
            found.append((component.name, flag, dict(spec)))
    return found


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    flags = declared_flags()
    if not flags:
        return
    group = parser.add_argument_group("model options (each one is a spelling of --model_opt KEY=VALUE)")
    taken = {name for action in parser._actions for name in action.option_strings}
    for model, flag, spec in flags:
        names = [f"--{flag}"] + ([f"--{flag.replace('_', '-')}"] if "_" in flag else [])
        if any(name in taken for name in names):
            continue
        option = spec["option"]
        group.add_argument(*names, dest=f"{DEST_PREFIX}{model}::{option}::{flag}", default=argparse.SUPPRESS,
                           choices=spec.get("choices"), metavar=spec.get("metavar"),
                           help=f"model '{model}': {spec.get('help', option)} (= --model_opt {option}=VALUE)")
        taken.update(names)


def given_model_flags(args: argparse.Namespace) -> list[tuple[str, str, str, Any]]:
    """(model, option, flag, value) for every model flag on the command line."""
    given = []
    for dest, value in vars(args).items():
        if dest.startswith(DEST_PREFIX):
            model, option, flag = dest[len(DEST_PREFIX):].split("::")
            given.append((model, option, flag, value))
    return given


def apply_model_flags(cfg: Any, args: argparse.Namespace) -> None:
    """Append the given model flags to cfg.flow.model_opt (after --config and --model_opt, so they win)."""
    for model, option, flag, value in given_model_flags(args):
        if cfg.flow.model != model:
            raise MoleflowError(f"--{flag} is an option of model '{model}', but this run uses model "
                                f"'{cfg.flow.model}'; add --model {model} or drop --{flag}")
        cfg.flow.model_opt = [*cfg.flow.model_opt, f"{option}={value}"]
