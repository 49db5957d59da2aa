"""Weighted sum of registered loss components (`--loss NAME=WEIGHT`, repeatable).

Every component is looked up through the `moleflow.losses` entry-point group, so plugins' losses combine
with the built-ins. A component declares the model output keys it reads (`reads`); a missing key is a
clear error naming the loss, the key and the model. `loss_terms` turns the config's loss switches
(--focal_gamma, --center_loss_weight) into terms, so version presets stay plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from moleflow import registry
from moleflow.errors import MoleflowError

if TYPE_CHECKING:
    from moleflow.config import Config


def parse_loss_terms(terms: list[str]) -> list[tuple[str, float]]:
    parsed: list[tuple[str, float]] = []
    for term in terms:
        name, sep, weight = term.partition("=")
        try:
            parsed.append((name.strip(), float(weight) if sep else 1.0))
        except ValueError:
            raise MoleflowError(f"--loss {term!r}: expected NAME=WEIGHT with a number, e.g. nll=1.0") from None
    if not parsed:
        raise MoleflowError("--loss needs at least one NAME=WEIGHT term")
    return parsed


def loss_terms(cfg: Config) -> tuple[list[str], dict[str, dict]]:
    """--loss terms and per-loss options after the switches: focal_gamma > 0 turns the `nll` term into
    `focal_nll` (same weight, option gamma); center_loss_weight > 0 appends `center=<weight>`."""
    tr = cfg.train
    terms = list(tr.loss)
    parsed = parse_loss_terms(terms)
    names = [name for name, _ in parsed]
    options: dict[str, dict] = {}
    for flag, value in (("focal_gamma", tr.focal_gamma), ("center_loss_weight", tr.center_loss_weight)):
        if value < 0:
            raise MoleflowError(f"--{flag} {value}: must be >= 0 (0 turns it off)")
    if tr.focal_gamma > 0:
        if "focal_nll" in names:
            raise MoleflowError(f"focal NLL defined twice: --loss lists focal_nll and --focal_gamma is "
                                f"{tr.focal_gamma}; drop one (e.g. --focal_gamma 0)")
        if "nll" not in names:
            raise MoleflowError(f"--focal_gamma {tr.focal_gamma} replaces the 'nll' term, but --loss "
                                f"{' '.join(terms)} has none; add nll=1.0 or use --focal_gamma 0")
        terms = [f"focal_nll={weight!r}" if name == "nll" else term for term, (name, weight) in zip(terms, parsed)]
        options["focal_nll"] = {"gamma": tr.focal_gamma}
    if tr.center_loss_weight > 0:
        if "center" in names:
            raise MoleflowError(f"center loss defined twice: --loss lists center and --center_loss_weight is "
                                f"{tr.center_loss_weight}; drop one (e.g. --center_loss_weight 0)")
        terms.append(f"center={tr.center_loss_weight!r}")
    return terms, options


@dataclass
class LossTerm:
    name: str
    weight: float
    fn: Any


class CompositeLoss:
    def __init__(self, terms: list[str], model_name: str = "model", options: dict[str, dict] | None = None):
        options = options or {}
        self.model_name = model_name
        self.terms = [
            LossTerm(name, weight, registry.create("losses", name, **options.get(name, {})))
            for name, weight in parse_loss_terms(terms)
        ]

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> tuple[torch.Tensor, dict]:
        total: torch.Tensor | None = None
        parts: dict[str, float] = {}
        for term in self.terms:
            for key in getattr(term.fn, "reads", ()):
                if key not in outputs:
                    raise MoleflowError(
                        f"loss '{term.name}' needs model output '{key}', which model '{self.model_name}' does not "
                        f"produce (it produces: {', '.join(sorted(outputs))})"
                    )
            value = term.fn(outputs, batch)
            parts[term.name] = float(value.detach())
            if term.weight == 0:
                continue  # logged only: 0 * inf would turn the total into NaN
            total = term.weight * value if total is None else total + term.weight * value
        if total is None:
            raise MoleflowError(f"--loss {' '.join(t.name + '=0' for t in self.terms)}: every weight is 0; "
                                "give at least one term a non-zero weight")
        return total, parts
