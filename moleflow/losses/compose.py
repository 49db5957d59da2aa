"""Weighted sum of registered loss components (`--loss NAME=WEIGHT`, repeatable).

Every component is looked up through the `moleflow.losses` entry-point group, so plugins' losses combine
with the built-ins. A component declares the model output keys it reads (`reads`); a missing key is a
clear error naming the loss, the key and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from moleflow import registry
from moleflow.errors import MoleflowError


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
            total = term.weight * value if total is None else total + term.weight * value
        assert total is not None
        return total, parts
