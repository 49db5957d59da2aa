"""The `moleflow train` flags: the engine's settings (config.py) plus the options of the model the command line
selects, generated from that model's options class, so `moleflow train --model knn --help` shows knn's options
and not the flow's. Used by the CLI, by `moleflow sweep` (every trial is resolved before the first starts) and
by the test helpers.

The model is known before the flags are: `--model`, else the `model` of a `--config` file, else the model of
`--version`'s preset, else moleflow. A flag that is not an option of that model is one error line naming the
model's options.
"""

from __future__ import annotations

import argparse
from typing import Any

from moleflow.config import (FIELD_SPECS, SECTIONS, Config, TrainConfig, file_settings, lookup_model,
                             read_config_file, read_run_config, resolve_config)
from moleflow.errors import MoleflowError
from moleflow.options import add_arguments, option_fields
from moleflow.run_folder import RunFolder
from moleflow.versions import version_overrides

#: dest under which the parser keeps the selected model's option names (to tell them from other dests)
OPTION_NAMES = "model_option_names"


def selected_model(argv: list[str]) -> str:
    """The model `moleflow train ARGV` runs (see the module docstring); "moleflow" when it cannot tell yet
    (resolve_config reports the bad value, with the known names)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--model", "--version", "--config", "--resume"):
        pre.add_argument(flag)
    known, _ = pre.parse_known_args(argv)
    try:
        if known.resume:
            return read_run_config(RunFolder.open(known.resume)).model
        if known.model:
            return known.model
        if known.config:
            model = file_settings(read_config_file(known.config)).get("model")
            if model:
                return str(model)
        if known.version:
            return version_overrides(known.version)[0]
    except MoleflowError:
        pass
    return TrainConfig.model


def add_train_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Every `moleflow train` flag for the model ARGV selects: engine settings by section, then its options."""
    parser.add_argument("--config", help="JSON (or TOML) file of settings; explicit flags override it")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last completed task")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    for section, klass in SECTIONS.items():
        add_arguments(parser.add_argument_group(section), klass)
    model = selected_model(argv)
    try:
        options_class = lookup_model(model).options_class
    except MoleflowError:
        options_class = None  # an unknown or broken model is reported, with the known names, when resolving
    names: tuple[str, ...] = ()
    if options_class is not None:
        clash = sorted(set(option_fields(options_class)) & set(FIELD_SPECS))
        if clash:
            raise MoleflowError(f"model '{model}' declares option(s) {', '.join(clash)}, which are engine settings; "
                                "the model must rename them")
        add_arguments(parser.add_argument_group(f"options of model '{model}' (also --model_opt KEY=VALUE)"),
                      options_class)
        names = tuple(option_fields(options_class))
    parser.set_defaults(**{OPTION_NAMES: names, "selected_model": model})


def train_parser(argv: list[str]) -> argparse.ArgumentParser:
    """A standalone parser of `moleflow train` flags (without the word `train`)."""
    parser = argparse.ArgumentParser(prog="moleflow train", allow_abbrev=False)
    add_train_arguments(parser, argv)
    return parser


def parse_train_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """ARGV parsed; a flag the selected model does not have is one MoleflowError naming its options."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        flag = next((e for e in extras if e.startswith("--")), extras[0])
        model = getattr(args, "selected_model", "?")
        names = getattr(args, OPTION_NAMES, ())
        raise MoleflowError(f"{flag}: not a setting, nor an option of model '{model}' (its options: "
                            f"{', '.join(names) or 'none'}); see `moleflow train --model {model} --help`")
    return args


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings and model options given on the command line (flags default to SUPPRESS)."""
    names = set(FIELD_SPECS) | set(getattr(args, OPTION_NAMES, ()))
    return {k: v for k, v in vars(args).items() if k in names}


def train_config(args: argparse.Namespace) -> Config:
    """The settings `moleflow train` runs with: defaults < version chain < --config < flags."""
    return resolve_config(explicit_settings(args), args.config)

