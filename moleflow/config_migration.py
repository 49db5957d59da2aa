"""Reads settings written before models owned typed options (moleflow up to e63501a): config.json files and
the recipes kept in checkpoints. Then every flow option sat in a `flow` section beside `model` and
`model_opt` (other models' options as KEY=VALUE strings), and the training loop's settings (epochs, lr, loss,
...) in `train` for every model. Now the model's options are one typed table, `model = {name, options}`, and
a model has exactly the options its options class declares (knn has no epochs), so a setting the old layout
recorded for a model that never read it is dropped here, and a version preset of another model is cleared
(an old knn run "of v10" ran knn on its own options, with v10's features recorded in `backbone`).
"""

from __future__ import annotations

from typing import Any

from moleflow.errors import MoleflowError
from moleflow.options import option_fields, parse_key_values
from moleflow.registry import get
from moleflow.versions import get_preset

#: where the old layout kept settings that are the engine's now (everything else there was the model's)
_ENGINE_SECTIONS = ("data", "backbone", "eval", "run")
_ENGINE_TRAIN = ("strategy", "replay_per_task", "router", "seed", "device")


def is_old_layout(data: dict) -> bool:
    return isinstance(data.get("flow"), dict)


def migrate(data: dict) -> dict:
    """A config dict in today's layout: an old one (it has a `flow` section) converted, anything else as is."""
    if not is_old_layout(data):
        return data
    flow = dict(data["flow"])
    train = dict(data.get("train", {}))
    model = str(flow.pop("model", "moleflow"))
    model_class = get("models", model)
    known = option_fields(model_class.options_class)
    candidates = {**flow, **train, **parse_key_values(list(flow.pop("model_opt", []) or []))}
    options = {name: value for name, value in candidates.items() if name in known}
    new = {section: dict(data[section]) for section in _ENGINE_SECTIONS if isinstance(data.get(section), dict)}
    new["train"] = {name: train[name] for name in _ENGINE_TRAIN if name in train}
    new["train"]["model"] = model
    version = new.get("run", {}).get("version", "")
    if version:
        try:
            if get_preset(version).model != model:
                new["run"]["version"] = ""
        except MoleflowError:  # a preset no longer installed: keep the name as recorded
            pass
    new["model"] = {"name": model, "options": options}
    return new


def migrate_recipe(recipe: dict[str, Any], engine_names: set[str]) -> dict[str, Any]:
    """A checkpoint's recipe (flat settings by name) in today's names: old ones carry `model_opt`.
    `engine_names`: today's engine settings (config.FIELD_SPECS less model_opt)."""
    if "model_opt" not in recipe:
        return recipe
    nested = {"flow": {"model": recipe.get("model", "moleflow"), "model_opt": recipe["model_opt"]},
              "train": {k: v for k, v in recipe.items() if k not in ("model", "model_opt")}}
    options = migrate(nested)["model"]["options"]
    engine = {k: v for k, v in recipe.items() if k in engine_names}
    return {**engine, **options}
